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
from usearch.index import Index

from worker.store.base import Memory, Vectors
from worker.store.lexical import LexicalIndex

RowIds = npt.NDArray[np.int64]
BUILD_FILE = "build.json"
VECTORS, ROWIDS, HNSW, LEXICAL = "vectors.npy", "rowids.npy", "hnsw.usearch", "lexical"
FORMAT = 1
# HNSW: 16 links a node, 128 candidates kept while inserting (usearch's defaults, measured
# here at recall@10 0.99 after re-scoring on clustered data, README), int8 vectors.
CONNECTIVITY, EXPANSION_ADD = 16, 128
TRUSTED_RECALL = 0.95  # below this on its own rows, an index is not used: exact instead
RECALL_SAMPLE = 200  # rows of the group used as queries to measure that recall
MIN_CANDIDATES = 64  # HNSW candidates per query: 4 x those wanted, at least this many


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
    rows: int
    dimensions: int
    recall: float  # recall@10 of the HNSW index on a sample of the group's own rows
    build_s: float
    sha256: dict[str, str]

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
        for name, digest in info.sha256.items():
            if _sha256(directory / name) != digest:
                raise Damaged(f"{name} does not match its checksum")
        rowids = np.load(directory / ROWIDS, mmap_mode="r")
        matrix = np.load(directory / VECTORS, mmap_mode="r")
        if matrix.shape != (info.rows, info.dimensions) or rowids.shape != (info.rows,):
            raise Damaged(f"shapes {matrix.shape} and {rowids.shape} are not the build's")
        index = Index.restore(str(directory / HNSW), view=True) if info.trusted else None
        if info.trusted and index is None:
            raise Damaged(f"{HNSW} is not a usearch index")
        if index is not None and len(index) != info.rows:
            raise Damaged(f"the index holds {len(index)} rows, the build {info.rows}")
        return cls(info, rowids, matrix, index, LexicalIndex.load(directory / LEXICAL))

    def candidates(self, query: Vectors, count: int, approximate: bool) -> npt.NDArray[np.intp]:
        """Positions of (about) the `count` rows nearest `query`: every row scored, or the
        HNSW index's candidates where `approximate`, the index is trusted and they are
        fewer than the rows (HNSW need not return every row)."""
        wanted = max(4 * count, MIN_CANDIDATES)
        if approximate and self.index is not None and wanted < self.info.rows:
            self.index.expansion_search = max(2 * wanted, 128)  # type: ignore[misc]
            found = self.index.search(query, min(wanted, self.info.rows))
            return np.asarray(found.keys, dtype=np.intp)
        return _top(self.matrix @ query, count) if count else np.zeros(0, np.intp)


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


def write_build(
    directory: Path,
    key: tuple[str, str],
    store_id: str,
    rowids: RowIds,
    matrix: Vectors,
    memories: Sequence[Memory],
) -> BuildInfo:
    """Write one build of a group (rows in rowid order) into `directory`/<through>,
    whole or not at all: files go to a temporary directory renamed into place."""
    started = time.perf_counter()
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=directory))
    try:
        np.save(staging / ROWIDS, rowids)
        np.save(staging / VECTORS, np.ascontiguousarray(matrix, dtype=np.float32))
        recall = _write_index(staging / HNSW, matrix)
        LexicalIndex.of(memories).save(staging / LEXICAL)
        files = [
            ROWIDS,
            VECTORS,
            HNSW,
            *(f"{LEXICAL}/{p.name}" for p in (staging / LEXICAL).iterdir()),
        ]
        info = BuildInfo(
            format=FORMAT, store_id=store_id, memory_type=key[0], memory_id=key[1],
            through=int(rowids[-1]), rows=len(rowids), dimensions=matrix.shape[1],
            recall=recall, build_s=round(time.perf_counter() - started, 3),
            sha256={name: _sha256(staging / name) for name in files},
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


def _write_index(path: Path, matrix: Vectors) -> float:
    """Build and save the HNSW index (keys: row positions); return its recall."""
    index = Index(
        ndim=matrix.shape[1], metric="cos", dtype="i8",
        connectivity=CONNECTIVITY, expansion_add=EXPANSION_ADD,
    )  # fmt: skip
    index.add(np.arange(matrix.shape[0]), matrix, log=False)
    index.save(str(path))
    return _self_recall(index, matrix)


def _self_recall(index: Index, matrix: Vectors) -> float:
    """recall@10 of the index as searched (candidates re-scored exactly) on a sample of the
    group's own rows as queries, each row's ten nearest other rows the truth. Uniform
    random vectors score ~0.2 here (no neighbourhoods to find); sentence embeddings ~0.99."""
    rows = matrix.shape[0]
    sample = np.random.default_rng(0).choice(rows, min(RECALL_SAMPLE, rows), replace=False)
    hits = 0
    for chunk in np.array_split(sample, max(1, len(sample) // 50)):
        cosines = matrix[chunk] @ matrix.T
        for row, scores in zip(chunk, cosines, strict=True):
            truth = set(_top(scores, 11).tolist()) - {int(row)}
            index.expansion_search = 2 * MIN_CANDIDATES  # type: ignore[misc]
            found = np.asarray(index.search(matrix[row], MIN_CANDIDATES).keys, dtype=np.intp)
            rescored = found[np.argsort(-(matrix[found] @ matrix[row]), kind="stable")]
            top = [int(k) for k in rescored if k != row][: len(truth)]
            hits += len(truth & set(top))
    return float(hits / max(1, sum(min(10, rows - 1) for _ in sample)))


def _top(scores: npt.NDArray[np.float32], count: int) -> npt.NDArray[np.intp]:
    count = min(count, scores.shape[0])
    return np.argpartition(-scores, count - 1)[:count]


def _sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _write_json(path: Path, value: dict[str, Any]) -> None:
    with path.open("w") as file:
        json.dump(value, file)
        file.flush()
        os.fsync(file.fileno())
