"""Large groups of the embedded store: vector files and HNSW against a numpy oracle, kept
in step with the rows through upserts, replaced files and damaged indexes, and never
serving a row that is not the group's."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from worker.store import vector_files
from worker.store.base import Memory, SearchGroup
from worker.store.sqlite import SQLiteStore
from worker.store.vector_files import HNSW, VECTORS, group_directory, vectors_root

DIMS = 32
TYPE = "long_term"
MIN_ROWS = 1000


def clustered(rng: np.random.Generator, rows: int, dims: int = DIMS) -> np.ndarray:
    """Sentence-embedding-like vectors: rows near a few hundred topics, unit length."""
    centres = rng.standard_normal((max(rows // 100, 20), dims)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    picked = centres[rng.integers(0, len(centres), rows)]
    noisy = picked + rng.standard_normal((rows, dims)).astype(np.float32) * 0.15
    return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)


def memories(owner: str, start: int, count: int, prefix: str = "m") -> list[Memory]:
    return [
        Memory(id=f"{prefix}{i}", memory_id=owner, memory_type=TYPE,
               content=f"memory {i} about topic{i % 7}", timestamp=1.7e9 + i)
        for i in range(start, start + count)
    ]  # fmt: skip


async def write(path: Path, owner: str, vectors: np.ndarray, *, start: int = 0,
                prefix: str = "m", build: bool = True) -> None:  # fmt: skip
    store = SQLiteStore(path, writable=True, index_min_rows=MIN_ROWS)
    await store.upsert(memories(owner, start, len(vectors), prefix), vectors)
    if build:
        await store.ensure_indexes()
    await store.close()


async def search(
    store: SQLiteStore, queries: np.ndarray, k: int = 10, owner: str = "alice"
) -> list[list[tuple[str, float]]]:
    group = SearchGroup(collection=TYPE, owner=owner, vectors=queries, ks=(k,) * len(queries))
    [found] = await store.search([group])
    return [[(c.memory.id, c.score) for c in per_query] for per_query in found]


def oracle(ids: Sequence[str], matrix: np.ndarray, query: np.ndarray, k: int = 10) -> list[str]:
    """Brute force: every row's cosine, best first, ties to the earlier row."""
    scores = matrix @ query
    return [ids[i] for i in np.lexsort((np.arange(len(ids)), -scores))[:k]]


def reader(path: Path, search: str = "auto") -> SQLiteStore:
    return SQLiteStore(path, dimensions=DIMS, index_min_rows=MIN_ROWS, search=search)  # type: ignore[arg-type]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


@pytest.mark.parametrize("mode", ["exact", "auto"])
async def test_a_large_group_is_served_from_its_vector_file(
    tmp_path: Path, rng: np.random.Generator, mode: str
) -> None:
    path = tmp_path / "m.db"
    matrix = clustered(rng, 3000)
    await write(path, "alice", matrix)
    queries = clustered(rng, 20)
    store = reader(path, mode)
    await store.connect()
    found = await search(store, queries)
    ids = [f"m{i}" for i in range(len(matrix))]
    for query, listed in zip(queries, found, strict=True):
        expected = oracle(ids, matrix, query)
        got = [memory_id for memory_id, _ in listed]
        if mode == "exact":
            assert got == expected
        else:
            assert len(set(got) & set(expected)) >= 9
        for memory_id, score in listed:  # exact cosines either way
            assert score == pytest.approx(float(matrix[int(memory_id[1:])] @ query), abs=1e-5)
    path_taken = "vector_file" if mode == "exact" else "approximate"
    assert store.search_paths() == {path_taken: 1}  # one group searched
    await store.close()


async def test_approximate_recall_at_ten_on_25k(tmp_path: Path, rng: np.random.Generator) -> None:
    """The issue's bar: recall@10 >= 0.95 against the oracle above the threshold."""
    path = tmp_path / "m.db"
    matrix = clustered(rng, 25_000, dims=64)
    store = SQLiteStore(path, writable=True, index_min_rows=20_000)
    await store.upsert(memories("alice", 0, len(matrix)), matrix)
    await store.ensure_indexes()
    await store.close()
    queries = matrix[rng.integers(0, len(matrix), 100)] + rng.standard_normal((100, 64)) * 0.05
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    serving = SQLiteStore(path, dimensions=64, index_min_rows=20_000)
    await serving.connect()
    found = await search(serving, queries)
    ids = [f"m{i}" for i in range(len(matrix))]
    hits = [
        len({i for i, _ in listed} & set(oracle(ids, matrix, query))) / 10
        for query, listed in zip(queries, found, strict=True)
    ]
    assert float(np.mean(hits)) >= 0.95
    assert serving.search_paths()["approximate"] == 1
    await serving.close()


