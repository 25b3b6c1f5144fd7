"""The embedded store's large groups: served from their vector files (reading), and
their vector files built (writing, by ingest and init).

A group of at least `min_rows` rows gets a vector file (worker.store.vector_files)
from the writer; a reader serves every group that has one from it, the rows written
since scored beside it. Whatever a reader cannot use (no file yet, a damaged or
foreign one, too many rows replaced since it was built) falls back to loading the
group's rows, with a warning once per group and reason and a `unindexed` count.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import structlog
from tqdm import tqdm

from worker.store.base import SearchGroup, SearchPaths
from worker.store.exact import Found
from worker.store.file_search import Delta, search_file
from worker.store.sqlite_file import store_id
from worker.store.sqlite_rows import group_size, load_delta, load_for_build, present
from worker.store.vector_files import (
    Damaged,
    GroupRows,
    RowIds,
    VectorFile,
    extend,
    group_directory,
    read_build,
    remove_older,
    write_build,
)

log = structlog.get_logger(__name__)
Key = tuple[str, str]  # (memory type, memory_id)
MAX_SPARE = 10_000  # rows replaced since a build that a search still over-asks for
INDEXED = "SELECT memory_type, memory_id, indexed_through FROM groups WHERE indexed_through > 0"
LARGE = "SELECT memory_type, memory_id, size, indexed_through FROM groups WHERE size >= ?"
LARGEST = "SELECT max(rowid) FROM memories WHERE memory_type = ? AND memory_id = ?"
MARK = "UPDATE groups SET indexed_through = ? WHERE memory_type = ? AND memory_id = ?"
UNREADABLE = (Damaged, OSError, ValueError, RuntimeError)  # what a bad file raises


class LargeGroups:
    """Touched from the store's one database thread only."""

    def __init__(self, root: Path, min_rows: int, search: Literal["auto", "exact"]) -> None:
        self.root = root
        self.min_rows = min_rows
        self.mode = search
        self.paths: SearchPaths = Counter()
        self._opened: dict[Key, tuple[int, VectorFile | None]] = {}
        self._warned: set[tuple[Key, str]] = set()

    def describe(self) -> dict[str, Any]:
        usable = sum(1 for _, file in self._opened.values() if file is not None)
        return {"large_groups": f"vector files from {self.min_rows} rows, {self.mode} search",
                "vector_files": usable}  # fmt: skip

    def look_again(self) -> None:
        """Another connection committed (an init may have rebuilt a damaged file under the
        same name): files found unusable are tried again at their next search."""
        self._opened = {key: held for key, held in self._opened.items() if held[1] is not None}

    def forget(self) -> None:
        """The store file was replaced or closed: its vector files are another store's."""
        self._opened.clear()

    def search(
        self, conn: sqlite3.Connection, group: SearchGroup
    ) -> tuple[tuple[RowIds, list[list[Found]]] | None, bool]:
        """(the group's candidates from its vector file, or None where the rows must be
        loaded; whether this call counted the group's path)."""
        key = (group.collection, group.owner)
        size, through = group_size(conn, *key)
        file = self._file(conn, key, through) if through else None
        if file is None:
            if not (self.min_rows and size >= self.min_rows):
                return None, False
            reason = "no vector file yet" if not through else "its vector file is unusable"
            self._unindexed(key, reason, size)
            return None, True
        ids, matrix = load_delta(conn, *key, file.info.through)
        gone = file.info.rows + len(ids) - size  # rows of the file replaced since
        if not 0 <= gone <= MAX_SPARE:
            self._unindexed(key, f"{gone} rows replaced since its vector file", size)
            return None, True
        approximate = self.mode == "auto" and file.index is not None
        self.paths[self._path(key, approximate, len(ids))] += 1
        found = search_file(
            file, Delta(ids, matrix), group, approximate=approximate,
            spare=gone + file.info.dead,
            present=lambda rowids: present(conn, *key, rowids),
        )  # fmt: skip
        return found, True

    def _path(self, key: Key, approximate: bool, delta: int) -> str:
        """The path's name; `behind` (with a warning) where the rows written since the file
        was built are as many as a group that gets a file of its own: they are loaded and
        scored for every batch until the next build."""
        if delta < max(self.min_rows, 1):
            return "approximate" if approximate else "vector_file"
        self.warn_once(
            key, "behind", "vector file far behind its rows: they are scored from the rows "
            "each batch; the next ingest or `recallq worker init` rebuilds it", rows=delta,
        )  # fmt: skip
        return "behind"

    def open_all(self, conn: sqlite3.Connection) -> None:
        """Map and verify every group's vector file (checksums read each file once): done at
        start, so that no request waits for it."""
        started = time.perf_counter()
        for memory_type, memory_id, through in conn.execute(INDEXED).fetchall():
            self._file(conn, (memory_type, memory_id), through)
        usable = self.describe()["vector_files"]
        if self._opened:
            log.info("vector files opened", usable=usable, groups=len(self._opened),
                     seconds=round(time.perf_counter() - started, 2))  # fmt: skip

    def warn_once(self, key: Key, reason: str, message: str, **fields: Any) -> None:
        """One warning per group and reason (the metric counts every search)."""
        if (key, reason) in self._warned:
            return
        self._warned.add((key, reason))
        log.warning(message, memory_type=key[0], **fields)

    def _unindexed(self, key: Key, reason: str, size: int) -> None:
        self.paths["unindexed"] += 1
        self.warn_once(
            key, reason, f"large group served from its rows, by vector alone: {reason}; "
            "`recallq worker init` (re)builds vector files", rows=size,
        )  # fmt: skip

    def _file(self, conn: sqlite3.Connection, key: Key, through: int) -> VectorFile | None:
        held = self._opened.get(key)
        if held is not None and held[0] == through:
            return held[1]
        file = None
        try:
            file = self._open(conn, key, through)
        except UNREADABLE as exc:
            self.warn_once(key, f"damaged {through}", "vector file bypassed", problem=str(exc))
        self._opened[key] = (through, file)
        return file

    def _open(self, conn: sqlite3.Connection, key: Key, through: int) -> VectorFile:
        directory = group_directory(self.root, *key) / str(through)
        info = read_build(directory)
        if info.store_id != store_id(conn):
            raise Damaged("it belongs to another store file")
        if (info.memory_type, info.memory_id, info.through) != (*key, through):
            raise Damaged("it holds another group or build")
        file = VectorFile.open(directory, info)
        if file.index is None:
            self.warn_once(
                key, "untrusted", "HNSW index below its recall bar on this group's rows: "
                "every row scored instead", recall=info.recall,
            )  # fmt: skip
        return file

    def build_all(self, conn: sqlite3.Connection) -> None:
        """Build the vector file of every large group without a current, intact one. Each
        last build is opened (its checksums read) once: to see whether it is current, and
        then as the build the new one extends."""
        if not self.min_rows:
            return
        stale: list[tuple[Key, VectorFile | None]] = []
        for kind, owner, size, through in conn.execute(LARGE, (self.min_rows,)).fetchall():
            key = (kind, owner)
            previous = self._intact(conn, key, through)
            largest = conn.execute(LARGEST, key).fetchone()[0]
            if previous is None or (previous.info.rows, through) != (size, largest):
                stale.append((key, previous))
        for key, previous in tqdm(stale, desc="vector files", unit="group", disable=not stale):
            self._build(conn, key, previous)

    def _intact(self, conn: sqlite3.Connection, key: Key, through: int | None) -> VectorFile | None:
        """The group's last build, verified; None where it has none or it is damaged."""
        if not through:
            return None
        try:
            return self._open(conn, key, through)
        except UNREADABLE as exc:
            log.warning("vector file damaged: rebuilding it", memory_type=key[0], reason=str(exc))
            return None

    def _build(self, conn: sqlite3.Connection, key: Key, previous: VectorFile | None) -> None:
        """One group's build from one snapshot of its rows, extending `previous` where it
        can (few rows gone since: an upsert then costs the new rows' insertions into the
        graph, not a whole new graph), then marked in the groups table (a commit: readers
        see data_version move and look again)."""
        with conn:  # a read transaction: the rows and the store id of one snapshot
            conn.execute("BEGIN")
            rows = GroupRows(*load_for_build(conn, *key))
            store = store_id(conn)
        directory = group_directory(self.root, *key)
        extending = None
        if previous is not None and (slots := extend(rows, previous)) is not None:
            extending = (directory / str(previous.info.through), slots)
        info = write_build(directory, key, store, rows, extending)
        with conn:
            conn.execute(MARK, (info.through, *key))
        remove_older(directory, info.through)
        log.info("vector file built", memory_type=key[0], rows=info.rows, recall=info.recall,
                 seconds=info.build_s)  # fmt: skip
