"""The group cache: bounded in bytes whatever the sizes, least recently used dropped first."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from worker.store.group_cache import GroupCache

size_st = st.integers(0, 400) | st.integers(1001, 1200)  # now and then larger than the bound
puts = st.lists(st.tuples(st.integers(0, 30), size_st), max_size=200)


@given(puts)
def test_bytes_held_never_pass_the_bound_and_match_what_is_held(
    sequence: list[tuple[int, int]],
) -> None:
    cache: GroupCache[int] = GroupCache(max_bytes=1000)
    sizes: dict[int, int] = {}
    for n, (key, size) in enumerate(sequence):
        cache.put(key, key, size)
        assert cache.stats.oversize == sum(s > 1000 for _, s in sequence[: n + 1])
        sizes[key] = size
        held = [k for k in range(31) if k in cache._entries]
        assert cache.stats.bytes == sum(sizes[k] for k in held) <= 1000
        assert cache.stats.groups == len(held)
        if size <= 1000:
            assert cache.get(key) == key  # what was just put is held


def test_the_least_recently_used_goes_first() -> None:
    cache: GroupCache[str] = GroupCache(max_bytes=30)
    for key in "abc":
        cache.put(key, key.upper(), 10)
    assert cache.get("a") == "A"  # a is now the most recent; b the least
    cache.put("d", "D", 10)
    assert cache.get("b") is None
    assert [cache.get(k) for k in "acd"] == ["A", "C", "D"]
    assert cache.stats.evictions == 1
    assert cache.stats.hits == 4 and cache.stats.lookups == 5


def test_replacing_a_key_counts_its_bytes_once_and_clear_empties() -> None:
    cache: GroupCache[int] = GroupCache(max_bytes=100)
    cache.put("k", 1, 60)
    cache.put("k", 2, 70)
    assert cache.stats.bytes == 70 and cache.get("k") == 2
    cache.clear()
    assert cache.stats.bytes == 0 and cache.stats.groups == 0 and cache.get("k") is None


def test_a_group_larger_than_the_whole_bound_is_counted_and_not_kept() -> None:
    cache: GroupCache[str] = GroupCache(max_bytes=100)
    cache.put("fits", "F", 100)  # exactly the bound: kept
    cache.put("big", "B", 101)
    cache.put("big", "B", 500)  # each refused put counts
    assert cache.stats.oversize == 2
    assert cache.get("big") is None and cache.get("fits") == "F"
    assert cache.stats.bytes == 100 and cache.stats.groups == 1 and cache.stats.evictions == 0
