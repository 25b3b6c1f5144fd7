"""A large group's vector file: its embeddings contiguous on disk, memory-mapped, with an
HNSW index and a lexical index beside them, all written by the store's writer.

A group of a few hundred thousand memories does not fit the group cache, and loading
it from SQLite rows costs seconds per batch. Here its embeddings (float32, in rowid
order) are one `.npy` file that the kernel pages in and every worker on the host
shares; exact scoring is one pass over it, and approximate scoring asks an HNSW index
(usearch, int8: a quarter of the vectors' size, 0.3 ms a query at 100k) for candidates
that are then re-scored exactly from the float32 file, so reply cosines stay exact.

One build is a directory `<root>/<group hash>/<through>/`: the rows of the group
with rowid <= `through` at the time it was written (rowids only grow: the writer
numbers every row past the largest). Rows written later are the reader's delta,
scored exactly from SQLite; rows replaced later no longer exist and are dropped.
`build.json` is written last and names the store (its `store_id`), the group, the
row count and a SHA-256 of every file: a build is used only when all of them match,
so a damaged or foreign file is bypassed, never served.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from usearch.index import BatchMatches, Index

from worker.store.base import Memory, Vectors
from worker.store.exact import top_indexes
from worker.store.lexical import LexicalIndex

RowIds = npt.NDArray[np.int64]
BUILD_FILE = "build.json"
VECTORS, ROWIDS, HNSW, LEXICAL = "vectors.npy", "rowids.npy", "hnsw.usearch", "lexical"
FORMAT = 2
# HNSW: 16 links a node, 128 candidates kept while inserting (usearch's defaults, measured
# here at recall@10 0.99 after re-scoring on clustered data, README), int8 vectors.
CONNECTIVITY, EXPANSION_ADD = 16, 128
TRUSTED_RECALL = 0.95  # below this on its own rows, an index is not used: exact instead
RECALL_SAMPLE = 200  # rows of the group used as queries to measure that recall
DEAD = -1  # the rowid of a dead slot: a row gone since the build that placed it
MAX_DEAD = 10_000  # dead slots a build may carry (and a search over-asks for) at most
_NONE = np.zeros(0, dtype=np.intp)
MIN_CANDIDATES = 512  # HNSW candidates per query: 4 x those wanted, at least this many (README)


class Damaged(Exception):
    """A build that must not be served: missing, foreign, stale or altered (says which)."""


@dataclass(frozen=True)
class BuildInfo:
    """What build.json holds."""

    format: int
    store_id: str
    memory_type: str
    memory_id: str
    through: int  # the largest rowid of the group when it was built
    rows: int  # live rows (positions holding a row of the group)
    slots: int  # positions: live rows and dead slots
    dimensions: int
    recall: float  # recall@10 of the HNSW index on a sample of the group's own rows
    build_s: float
    sha256: dict[str, str]

    @property
    def dead(self) -> int:
        return self.slots - self.rows

    @property
    def trusted(self) -> bool:
        return self.recall >= TRUSTED_RECALL  # read at open: a test may raise the bar


def group_directory(root: Path, memory_type: str, memory_id: str) -> Path:
    """Where a group's builds live: memory_ids are any text, so the name is a hash."""
    digest = hashlib.sha256(f"{memory_type}\0{memory_id}".encode()).hexdigest()[:32]
    return root / digest


def vectors_root(database: Path) -> Path:
    """The directory beside the database file: `recallq.db` → `recallq.db-vectors`."""
    return database.with_name(database.name + "-vectors")


