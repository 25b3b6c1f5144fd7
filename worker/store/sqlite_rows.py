"""The embedded store's row queries: writing rows (and keeping the groups table in step),
a group's embeddings, and the few lookups a large group's search makes.

Rowids only grow. The writer numbers every row it writes past the largest rowid in
the table (a replaced row is deleted and written again under a new one), and no code
deletes rows otherwise, so "rows with rowid > N" is exactly what was written after a
vector file holding the rows through N was built.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from worker.store.base import Memory, Vectors
from worker.store.sqlite_file import COLUMNS, MEMORY_COLUMNS
from worker.store.vector_files import RowIds as RowIds

# No ORDER BY: the (memory_type, memory_id) index gives rowid order, and with an ORDER BY
# SQLite walks the primary key and scans the whole memory type.
GROUP_QUERY = "SELECT rowid, embedding FROM memories WHERE memory_type = ? AND memory_id = ?"
DELTA_QUERY = GROUP_QUERY + " AND rowid > ?"
PRESENT_QUERY = (
    "SELECT rowid FROM memories WHERE memory_type = ? AND memory_id = ? AND rowid IN ({})"
)
SIZE_QUERY = "SELECT size, indexed_through FROM groups WHERE memory_type = ? AND memory_id = ?"
OWNER_QUERY = "SELECT memory_id FROM memories WHERE memory_type = ? AND id = ?"
INSERT = (
    f"INSERT OR REPLACE INTO memories (rowid, {', '.join(COLUMNS)}) "
    f"VALUES (?, {','.join('?' * len(COLUMNS))})"
)
COUNT = (
    "INSERT INTO groups (memory_type, memory_id, size) VALUES (?, ?, ?) "
    "ON CONFLICT DO UPDATE SET size = size + excluded.size"
)
ROWS_PER_QUERY = 500  # well under SQLite's bound on variables per statement
TYPE, ID, OWNER = (MEMORY_COLUMNS.index(name) for name in ("memory_type", "id", "memory_id"))
EMPTY = np.zeros((0, 0), dtype=np.float32)


def write_rows(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert or replace `rows` (MEMORY_COLUMNS and the embedding) under new rowids, and
    count them into their groups' sizes (a replaced row leaves its old group), in the
    caller's transaction."""
    (largest,) = conn.execute("SELECT coalesce(max(rowid), 0) FROM memories").fetchone()
    sizes: Counter[tuple[str, str]] = Counter()
    owners: dict[tuple[str, str], str] = {}  # (type, id) → owner, as this batch leaves it
    for row in rows:
        key = (row[TYPE], row[ID])
        if key in owners:
            before: str | None = owners[key]
        else:
            stored = conn.execute(OWNER_QUERY, key).fetchone()
            before = None if stored is None else stored[0]
        if before is not None:
            sizes[(row[TYPE], before)] -= 1
        sizes[(row[TYPE], row[OWNER])] += 1
        owners[key] = row[OWNER]
    numbered = [(largest + offset, *row) for offset, row in enumerate(rows, start=1)]
    conn.executemany(INSERT, numbered)
    conn.executemany(COUNT, [(*group, change) for group, change in sizes.items() if change])


def load_group(conn: sqlite3.Connection, collection: str, owner: str) -> tuple[RowIds, Vectors]:
    """A group's rowids and embeddings (in rowid order: the owner index's)."""
    return _matrix(conn.execute(GROUP_QUERY, (collection, owner)).fetchall())


def load_delta(
    conn: sqlite3.Connection, collection: str, owner: str, through: int
) -> tuple[RowIds, Vectors]:
    """A group's rows written after rowid `through` (a range scan of the owner index)."""
    return _matrix(conn.execute(DELTA_QUERY, (collection, owner, through)).fetchall())


def group_size(conn: sqlite3.Connection, collection: str, owner: str) -> tuple[int, int | None]:
    """(rows, rowid its vector file holds rows through, or None) of a group."""
    row = conn.execute(SIZE_QUERY, (collection, owner)).fetchone()
    return (0, None) if row is None else (int(row[0]), row[1])


def present(
    conn: sqlite3.Connection, collection: str, owner: str, rowids: Iterable[int]
) -> set[int]:
    """Of `rowids`, those that are rows of the group now."""
    rows = rows_in(conn, PRESENT_QUERY, sorted(rowids), (collection, owner))
    return {row[0] for row in rows}


def rows_in(
    conn: sqlite3.Connection, query: str, rowids: Sequence[int], before: tuple[Any, ...] = ()
) -> Iterator[tuple[Any, ...]]:
    """The rows `query` (its `rowid IN ({})` left to fill) finds for `rowids`, asked in
    chunks under SQLite's bound on variables; `before`: its parameters ahead of them."""
    for start in range(0, len(rowids), ROWS_PER_QUERY):
        chunk = rowids[start : start + ROWS_PER_QUERY]
        yield from conn.execute(query.format(",".join("?" * len(chunk))), (*before, *chunk))


def _matrix(rows: list[tuple[int, bytes]]) -> tuple[RowIds, Vectors]:
    ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
    if not rows:
        return ids, EMPTY
    blobs = b"".join([row[1] for row in rows])
    return ids, np.frombuffer(blobs, dtype=np.float32).reshape(len(rows), -1)


TEXT_QUERY = (
    "SELECT rowid, id, content, summary_content, timestamp FROM memories "
    "WHERE memory_type = ? AND memory_id = ?"
)


def load_texts(
    conn: sqlite3.Connection, collection: str, owner: str, rowids: RowIds
) -> list[Memory]:
    """The group's memories as its lexical index reads them (id, texts, time: no
    embedding, no other field), in the order of `rowids`."""
    texts = {
        rowid: Memory(id=id_, memory_id=owner, memory_type=collection, content=content,
                      summary_content=summary, timestamp=timestamp)
        for rowid, id_, content, summary, timestamp in conn.execute(TEXT_QUERY, (collection, owner))
    }  # fmt: skip
    return [texts[int(rowid)] for rowid in rowids]


def load_for_build(
    conn: sqlite3.Connection, collection: str, owner: str
) -> tuple[RowIds, Vectors, list[Memory]]:
    """A group's rowids, embeddings and texts, sorted by rowid, for its vector file."""
    ids, matrix = load_group(conn, collection, owner)
    if np.any(ids[1:] < ids[:-1]):  # the owner index gives rowid order; make sure of it
        order = np.argsort(ids)
        ids, matrix = ids[order], matrix[order]
    return ids, matrix, load_texts(conn, collection, owner, ids)
