"""The embedded store: stdlib sqlite3 in WAL mode, exact search with numpy.

All database work runs on one dedicated thread, so the event loop never blocks
and the connection is never shared between threads. Each (memory type,
memory_id) group is loaded once as its embeddings (a float32 matrix) and their
rowids, and cached, bounded in bytes; after scoring, one query fetches the rows
of the candidates only (loading whole rows made a group load 1.45 ms, the
vectors alone ~0.2 ms). Both reads of a search run in one read transaction, so
the rowids and the rows come from the same snapshot. The cache is dropped when
this store upserts or when `PRAGMA data_version` shows another process (an
ingest) committed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import structlog

from worker.errors import StoreUnavailable
from worker.store.base import Candidate, GroupResult, Memory, SearchGroup, Vectors
from worker.store.exact import check_dimensions, top_k
from worker.store.group_cache import GroupCache
from worker.threads import single_thread

T = TypeVar("T")
log = structlog.get_logger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS memories (
    memory_type TEXT NOT NULL,
    id TEXT NOT NULL,
    memory_id TEXT NOT NULL,
    content TEXT NOT NULL,
    summary_content TEXT,
    role TEXT,
    timestamp REAL NOT NULL,
    situational_tags TEXT,
    importance REAL,
    embedding BLOB NOT NULL,
    PRIMARY KEY (memory_type, id)
);
CREATE INDEX IF NOT EXISTS memories_by_owner ON memories (memory_type, memory_id);
"""

COLUMNS = (
    "memory_type, id, memory_id, content, summary_content, role, timestamp, "
    "situational_tags, importance, embedding"
)

# No ORDER BY: with one, SQLite walks the primary key and scans the whole memory type.
GROUP_QUERY = "SELECT rowid, embedding FROM memories WHERE memory_type = ? AND memory_id = ?"
ROW_COLUMNS = COLUMNS.removesuffix(", embedding")
ROWS_QUERY = "SELECT rowid, " + ROW_COLUMNS + " FROM memories WHERE rowid IN ({})"
ROWS_PER_QUERY = 500  # well under SQLite's bound on variables per statement

GroupKey = tuple[str, str]
RowIds = npt.NDArray[np.int64]
GroupData = tuple[RowIds, Vectors]  # rowids, and the embeddings in the same order
GROUP_OVERHEAD_BYTES = 400  # the key, the tuple and two array headers
DEFAULT_CACHE_BYTES = 512 * 2**20


