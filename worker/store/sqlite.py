"""The embedded store: stdlib sqlite3, exact search with numpy.

All database work runs on one dedicated thread, so the event loop never blocks
and the connection is never shared between threads. A serving store is
read-only (worker.store.sqlite_file says why and what makes a file a store); a
writable one (ingest, init) creates, marks and fills it. Each (memory type,
memory_id) group is loaded once as its embeddings (a float32 matrix) and their
rowids, and cached, bounded in bytes; after scoring, one query fetches the rows
of the candidates only (loading whole rows made a group load 1.45 ms, the
vectors alone ~0.2 ms). Both reads of a search run in one read transaction, so
the rowids and the rows come from the same snapshot. The cache is dropped when
this store upserts, when `PRAGMA data_version` shows another process (an
ingest) committed, and when the file at the path is replaced.

Rows here carry a memory_id and no other owner or attached field (the embedded store
serves the recallq profile, whose types have none): a group's attached ids, should a
custom profile give it any, select no row, and its search is the owner's alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import structlog

from worker.errors import ConfigError, StoreUnavailable
from worker.store.base import GroupResult, Memory, SearchGroup, SearchPaths, Vectors
from worker.store.exact import Found, candidate, dimension_mismatch, search_group
from worker.store.group_cache import GroupCache, GroupCacheStats
from worker.store.large_groups import LargeGroups
from worker.store.lexical import LexicalIndex
from worker.store.sqlite_file import (
    JSON_COLUMNS,
    MEMORY_COLUMNS,
    Identity,
    close_writer,
    identity,
    open_for_reading,
    open_for_writing,
)
from worker.store.sqlite_rows import RowIds, load_group, load_texts, rows_in, write_rows
from worker.store.vector_files import vectors_root
from worker.threads import single_thread

T = TypeVar("T")
log = structlog.get_logger(__name__)


ROWS_QUERY = "SELECT rowid, " + ", ".join(MEMORY_COLUMNS) + " FROM memories WHERE rowid IN ({})"
SIZES_QUERY = "SELECT DISTINCT length(embedding) FROM (SELECT embedding FROM memories LIMIT 1000)"
JSON_INDEXES = tuple(MEMORY_COLUMNS.index(name) for name in JSON_COLUMNS)

GROUP_OVERHEAD_BYTES = 400  # the key, the tuple and two array headers
DEFAULT_CACHE_BYTES = 512 * 2**20
DEFAULT_INDEX_MIN_ROWS = 50_000  # measured: HNSW beats exact from ~30k rows (README)
NOT_OPENED: Identity = (0, 0)


class SQLiteStore:
    """`writable=False` (serving): the file is opened read-only and must already be a
    recallq store; `writable=True` (ingest, init): created or marked if need be."""

    def __init__(
        self,
        path: Path,
        *,
        writable: bool = False,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        busy_timeout_s: float = 5.0,
        dimensions: int = 0,
        model: str = "",
        index_min_rows: int = DEFAULT_INDEX_MIN_ROWS,
        search: Literal["auto", "exact"] = "auto",
    ) -> None:
        """`dimensions` and `model`: the embedder's, checked against the stored embeddings
        when the worker starts (0: not checked). `index_min_rows`: groups this large get a
        vector file (the writer builds it; a reader warns where one is missing); `search`:
        auto = their HNSW candidates re-scored, exact = every row scored."""
        self.path = path
        self._dimensions = dimensions
        self._model = model
        self.writable = writable
        self._busy_timeout_s = busy_timeout_s
        self._executor = single_thread("recallq-sqlite")
        self._conn: sqlite3.Connection | None = None
        self.cache: GroupCache[Group] = GroupCache(cache_bytes)
        self._data_version = -1
        self._identity: Identity = NOT_OPENED
        self.usable = True  # false from a failed call until the next one succeeds
        # Never called: every row of this store has its embedding (ingest wrote it).
        self.on_skipped: Callable[[str, int], None] = lambda collection, rows: None
        self._problem: str | None = None  # what the last failed call found, logged once
        self._closed = False
        self._files = LargeGroups(vectors_root(path), index_min_rows, search)

    async def connect(self) -> None:
        """Open the file (a reader maps and verifies every vector file as it opens it, not
        in a request); ConfigError in one line when its embeddings are not the embedder's
        size (a sample: ingest writes one model's vectors)."""
        sizes = await self._run(self._embedding_sizes)
        if self._dimensions and sizes - {self._dimensions}:
            found = {"memories": sorted(sizes)}
            raise ConfigError(dimension_mismatch(found, self._dimensions, self._model))

    async def check(self) -> None:
        """Is the file at the path still the store (or a store again)? Cheap: one stat,
        and a reopen only when the file was replaced or the last call failed."""
        await self._run(self._current_connection)

    async def search(self, groups: Sequence[SearchGroup]) -> list[GroupResult]:
        return await self._run(lambda: self._search_groups(groups))

    async def upsert(self, memories: Sequence[Memory], embeddings: Vectors) -> None:
        rows = [_row(memory, vector) for memory, vector in zip(memories, embeddings, strict=True)]
        await self._run(lambda: self._write(rows))

    async def ensure_indexes(self) -> None:
        """A writer also builds the vector file of every large group that has none, or a
        stale or damaged one (ingest calls this when it has written)."""
        conn = await self._run(self._current_connection)
        if self.writable:
            await self._run(lambda: self._files.build_all(conn))

    def describe(self) -> dict[str, Any]:
        access = "read-write" if self.writable else "read-only"
        return {"store": "sqlite", "path": str(self.path), "mode": "exact", "access": access,
                **self._files.describe()}  # fmt: skip

    def cache_stats(self) -> GroupCacheStats:
        return self.cache.stats

    def search_paths(self) -> SearchPaths:
        return self._files.paths

    async def close(self) -> None:
        """Close the file (a writer empties its WAL first); a second close does nothing."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(sqlite3.DatabaseError):
            await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
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
            if not isinstance(exc, StoreUnavailable):
                exc = StoreUnavailable(f"sqlite {self.path}: {exc}")
            self._found(str(exc))
            raise exc from None
        self.usable = True
        self._found(None)
        return result

    def _found(self, problem: str | None) -> None:
        """One log line when the store becomes unusable (saying why) or usable again."""
        if problem == self._problem:
            return
        if problem is not None:
            log.error("store unavailable", path=str(self.path), reason=problem)
        elif self._problem is not None:
            log.info("store served again", path=str(self.path))
        self._problem = problem

    def _current_connection(self) -> sqlite3.Connection:
        """The connection; if the file at the path was replaced, the old connection is
        closed before the new file is opened (and checked), so nothing the old one holds
        (its WAL index, its locks) ever meets the new file."""
        replaced = self._identity != NOT_OPENED and self._replaced()
        if replaced and self.writable:  # a writer never follows a rename: it would write elsewhere
            raise StoreUnavailable(f"sqlite {self.path} is gone or was replaced while written")
        if replaced and self._conn is not None:
            log.warning("sqlite file replaced under the worker; reopening", path=str(self.path))
            self._close()
        if self._conn is None:
            opener = open_for_writing if self.writable else open_for_reading
            self._conn, self._identity = opener(self.path, self._busy_timeout_s)
            if not self.writable:  # a reopened store's vector files: verified now, once
                self._files.open_all(self._conn)
        return self._conn

    def _embedding_sizes(self) -> set[int]:
        conn = self._current_connection()
        rows = conn.execute(SIZES_QUERY).fetchall()
        return {size // 4 for (size,) in rows}  # float32

    def _replaced(self) -> bool:
        try:
            return identity(self.path) != self._identity
        except OSError:  # gone: opening says so
            return True

    def _close(self) -> None:
        """Close the connection and forget what it loaded (the next call reopens)."""
        self.cache.clear()
        self._files.forget()
        self._data_version = -1
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self.writable and not self._replaced():
            close_writer(conn, self.path)
        else:
            conn.close()

    def _write(self, rows: list[tuple[Any, ...]]) -> None:
        conn = self._current_connection()
        with conn:
            write_rows(conn, rows)
        self.cache.clear()

    def _search_groups(self, groups: Sequence[SearchGroup]) -> list[GroupResult]:
        conn = self._current_connection()
        version = conn.execute("PRAGMA data_version").fetchone()[0]  # before the snapshot
        conn.execute("BEGIN")
        try:
            if version != self._data_version:  # another connection committed
                self.cache.clear()
                self._files.look_again()
                self._data_version = version
            scored = [self._score(conn, group) for group in groups]
            wanted = {int(ids[f[0]]) for ids, per_query in scored for fs in per_query for f in fs}
            memories = _fetch_memories(conn, sorted(wanted))
        finally:
            conn.rollback()  # ends the read transaction (it wrote nothing), whatever raised
        return [
            [[candidate(memories[int(ids[f[0]])], f) for f in fs] for fs in per_query]
            for ids, per_query in scored
        ]

    def _score(
        self, conn: sqlite3.Connection, group: SearchGroup
    ) -> tuple[RowIds, list[list[Found]]]:
        """A large group's vector file where it has a usable one, else the cached rows. A
        large group without its file (`counted` as unindexed) is searched by vector alone:
        its lexical index is built with its file, never in a request (a million rows take
        minutes)."""
        served, counted = self._files.search(conn, group)
        if served is not None:
            return served
        if counted:
            group = replace(group, queries=(), lexical_ks=())
        cached, path = self._group(conn, group.collection, group.owner)
        if not counted:
            self._files.paths[path] += 1
        if any(group.lexical_ks) and cached.lexical is None:
            cached.lexical = _lexical_index(conn, group, cached.ids)
            if cached.nbytes <= self.cache.max_bytes:  # kept again, now with its words
                self.cache.put((group.collection, group.owner), cached, cached.nbytes)
        return cached.ids, search_group(cached.matrix, cached.lexical, group)

    def _group(self, conn: sqlite3.Connection, collection: str, owner: str) -> tuple[Group, str]:
        """The group's rows from the cache, or loaded (and kept where they fit), and the path
        that took (SearchPaths: cache, load, oversize)."""
        key = (collection, owner)
        cached = self.cache.get(key)
        if cached is not None:
            return cached, "cache"
        ids, matrix = load_group(conn, collection, owner)
        group = Group(ids, matrix)
        path = "load"
        if group.nbytes > self.cache.max_bytes:
            path = "oversize"
            self._files.warn_once(
                key, "oversize", "group larger than the whole group cache: loaded from the "
                "rows for every batch; raise RECALLQ_SQLITE_CACHE_MB, or lower "
                "RECALLQ_SQLITE_INDEX_MIN_ROWS and run `recallq worker init`",
                rows=len(ids), mib=round(group.nbytes / 2**20),
                cache_mib=self.cache.max_bytes >> 20,
            )  # fmt: skip
        self.cache.put(key, group, group.nbytes)
        return group, path


@dataclass
class Group:
    """One (collection, owner) group as cached: its rowids, their embeddings in the same
    order, and their lexical index once a query asked for one."""

    ids: RowIds
    matrix: Vectors
    lexical: LexicalIndex | None = None

    @property
    def nbytes(self) -> int:
        lexical = self.lexical.nbytes if self.lexical else 0
        return self.matrix.nbytes + self.ids.nbytes + lexical + GROUP_OVERHEAD_BYTES


def _lexical_index(conn: sqlite3.Connection, group: SearchGroup, ids: RowIds) -> LexicalIndex:
    """The group's lexical index, its documents in the order of `ids` (the vectors')."""
    return LexicalIndex.of(load_texts(conn, group.collection, group.owner, ids))


def _fetch_memories(conn: sqlite3.Connection, rowids: list[int]) -> dict[int, Memory]:
    return {row[0]: _memory(row[1:]) for row in rows_in(conn, ROWS_QUERY, rowids)}


def _row(memory: Memory, vector: Vectors) -> tuple[Any, ...]:
    """The memory's columns (MEMORY_COLUMNS, tags as JSON) and its embedding's bytes."""
    row = [getattr(memory, name) for name in MEMORY_COLUMNS]
    for index in JSON_INDEXES:
        row[index] = json.dumps(list(row[index])) if row[index] else None
    row.append(np.ascontiguousarray(vector, dtype=np.float32).tobytes())
    return tuple(row)


def _memory(row: tuple[Any, ...]) -> Memory:
    values = dict(zip(MEMORY_COLUMNS, row, strict=True))
    for name in JSON_COLUMNS:
        values[name] = tuple(json.loads(values[name])) if values[name] else None
    return Memory(**values)
