"""The embedded store against a numpy oracle, tenant scoping and cross-process freshness."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from schemas.messages import MemoryType
from worker.errors import ConfigError, StoreMismatch, StoreUnavailable
from worker.store.base import Memory, SearchGroup
from worker.store.sqlite import SQLiteStore
from worker.store.sqlite_file import APPLICATION_ID, SCHEMA_VERSION, what_is_at

DIMS = 8
LONG = MemoryType.LONG_TERM


def memories(memory_id: str, memory_type: MemoryType, count: int) -> list[Memory]:
    return [
        Memory(
            id=f"{memory_id}-{memory_type.value}-{i}",
            memory_id=memory_id,
            memory_type=memory_type,
            content=f"content {i}",
            timestamp=1_700_000_000.0 + i,
            role="user" if i % 2 else None,
            situational_tags=("a", "b") if i % 3 == 0 else None,
            importance=0.3 if i % 4 == 0 else None,
            last_accessed=1_700_100_000.0 + i if i % 5 == 0 else None,
        )
        for i in range(count)
    ]


def vectors(rng: np.random.Generator, count: int) -> np.ndarray:
    matrix = rng.standard_normal((count, DIMS)).astype(np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


@pytest.fixture
async def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = SQLiteStore(tmp_path / "memories.db", writable=True)
    await store.ensure_indexes()
    yield store
    await store.close()


async def test_search_matches_numpy_and_stays_in_its_group(store: SQLiteStore) -> None:
    rng = np.random.default_rng(7)
    owned = memories("alice", MemoryType.LONG_TERM, 30)
    owned_vectors = vectors(rng, 30)
    await store.upsert(owned, owned_vectors)
    await store.upsert(memories("bob", MemoryType.LONG_TERM, 30), vectors(rng, 30))
    await store.upsert(memories("alice", MemoryType.PROCEDURAL, 5), vectors(rng, 5))

    queries = vectors(rng, 3)
    [result] = await store.search([SearchGroup(MemoryType.LONG_TERM, "alice", queries, (5, 1, 40))])
    for query, k, hits in zip(queries, (5, 1, 40), result, strict=True):
        cosines = owned_vectors @ query
        expected = [owned[i].id for i in np.argsort(-cosines)[:k]]
        assert [c.memory.id for c in hits] == expected
        assert all(c.memory.memory_id == "alice" for c in hits)
        assert all(c.memory.memory_type == MemoryType.LONG_TERM for c in hits)
    assert result[2][0].memory in owned  # fields survive the round trip


async def test_unknown_group_is_empty(store: SQLiteStore) -> None:
    group = SearchGroup(
        MemoryType.SUMMARIES, "nobody", vectors(np.random.default_rng(1), 2), (3, 3)
    )
    assert await store.search([group]) == [[[], []]]


async def test_another_connection_s_commit_is_seen(store: SQLiteStore, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    group = SearchGroup(MemoryType.CONVERSATION, "carol", vectors(rng, 1), (10,))
    await store.upsert(memories("carol", MemoryType.CONVERSATION, 2), vectors(rng, 2))
    assert len((await store.search([group]))[0][0]) == 2  # now cached

    other = SQLiteStore(tmp_path / "memories.db", writable=True)  # e.g. an ingest process
    await other.upsert(memories("carol", MemoryType.CONVERSATION, 6), vectors(rng, 6))
    await other.close()
    assert len((await store.search([group]))[0][0]) == 6


async def test_dimension_mismatch_is_a_clear_store_error(store: SQLiteStore) -> None:
    rng = np.random.default_rng(5)
    await store.upsert(memories("dan", MemoryType.LONG_TERM, 2), vectors(rng, 2))
    wrong = np.ones((1, DIMS * 2), dtype=np.float32)
    with pytest.raises(StoreMismatch, match="re-ingest"):
        await store.search([SearchGroup(MemoryType.LONG_TERM, "dan", wrong, (1,))])


async def test_a_worker_refuses_to_start_on_embeddings_of_another_size(
    store: SQLiteStore, tmp_path: Path
) -> None:
    """The start-time guard: a provider giving 256 dimensions over a store of 8 stops the
    worker with one line naming both sizes and the provider; the right size starts."""
    await store.upsert(memories("dan", LONG, 3), vectors(np.random.default_rng(3), 3))
    await store.close()
    model = "openai text-embedding-3-small (256 dims) at https://api.openai.com/v1"
    wrong = SQLiteStore(tmp_path / "memories.db", dimensions=256, model=model)
    with pytest.raises(ConfigError) as refused:
        await wrong.connect()
    await wrong.close()
    line = str(refused.value)
    assert "memories: 8 dimensions" in line and f"{model} makes 256" in line
    assert "\n" not in line and "RECALLQ_EMBED_DIMENSIONS" in line
    right = SQLiteStore(tmp_path / "memories.db", dimensions=DIMS, model="local")
    await right.connect()
    await right.close()


async def test_group_lookup_uses_the_owner_index(store: SQLiteStore) -> None:
    """A plan on the primary key would scan every memory of the type (12x slower at 60k)."""
    import sqlite3

    from worker.store.sqlite_rows import GROUP_QUERY

    await store.ensure_indexes()
    connection = sqlite3.connect(store.path)
    plan = connection.execute(f"EXPLAIN QUERY PLAN {GROUP_QUERY}", ("long_term_memory", "m"))
    plan = plan.fetchall()
    connection.close()
    assert "memories_by_owner" in str(plan)


async def test_a_small_cache_stays_under_its_byte_bound_and_answers_the_same(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(11)
    small = SQLiteStore(
        tmp_path / "small.db", writable=True, cache_bytes=2_000
    )  # about three groups of 5
    owners = [f"tenant-{i}" for i in range(12)]
    expected: dict[str, list[str]] = {}
    query = vectors(rng, 1)
    for owner in owners:
        owned, matrix = memories(owner, MemoryType.CONVERSATION, 5), vectors(rng, 5)
        await small.upsert(owned, matrix)
        expected[owner] = [owned[i].id for i in np.argsort(-(matrix @ query[0]))[:3]]
    for _ in range(3):  # round robin: every lookup past the first two is a miss
        for owner in owners:
            group = SearchGroup(MemoryType.CONVERSATION, owner, query, (3,))
            [[hits]] = await small.search([group])
            assert [c.memory.id for c in hits] == expected[owner]
            assert small.cache.stats.bytes <= 2_000
    stats = small.cache_stats()  # what the metrics watch
    assert stats is small.cache.stats
    assert stats.lookups == 36 and stats.evictions > 0 and 0 < stats.groups < 12
    await small.close()


async def test_a_group_larger_than_the_whole_bound_is_served_and_not_kept(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    tiny = SQLiteStore(tmp_path / "tiny.db", writable=True, cache_bytes=100)
    await tiny.upsert(memories("big", MemoryType.LONG_TERM, 20), vectors(rng, 20))
    [[hits]] = await tiny.search([SearchGroup(MemoryType.LONG_TERM, "big", vectors(rng, 1), (4,))])
    assert len(hits) == 4
    assert tiny.cache.stats.groups == 0 and tiny.cache.stats.bytes == 0
    await tiny.close()


async def test_a_file_replaced_under_a_reading_store_is_reopened_and_its_memories_served(
    tmp_path: Path,
) -> None:
    """The worker reads; an ingest (another connection, closed since) builds a new file
    and swaps it in with a rename, as a re-ingest does."""
    rng = np.random.default_rng(21)

    async def build(path: Path, content: str) -> None:
        writer = SQLiteStore(path, writable=True)
        owned = [replace(m, content=f"{content} {m.id}") for m in memories("alice", LONG, 4)]
        await writer.upsert(owned, vectors(rng, 4))
        await writer.close()

    live = tmp_path / "live.db"
    await build(live, "old")
    reader = SQLiteStore(live)
    group = SearchGroup(LONG, "alice", vectors(rng, 1), (2,))
    [[before]] = await reader.search([group])
    assert all(c.memory.content.startswith("old") for c in before)
    await build(tmp_path / "next.db", "new")
    os.replace(tmp_path / "next.db", live)

    [[after]] = await reader.search([group])
    assert len(after) == 2 and all(c.memory.content.startswith("new") for c in after)
    assert reader.usable
    await reader.close()


async def test_a_deleted_file_is_store_unavailable_until_it_is_back(store: SQLiteStore) -> None:
    rng = np.random.default_rng(22)
    await store.upsert(memories("alice", MemoryType.LONG_TERM, 4), vectors(rng, 4))
    await store.close()
    reader = SQLiteStore(store.path)
    group = SearchGroup(MemoryType.LONG_TERM, "alice", vectors(rng, 1), (2,))
    [[before]] = await reader.search([group])
    moved = store.path.rename(store.path.with_suffix(".away"))
    with pytest.raises(StoreUnavailable, match="missing"):
        await reader.search([group])
    assert not reader.usable and not store.path.exists()  # the reader created nothing
    moved.rename(store.path)
    [[after]] = await reader.search([group])
    assert reader.usable and [c.memory.id for c in after] == [c.memory.id for c in before]
    await reader.close()


async def test_a_writer_never_follows_its_file_elsewhere(store: SQLiteStore) -> None:
    rng = np.random.default_rng(24)
    await store.upsert(memories("alice", MemoryType.LONG_TERM, 4), vectors(rng, 4))
    store.path.unlink()
    with pytest.raises(StoreUnavailable, match="gone"):
        await store.upsert(memories("bob", MemoryType.LONG_TERM, 4), vectors(rng, 4))
    assert not store.path.exists()


async def test_a_corrupt_file_is_store_unavailable_not_a_crash(tmp_path: Path) -> None:
    rng = np.random.default_rng(23)
    store = SQLiteStore(tmp_path / "c.db", writable=True)
    for owner in ("alice", "bob"):
        await store.upsert(memories(owner, MemoryType.LONG_TERM, 50), vectors(rng, 50))
    await store.close()
    with (tmp_path / "c.db").open("r+b") as data:
        data.seek(4096)
        data.write(bytes(rng.integers(0, 256, 16384, dtype=np.uint8)))  # pages 2-5 overwritten
    corrupt = SQLiteStore(tmp_path / "c.db")
    group = SearchGroup(MemoryType.LONG_TERM, "bob", vectors(rng, 1), (2,))
    with pytest.raises(StoreUnavailable, match="sqlite"):
        await corrupt.connect()
        await corrupt.search([group])
    assert not corrupt.usable
    await corrupt.close()


# The table as recallq wrote it before schema 2 (marked as 1, or before marks: unmarked).
SCHEMA_1 = """
CREATE TABLE memories (
    memory_type TEXT NOT NULL, id TEXT NOT NULL, memory_id TEXT NOT NULL,
    content TEXT NOT NULL, summary_content TEXT, role TEXT, timestamp REAL NOT NULL,
    situational_tags TEXT, importance REAL, embedding BLOB NOT NULL,
    PRIMARY KEY (memory_type, id)
);
CREATE INDEX memories_by_owner ON memories (memory_type, memory_id);
"""


def legacy_store(path: Path, rows: int, *, version: int | None = None) -> None:
    """A store as recallq wrote them before stores were marked (no application_id), or
    marked with an older schema `version`."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA_1)
    conn.executemany(
        "INSERT INTO memories VALUES (?,?,?,?,?,?,?,?,?,?)",
        [(LONG.value, f"m{i}", "alice", f"old {i}", None, None, 1.0, '["t"]', 0.5,
          np.ones(DIMS, np.float32).tobytes()) for i in range(rows)],
    )  # fmt: skip
    if version is not None:
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the marks into the file's header
    conn.close()