class SQLiteStore:
    def __init__(
        self, path: Path, *, cache_bytes: int = DEFAULT_CACHE_BYTES, busy_timeout_s: float = 5.0
    ) -> None:
        self.path = path
        self._busy_timeout_s = busy_timeout_s
        self._executor = single_thread("recallq-sqlite")
        self._conn: sqlite3.Connection | None = None
        self.cache: GroupCache[GroupData] = GroupCache(cache_bytes)
        self._data_version = -1
        self._identity: tuple[int, int] = (0, 0)
        self.usable = True  # false from a failed call until the next one succeeds

    async def connect(self) -> None:
        await self._run(lambda: self._connection())

    async def search(self, groups: Sequence[SearchGroup]) -> list[GroupResult]:
        return await self._run(lambda: self._search_groups(groups))

    async def upsert(self, memories: Sequence[Memory], embeddings: Vectors) -> None:
        rows = [_row(memory, vector) for memory, vector in zip(memories, embeddings, strict=True)]
        await self._run(lambda: self._write(rows))

    async def ensure_indexes(self) -> None:
        await self._run(lambda: self._connection())

    def describe(self) -> dict[str, Any]:
        return {"store": "sqlite", "path": str(self.path), "mode": "exact"}

    async def close(self) -> None:
        await self._run(self._close)
        self._executor.shutdown(wait=True)

    async def _run(self, work: Callable[[], T]) -> T:
        """Run on the store thread; any database failure (locked, disk I/O, a corrupt or
        foreign file, the file gone) is StoreUnavailable, and the next call reopens."""
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._executor, work)
        except (sqlite3.DatabaseError, StoreUnavailable) as exc:
            self.usable = False
            await loop.run_in_executor(self._executor, self._close)
            if isinstance(exc, StoreUnavailable):
                raise
            raise StoreUnavailable(f"sqlite {self.path}: {exc}") from None
        self.usable = True
        return result

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(SCHEMA)
            except sqlite3.DatabaseError:
                conn.close()
                raise
            self._conn = conn
            self._identity = _identity(self.path)
        return self._conn

    def _current_connection(self) -> sqlite3.Connection:
        """The connection, reopened first if the file at `path` was replaced; gone is an error."""
        try:
            identity = _identity(self.path)
        except FileNotFoundError:
            raise StoreUnavailable(f"sqlite: {self.path} is gone (deleted or moved)") from None
        if self._conn is not None and identity != self._identity:
            log.warning("sqlite file replaced under the worker; reopening", path=str(self.path))
            self._close()
        return self._connection()

    def _close(self) -> None:
        """Close the connection and forget what it loaded (the next call reopens)."""
        self.cache.clear()
        self._data_version = -1
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _write(self, rows: list[tuple[Any, ...]]) -> None:
        conn = self._connection()
        with conn:
            conn.executemany(
                f"INSERT OR REPLACE INTO memories ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)", rows
            )
        self.cache.clear()

    def _search_groups(self, groups: Sequence[SearchGroup]) -> list[GroupResult]:
        conn = self._current_connection()
        version = conn.execute("PRAGMA data_version").fetchone()[0]  # before the snapshot
        conn.execute("BEGIN")
        try:
            if version != self._data_version:  # another connection committed
                self.cache.clear()
                self._data_version = version
            scored = [self._score(conn, group) for group in groups]
            wanted = {
                int(ids[i]) for ids, per_query in scored for hits in per_query for i, _ in hits
            }
            memories = _fetch_memories(conn, sorted(wanted))
        finally:
            conn.rollback()  # ends the read transaction (it wrote nothing), whatever raised
        return [
            [[Candidate(memories[int(ids[i])], score) for i, score in hits] for hits in per_query]
            for ids, per_query in scored
        ]

    def _score(
        self, conn: sqlite3.Connection, group: SearchGroup
    ) -> tuple[RowIds, list[list[tuple[int, float]]]]:
        ids, matrix = self._group(conn, group.memory_type, group.memory_id)
        check_dimensions(matrix, group.vectors)
        return ids, top_k(matrix, group.vectors, group.ks)

    def _group(self, conn: sqlite3.Connection, memory_type: str, memory_id: str) -> GroupData:
        key = (memory_type, memory_id)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        rows = conn.execute(GROUP_QUERY, (memory_type, memory_id)).fetchall()
        ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
        blobs = b"".join([row[1] for row in rows])
        matrix = np.frombuffer(blobs, dtype=np.float32).reshape(len(rows), -1) if rows else EMPTY
        self.cache.put(key, (ids, matrix), matrix.nbytes + ids.nbytes + GROUP_OVERHEAD_BYTES)
        return ids, matrix


def _fetch_memories(conn: sqlite3.Connection, rowids: list[int]) -> dict[int, Memory]:
    memories = {}
    for start in range(0, len(rowids), ROWS_PER_QUERY):
        chunk = rowids[start : start + ROWS_PER_QUERY]
        query = ROWS_QUERY.format(",".join("?" * len(chunk)))
        for row in conn.execute(query, chunk):
            memories[row[0]] = _memory(row[1:])
    return memories


EMPTY = np.zeros((0, 0), dtype=np.float32)


def _identity(path: Path) -> tuple[int, int]:
    status = os.stat(path)
    return status.st_dev, status.st_ino


def _row(memory: Memory, vector: Vectors) -> tuple[Any, ...]:
    tags = json.dumps(list(memory.situational_tags)) if memory.situational_tags else None
    return (
        memory.memory_type,
        memory.id,
        memory.memory_id,
        memory.content,
        memory.summary_content,
        memory.role,
        memory.timestamp,
        tags,
        memory.importance,
        np.ascontiguousarray(vector, dtype=np.float32).tobytes(),
    )


def _memory(row: tuple[Any, ...]) -> Memory:
    return Memory(
        memory_type=row[0],
        id=row[1],
        memory_id=row[2],
        content=row[3],
        summary_content=row[4],
        role=row[5],
        timestamp=row[6],
        situational_tags=tuple(json.loads(row[7])) if row[7] else None,
        importance=row[8],
    )