async def test_a_memory_written_after_the_build_is_found_at_once(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """Rows newer than the file are scored beside it; a replaced row's old vector is never
    served; a row moved to another owner leaves this owner's results."""
    path = tmp_path / "m.db"
    matrix = clustered(rng, 2000)
    await write(path, "alice", matrix)
    store = reader(path)
    await store.connect()
    target = clustered(rng, 1)[0]
    await write(path, "alice", target[None, :], start=5000, build=False)  # new: m5000
    # m3 moves to bob; m4 gets the target's opposite for a vector
    await write(path, "bob", matrix[3:4], start=3, build=False)
    await write(path, "alice", -target[None, :], start=4, build=False)
    [listed] = await search(store, target[None, :], k=2000)
    got = dict(listed)
    assert next(iter(got)) == "m5000" and got["m5000"] == pytest.approx(1.0, abs=1e-5)
    assert "m3" not in got, "a row moved to bob is not alice's"
    assert got["m4"] == pytest.approx(-1.0, abs=1e-5), "m4's new vector, not its old one"
    assert len(got) == 2000  # 2000 rows: less m3, plus m5000
    assert store.search_paths()["approximate"] == 1
    await store.close()


async def test_a_damaged_index_is_bypassed_then_rebuilt(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    path = tmp_path / "m.db"
    matrix = clustered(rng, 2000)
    await write(path, "alice", matrix)
    [build] = list(group_directory(vectors_root(path), TYPE, "alice").iterdir())
    for name in (HNSW, VECTORS):
        with (build / name).open("r+b") as file:
            file.seek(file.seek(0, os.SEEK_END) // 2)
            file.write(b"\xff" * 64)
    query = clustered(rng, 1)
    store = reader(path)
    await store.connect()
    [listed] = await search(store, query)
    ids = [f"m{i}" for i in range(len(matrix))]
    assert [i for i, _ in listed] == oracle(ids, matrix, query[0])
    assert store.search_paths() == {"unindexed": 1}
    writer = SQLiteStore(path, writable=True, index_min_rows=MIN_ROWS)
    await writer.ensure_indexes()  # `recallq worker init`: rebuilds what is damaged
    await writer.close()
    [listed] = await search(store, query)  # the same live reader: it looks again
    assert len({i for i, _ in listed} & set(oracle(ids, matrix, query[0]))) >= 9
    assert store.search_paths() == {"unindexed": 1, "approximate": 1}
    await store.close()


async def test_a_replaced_database_never_meets_the_old_vector_files(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """Another store renamed in at the path, the old one's vector directory left beside
    it: the files name their store, so the new rows are served, not the old file's."""
    path, other = tmp_path / "m.db", tmp_path / "other" / "m.db"
    await write(path, "alice", clustered(rng, 2000))
    fresh = clustered(rng, 2000)
    await write(other, "alice", fresh, prefix="n", build=False)
    query = clustered(rng, 1)
    store = reader(path)
    await store.connect()
    await search(store, query)
    os.replace(other, path)
    await store.check()
    [listed] = await search(store, query)
    ids = [f"n{i}" for i in range(len(fresh))]
    assert [i for i, _ in listed] == oracle(ids, fresh, query[0])
    assert store.search_paths()["unindexed"] == 1
    await store.close()


async def test_no_other_owners_row_whatever_the_index_returns(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """Bob's rows are nearer every query; then alice's file is made to hold bob's rowids
    (an index gone wrong): alice's search still returns alice's rows only."""
    path = tmp_path / "m.db"
    alice, bob = clustered(rng, 1500), clustered(rng, 1500)
    await write(path, "alice", alice)
    await write(path, "bob", bob, prefix="b")
    store = reader(path)
    await store.connect()
    queries = bob[:5]
    for listed in await search(store, queries, k=50):
        assert listed and all(i.startswith("m") for i, _ in listed)
    file = next(f for _, f in store._files._opened.values() if f and f.info.memory_id == "alice")
    with sqlite3.connect(path) as conn:
        bobs = [r for (r,) in conn.execute("SELECT rowid FROM memories WHERE memory_id='bob'")]
    file.rowids = np.asarray(bobs[: len(file.rowids)], dtype=np.int64)
    for listed in await search(store, queries, k=50):
        assert all(i.startswith("m") for i, _ in listed)
    await store.close()


async def test_group_sizes_follow_every_write(tmp_path: Path, rng: np.random.Generator) -> None:
    """The groups table against SQL's own count, through inserts, replacements, moves
    between owners and one id twice in a batch."""
    path = tmp_path / "m.db"
    store = SQLiteStore(path, writable=True, index_min_rows=0)
    await store.upsert(memories("alice", 0, 50), clustered(rng, 50))
    await store.upsert(memories("bob", 40, 20), clustered(rng, 20))  # m40..m49 move to bob
    twice = memories("carol", 0, 1) + memories("alice", 0, 1)  # m0 twice: alice wins
    await store.upsert(twice, clustered(rng, 2))
    await store.close()
    with sqlite3.connect(path) as conn:
        kept = dict(conn.execute("SELECT memory_id, size FROM groups WHERE size > 0"))
        counted = dict(conn.execute("SELECT memory_id, count(*) FROM memories GROUP BY 1"))
        rowids = [r for (r,) in conn.execute("SELECT rowid FROM memories ORDER BY rowid")]
    assert kept == counted == {"alice": 40, "bob": 20}
    assert rowids == sorted(set(rowids)) and max(rowids) == 50 + 20 + 2


async def test_untrusted_index_scores_every_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An index under the recall bar on its own rows (uniform random vectors at scale: ~0.2,
    the benchmark measures it; here the bar is raised past any index) is not used: the
    reader scores the whole file exactly."""
    monkeypatch.setattr(vector_files, "TRUSTED_RECALL", 1.01)
    path = tmp_path / "m.db"
    rng = np.random.default_rng(3)
    uniform = rng.standard_normal((3000, 256)).astype(np.float32)
    uniform /= np.linalg.norm(uniform, axis=1, keepdims=True)
    store = SQLiteStore(path, writable=True, index_min_rows=MIN_ROWS)
    await store.upsert(memories("alice", 0, 3000), uniform)
    await store.ensure_indexes()
    await store.close()
    serving = SQLiteStore(path, dimensions=256, index_min_rows=MIN_ROWS)
    await serving.connect()
    [file] = [f for _, f in serving._files._opened.values()]
    assert file is not None and file.index is None and 0 < file.info.recall <= 1
    query = uniform[:1] * 0.5 + rng.standard_normal((1, 256)).astype(np.float32) * 0.01
    query = (query / np.linalg.norm(query)).astype(np.float32)
    [listed] = await search(serving, query)
    ids = [f"m{i}" for i in range(3000)]
    assert [i for i, _ in listed] == oracle(ids, uniform, query[0])
    assert serving.search_paths() == {"vector_file": 1}
    await serving.close()
    shutil.rmtree(vectors_root(path))


async def test_a_file_far_behind_its_rows_is_counted_and_still_exact(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """As many rows written since the build as a large group holds: served correctly (the
    rows are scored beside the file) and counted as the slow path `behind`."""
    path = tmp_path / "m.db"
    first, later = clustered(rng, 2000), clustered(rng, MIN_ROWS)
    await write(path, "alice", first)
    await write(path, "alice", later, start=len(first), build=False)
    store = reader(path, "exact")
    await store.connect()
    query = clustered(rng, 1)
    [listed] = await search(store, query)
    both = np.vstack([first, later])
    ids = [f"m{i}" for i in range(len(both))]
    assert [i for i, _ in listed] == oracle(ids, both, query[0])
    assert store.search_paths() == {"behind": 1}
    await store.close()


async def test_an_upsert_extends_the_build_and_a_search_skips_its_dead_slots(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """The next build keeps the last one's positions (its HNSW graph, updated): rows
    replaced since become dead slots, new rows are appended; both modes still answer as
    the oracle over the rows as they are now."""
    path = tmp_path / "m.db"
    first = clustered(rng, 2000)
    await write(path, "alice", first)
    replaced, added = clustered(rng, 10), clustered(rng, 100)
    await write(path, "alice", replaced, start=0, build=False)  # m0..m9: new vectors
    await write(path, "alice", added, start=2000)  # m2000..m2099, then the build
    [build] = list(group_directory(vectors_root(path), TYPE, "alice").iterdir())
    info = vector_files.read_build(build)
    assert (info.rows, info.slots, info.dead) == (2100, 2110, 10)
    now = np.vstack([replaced, first[10:], added])
    ids = [f"m{i}" for i in range(2100)]
    queries = np.vstack([replaced[:3], added[:3], clustered(rng, 4)])
    for mode in ("exact", "auto"):
        store = reader(path, mode)
        await store.connect()
        for query, listed in zip(queries, await search(store, queries), strict=True):
            got = [i for i, _ in listed]
            expected = oracle(ids, now, query)
            assert got == expected if mode == "exact" else len(set(got) & set(expected)) >= 9
        await store.close()


async def test_a_large_group_without_its_file_is_searched_by_vector_alone(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """No lexical index is built inside a request for a large group (a million rows take
    minutes): without its file, a hybrid query gets the vector list, exact."""
    path = tmp_path / "m.db"
    matrix = clustered(rng, 1500)
    await write(path, "alice", matrix, build=False)
    store = reader(path)
    await store.connect()
    query = clustered(rng, 1)
    group = SearchGroup(collection=TYPE, owner="alice", vectors=query, ks=(10,),
                        queries=("memory about topic3",), lexical_ks=(10,))  # fmt: skip
    [[found]] = await store.search([group])
    ids = [f"m{i}" for i in range(len(matrix))]
    assert [c.memory.id for c in found] == oracle(ids, matrix, query[0])
    assert all(c.lexical is None and c.lexical_rank is None for c in found)
    assert store.search_paths() == {"unindexed": 1} and store.cache.get(("long_term", "alice"))
    await store.close()


async def test_a_build_listing_fewer_files_than_it_has_is_not_served(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """build.json must checksum every file a reader reads: one that leaves the index out
    of its list is bypassed, whatever the index holds."""
    path = tmp_path / "m.db"
    await write(path, "alice", clustered(rng, 1500))
    [build] = list(group_directory(vectors_root(path), TYPE, "alice").iterdir())
    listed = json.loads((build / "build.json").read_text())
    del listed["sha256"][HNSW]
    (build / "build.json").write_text(json.dumps(listed))
    store = reader(path)
    await store.connect()
    await search(store, clustered(rng, 1))
    assert store.search_paths() == {"unindexed": 1}
    await store.close()


async def test_hybrid_lists_from_the_file_equal_the_cached_groups(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """The file's lexical index (built with it, memory-mapped) answers as the in-memory
    index of the cache path does (tests/unit/test_lexical.py holds that one against the
    BM25 oracle): the same candidates, ranks and scores, in exact mode."""
    indexed, cached = tmp_path / "indexed.db", tmp_path / "cached.db"
    matrix = clustered(rng, 1500)
    await write(indexed, "alice", matrix)
    await write(cached, "alice", matrix, build=False)
    texts = ("memory 7 about topic3", "topic5 topic5 memory", "nothing matches", "1499")
    group = SearchGroup(collection=TYPE, owner="alice", vectors=clustered(rng, len(texts)),
                        ks=(10, 0, 5, 3), queries=texts, lexical_ks=(10, 10, 5, 3))  # fmt: skip
    answers = []
    for path, min_rows in ((indexed, MIN_ROWS), (cached, 0)):
        store = SQLiteStore(path, dimensions=DIMS, index_min_rows=min_rows, search="exact")
        await store.connect()
        [found] = await store.search([group])
        answers.append([[(c.memory.id, round(c.score, 5), c.vector_rank,
                          None if c.lexical is None else round(c.lexical, 4), c.lexical_rank)
                         for c in per_query] for per_query in found])  # fmt: skip
        await store.close()
    for a, b in zip(answers[0], answers[1], strict=True):
        assert a == b, [x for x in a if x not in b] + [None] + [x for x in b if x not in a]
    assert any(rank for per_query in answers[0] for *_, rank in per_query)  # words matched