def sidecar_bytes(database: Path, suffix: str) -> int | None:
    """The size of the database's -wal or -journal file; None where there is none."""
    sidecar = Path(f"{database}{suffix}")
    return sidecar.stat().st_size if sidecar.exists() else None


def rows_of(path: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path.absolute().as_uri() + "?mode=ro", uri=True)
    try:
        return conn.execute("SELECT * FROM memories ORDER BY id").fetchall()
    finally:
        conn.close()


def schema_of(path: Path) -> tuple[int, int]:
    """(application_id, user_version) as the file's header holds them."""
    header = path.read_bytes()[:100]
    return int.from_bytes(header[68:72], "big"), int.from_bytes(header[60:64], "big")


async def test_an_unmarked_store_is_refused_for_serving_until_init_marks_it(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    legacy_store(path, 5)
    rows = rows_of(path)
    reader = SQLiteStore(path)
    with pytest.raises(StoreUnavailable, match="marked by `recallq worker init`"):
        await reader.connect()
    assert rows_of(path) == rows  # looked at, not touched
    writer = SQLiteStore(path, writable=True)  # what `recallq worker init` opens
    await writer.ensure_indexes()
    await writer.close()
    assert what_is_at(path) is None and schema_of(path) == (APPLICATION_ID, SCHEMA_VERSION)
    assert rows_of(path) == [(*row, None) for row in rows]  # marked and migrated: no recall yet
    await reader.connect()
    assert reader.usable
    await reader.close()


async def test_a_store_of_schema_1_is_refused_by_a_reader_and_migrated_by_a_writer(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v1.db"
    legacy_store(path, 5, version=1)
    rows = rows_of(path)
    reader = SQLiteStore(path)
    with pytest.raises(StoreUnavailable, match="schema 1: migrate it with `recallq worker init`"):
        await reader.connect()
    assert rows_of(path) == rows and schema_of(path) == (APPLICATION_ID, 1)  # not touched
    writer = SQLiteStore(path, writable=True)
    await writer.ensure_indexes()
    assert schema_of(path) == (APPLICATION_ID, SCHEMA_VERSION)  # in the file, not only the WAL
    recalled = Memory("r", "alice", LONG, "recalled", 2.0, last_accessed=3.0)
    await writer.upsert([recalled], np.ones((1, DIMS), np.float32))
    await writer.close()
    assert what_is_at(path) is None
    assert rows_of(path)[:5] == [(*row, None) for row in rows]  # every old row intact
    [[hits]] = await reader.search(
        [SearchGroup(LONG, "alice", np.ones((1, DIMS), np.float32), (10,))]
    )
    assert {c.memory.id for c in hits} == {"r", *(f"m{i}" for i in range(5))}
    old = next(c.memory for c in hits if c.memory.id == "m0")
    assert old.situational_tags == ("t",) and old.importance == 0.5 and old.last_accessed is None
    assert next(c.memory for c in hits if c.memory.id == "r") == recalled
    await reader.close()


async def test_a_store_of_a_newer_schema_is_refused_by_readers_and_writers(tmp_path: Path) -> None:
    path = tmp_path / "next.db"
    legacy_store(path, 2, version=SCHEMA_VERSION + 1)
    before = path.read_bytes()
    with pytest.raises(StoreUnavailable, match="newer than this worker's"):
        await SQLiteStore(path).connect()
    writer = SQLiteStore(path, writable=True)
    with pytest.raises(StoreUnavailable, match="refusing to write"):
        await writer.ensure_indexes()
    await writer.close()
    assert path.read_bytes() == before


async def test_a_writer_refuses_a_foreign_file_and_leaves_it_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "theirs.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE foo (bar TEXT)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    writer = SQLiteStore(path, writable=True)
    with pytest.raises(StoreUnavailable, match=r"not a recallq store.*refusing to write"):
        await writer.ensure_indexes()
    await writer.close()
    assert path.read_bytes() == before
    assert sidecar_bytes(path, "-wal") is None and sidecar_bytes(path, "-journal") is None


async def test_a_writer_leaves_an_empty_write_ahead_log_even_while_a_reader_holds_the_file(
    store: SQLiteStore,
) -> None:
    rng = np.random.default_rng(25)
    await store.upsert(memories("alice", LONG, 40), vectors(rng, 40))
    reader = SQLiteStore(store.path)
    await reader.search([SearchGroup(LONG, "alice", vectors(rng, 1), (3,))])  # holds it open
    await store.upsert(memories("bob", LONG, 40), vectors(rng, 40))
    assert sidecar_bytes(store.path, "-wal")  # committed frames, not yet in the file
    await store.close()
    assert sidecar_bytes(store.path, "-wal") == 0  # checkpointed and emptied: safe to rename
    [[hits]] = await reader.search([SearchGroup(LONG, "bob", vectors(rng, 1), (3,))])
    assert len(hits) == 3
    await reader.close()


def said(memory_id: str, id_: str, content: str) -> Memory:
    """A memory a day after the one before: no two are neighbours in time."""
    day = 86_400.0 * int(id_[1:])
    return Memory(id=id_, memory_id=memory_id, memory_type=LONG, content=content, timestamp=day)


async def lexical_ids(store: SQLiteStore, owner: str, query: str) -> list[str]:
    rng = np.random.default_rng(0)
    group = SearchGroup(LONG, owner, vectors(rng, 1), (0,), queries=(query,), lexical_ks=(10,))
    [[hits]] = await store.search([group])
    return [c.memory.id for c in hits]


async def test_the_lexical_index_follows_upserts_replacements_and_other_writers(
    store: SQLiteStore, tmp_path: Path
) -> None:
    """A memory added is found by its words at once, one replaced only by its new words,
    whoever wrote it; a database renamed into place answers with its own words."""
    rng = np.random.default_rng(26)
    await store.upsert([said("alice", "a1", "the heron nests by the river")], vectors(rng, 1))
    assert await lexical_ids(store, "alice", "heron") == ["a1"]
    await store.upsert([said("alice", "a2", "a kingfisher dives")], vectors(rng, 1))
    assert await lexical_ids(store, "alice", "kingfisher") == ["a2"]  # cached group refreshed
    await store.upsert([said("alice", "a1", "the otter swims by the river")], vectors(rng, 1))
    assert await lexical_ids(store, "alice", "heron") == []
    assert await lexical_ids(store, "alice", "otter") == ["a1"]

    reader = SQLiteStore(store.path)  # a serving worker; `store` writes like an ingest
    assert await lexical_ids(reader, "alice", "otter") == ["a1"]
    await store.upsert([said("alice", "a3", "an osprey circles")], vectors(rng, 1))
    assert await lexical_ids(reader, "alice", "osprey") == ["a3"]  # another process's commit
    assert await lexical_ids(reader, "bob", "osprey") == []  # never another owner's rows

    other = tmp_path / "other.db"
    writer = SQLiteStore(other, writable=True)
    await writer.upsert([said("alice", "b1", "a pelican waits")], vectors(rng, 1))
    await writer.close()
    await store.close()
    os.replace(other, store.path)
    assert await lexical_ids(reader, "alice", "pelican") == ["b1"]
    assert await lexical_ids(reader, "alice", "osprey") == []
    await reader.close()