@dataclass
class VectorFile:
    """One verified build, memory-mapped: row i of `matrix` is rowid `rowids[i]`."""

    info: BuildInfo
    rowids: RowIds
    matrix: Vectors
    index: Index | None  # None when the index failed its recall check
    lexical: LexicalIndex

    @classmethod
    def open(cls, directory: Path, info: BuildInfo) -> VectorFile:
        """Verify every file against build.json, then map them; Damaged otherwise."""
        present = {ROWIDS, VECTORS, HNSW, *_files_in(directory / LEXICAL, LEXICAL)}
        if set(info.sha256) != present:  # every file read is one whose checksum is checked
            raise Damaged(f"its files {sorted(present)} are not those build.json lists")
        for name, digest in info.sha256.items():
            if _sha256(directory / name) != digest:
                raise Damaged(f"{name} does not match its checksum")
        rowids = np.load(directory / ROWIDS, mmap_mode="r")
        matrix = np.load(directory / VECTORS, mmap_mode="r")
        if matrix.shape != (info.slots, info.dimensions) or rowids.shape != (info.slots,):
            raise Damaged(f"shapes {matrix.shape} and {rowids.shape} are not the build's")
        index = Index.restore(str(directory / HNSW), view=True) if info.trusted else None
        if info.trusted and index is None:
            raise Damaged(f"{HNSW} is not a usearch index")
        if index is not None and len(index) != info.rows:
            raise Damaged(f"the index holds {len(index)} rows, the build {info.rows}")
        if np.count_nonzero(rowids != DEAD) != info.rows:
            raise Damaged("its rowids are not the build's")
        return cls(info, rowids, matrix, index, LexicalIndex.load(directory / LEXICAL))

    def candidates(
        self, queries: Vectors, counts: Sequence[int], approximate: bool
    ) -> list[npt.NDArray[np.intp]]:
        """Per query, positions of (about) its `counts[i]` nearest rows: the HNSW index's
        candidates (4 x the count, at least MIN_CANDIDATES; one batched call, on every
        core) where `approximate`, the index is trusted and they are fewer than the rows
        (HNSW need not return every row); else every row scored."""
        wanted = max(4 * max(counts, default=0), MIN_CANDIDATES)
        if not (approximate and self.index is not None and wanted < self.info.rows):
            scores = queries @ self.matrix.T  # one pass over the file for the batch
            return [top_indexes(row, count) for row, count in zip(scores, counts, strict=True)]
        self.index.expansion_search = 2 * wanted  # type: ignore[misc]
        found = self.index.search(queries, wanted)
        if not isinstance(found, BatchMatches):  # one query: usearch answers Matches
            return [np.asarray(found.keys, dtype=np.intp)]
        return [
            np.asarray(keys[:count], dtype=np.intp)
            for keys, count in zip(found.keys, found.counts, strict=True)
        ]


def read_build(directory: Path) -> BuildInfo:
    """build.json of one build directory; Damaged when it is missing or malformed."""
    try:
        fields = json.loads((directory / BUILD_FILE).read_text())
        info = BuildInfo(**fields)
    except (OSError, ValueError, TypeError) as exc:
        raise Damaged(f"{BUILD_FILE}: {exc}") from None
    if info.format != FORMAT:
        raise Damaged(f"format {info.format}, this worker reads {FORMAT}")
    return info


@dataclass(frozen=True)
class GroupRows:
    """A group's rows as a build reads them, in rowid order."""

    rowids: RowIds
    matrix: Vectors
    memories: Sequence[Memory]  # what its lexical index is made of


@dataclass(frozen=True)
class Slots:
    """A build's rows by position. A build that extends the previous one keeps every
    position (HNSW keys are positions, so its graph is kept): a row gone since holds its
    place as a dead slot (rowid DEAD, no words), new rows are appended."""

    rowids: RowIds
    matrix: Vectors
    memories: list[Memory]
    added: npt.NDArray[np.intp]  # positions to add to the previous index
    dropped: npt.NDArray[np.intp]  # positions to remove from it


def extend(rows: GroupRows, previous: VectorFile) -> Slots | None:
    """Slots that extend `previous`, or None where a whole build is due: rows it should
    hold are not there, or dead slots would be more than MAX_DEAD or a tenth."""
    old = np.asarray(previous.rowids)
    fresh = rows.rowids > previous.info.through
    kept = np.isin(old, rows.rowids)
    if np.count_nonzero(kept) != np.count_nonzero(~fresh):
        return None
    rowids = np.concatenate([np.where(kept, old, DEAD), rows.rowids[fresh]])
    dead = int(np.count_nonzero(rowids == DEAD))
    if dead > min(MAX_DEAD, len(rowids) // 10):
        return None
    where = np.searchsorted(rows.rowids, rowids)
    empty = Memory(id="", memory_id="", memory_type="", content="", timestamp=None)
    memories = [
        rows.memories[w] if r != DEAD else empty for r, w in zip(rowids, where, strict=True)
    ]
    return Slots(
        rowids=rowids,
        matrix=np.concatenate([np.asarray(previous.matrix), rows.matrix[fresh]]),
        memories=memories,
        added=np.arange(len(old), len(rowids)),
        dropped=np.flatnonzero((old != DEAD) & ~kept),
    )


def write_build(
    directory: Path,
    key: tuple[str, str],
    store_id: str,
    rows: GroupRows,
    previous: tuple[Path, Slots] | None = None,
) -> BuildInfo:
    """Write one build of a group into `directory`/<through>, whole or not at all (files go
    to a temporary directory renamed into place): from scratch, or extending the build at
    `previous[0]` by its planned slots `previous[1]` (HNSW: the old graph, updated)."""
    started = time.perf_counter()
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=directory))
    slots = previous[1] if previous else Slots(
        rows.rowids, rows.matrix, list(rows.memories), np.arange(len(rows.rowids)), _NONE
    )  # fmt: skip
    try:
        np.save(staging / ROWIDS, slots.rowids)
        np.save(staging / VECTORS, np.ascontiguousarray(slots.matrix, dtype=np.float32))
        index = _index(previous[0] / HNSW if previous else None, slots)
        index.save(str(staging / HNSW))
        LexicalIndex.of(slots.memories).save(staging / LEXICAL)
        lexical = _files_in(staging / LEXICAL, LEXICAL)
        info = BuildInfo(
            format=FORMAT, store_id=store_id, memory_type=key[0], memory_id=key[1],
            through=int(rows.rowids[-1]), rows=len(rows.rowids), slots=len(slots.rowids),
            dimensions=slots.matrix.shape[1], recall=_self_recall(index, slots),
            build_s=round(time.perf_counter() - started, 3),
            sha256={name: _sha256(staging / name) for name in [ROWIDS, VECTORS, HNSW, *lexical]},
        )  # fmt: skip
        _write_json(staging / BUILD_FILE, asdict(info))
        final = directory / str(info.through)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return info


def remove_older(directory: Path, keep: int) -> None:
    """Drop a group's builds other than `keep` (a reader that mapped one keeps its pages)."""
    for entry in directory.iterdir():
        if entry.name != str(keep):
            shutil.rmtree(entry, ignore_errors=True)


def _index(previous: Path | None, slots: Slots) -> Index:
    """The HNSW index of `slots` (keys: positions): the previous one loaded and updated,
    or a new one."""
    if previous is not None:
        index = Index.restore(str(previous))
        if index is None:
            raise Damaged(f"{previous} is not a usearch index")
        if len(slots.dropped):
            index.remove(slots.dropped)
    else:
        index = Index(
            ndim=slots.matrix.shape[1], metric="cos", dtype="i8",
            connectivity=CONNECTIVITY, expansion_add=EXPANSION_ADD,
        )  # fmt: skip
    if len(slots.added):
        index.add(slots.added, slots.matrix[slots.added], log=False)
    return index


def _self_recall(index: Index, slots: Slots) -> float:
    """recall@10 of the index as searched (candidates re-scored exactly) on a sample of the
    group's own rows as queries, each row's ten nearest other rows the truth. Uniform
    random vectors score ~0.2 here (no neighbourhoods to find); sentence embeddings ~0.99."""
    live = np.flatnonzero(slots.rowids != DEAD)
    sample = np.random.default_rng(0).choice(live, min(RECALL_SAMPLE, len(live)), replace=False)
    matrix, hits, wanted = slots.matrix, 0, 0
    for chunk in np.array_split(sample, max(1, len(sample) // 50)):
        cosines = matrix[chunk] @ matrix.T
        cosines[:, slots.rowids == DEAD] = -np.inf
        for row, scores in zip(chunk, cosines, strict=True):
            scores[row] = -np.inf
            truth = set(top_indexes(scores, 10).tolist())
            index.expansion_search = 2 * MIN_CANDIDATES  # type: ignore[misc]
            found = np.asarray(index.search(matrix[row], MIN_CANDIDATES).keys, dtype=np.intp)
            rescored = found[np.argsort(-(matrix[found] @ matrix[row]), kind="stable")]
            top = [int(k) for k in rescored if k != row][: len(truth)]
            hits, wanted = hits + len(truth & set(top)), wanted + len(truth)
    return float(hits / max(1, wanted))


def _files_in(directory: Path, prefix: str) -> list[str]:
    """The files of a build's subdirectory, named as build.json lists them."""
    if not directory.is_dir():
        return []
    return sorted(f"{prefix}/{path.name}" for path in directory.iterdir())


def _sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _write_json(path: Path, value: dict[str, Any]) -> None:
    with path.open("w") as file:
        json.dump(value, file)
        file.flush()
        os.fsync(file.fileno())
