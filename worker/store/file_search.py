"""Searching a large group: its vector file's candidates, plus the rows written since
the file was built (the delta, scored exactly), less the rows gone since.

The lists come out as the exact search's do (worker.store.exact): per query, its best
`ks[i]` by cosine, then its best `lexical_ks[i]` by BM25 that the first list lacks,
each with both scores and its ranks. Every candidate's rowid is checked against the
group's rows in the search's own read transaction before it is ranked, so nothing an
index holds (a row replaced since, a damaged entry) is ever served.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from worker.store.base import SearchGroup, Vectors
from worker.store.exact import Found, check_dimensions, top_indexes, union
from worker.store.vector_files import RowIds, VectorFile

_NONE = np.zeros(0, dtype=np.intp)
Present = Callable[[Iterable[int]], set[int]]
"""The rowids, of those given, that are rows of the group now."""


@dataclass(frozen=True)
class Delta:
    """The group's rows written after its vector file's `through`, in rowid order."""

    rowids: RowIds
    matrix: Vectors


@dataclass
class _Listed:
    """One query's candidates before the rowid check: rowid → (cosine, BM25)."""

    cosine: dict[int, float]
    bm25: dict[int, float]


def search_file(
    file: VectorFile,
    delta: Delta,
    group: SearchGroup,
    *,
    approximate: bool,
    spare: int,
    present: Present,
) -> tuple[RowIds, list[list[Found]]]:
    """Every query's candidates: (rowids, per query its Found lists indexing them).
    `spare`: rows of the file gone since it was built; each list asks for that many more,
    so that dropping them still leaves its full count."""
    check_dimensions(file.matrix, group.vectors)
    counts = [k + spare if k else 0 for k in group.ks]
    asked = [query for query, count in enumerate(counts) if count]
    positions = dict.fromkeys(range(len(counts)), _NONE)
    if asked:
        nearest = file.candidates(group.vectors[asked], [counts[q] for q in asked], approximate)
        positions.update(zip(asked, nearest, strict=True))
    listed = [
        _listed(file, delta, group, query, spare, positions[query])
        for query in range(len(group.ks))
    ]
    alive = present({rowid for one in listed for rowid in (*one.cosine, *one.bm25)})
    ranked = [_ranked(one, alive, group, query) for query, one in enumerate(listed)]
    ids = sorted({rowid for lists in ranked for rowid, *_ in lists})
    slot = {rowid: index for index, rowid in enumerate(ids)}
    found: list[list[Found]] = [
        [(slot[rowid], cosine, vector_rank, bm25, lexical_rank)
         for rowid, cosine, vector_rank, bm25, lexical_rank in lists]
        for lists in ranked
    ]  # fmt: skip
    return np.asarray(ids, dtype=np.int64), found


def _listed(
    file: VectorFile,
    delta: Delta,
    group: SearchGroup,
    query: int,
    spare: int,
    positions: npt.NDArray[np.intp],
) -> _Listed:
    """A query's over-asked candidates: vector ones from the file (`positions`: every row
    scored, or the index's) and the delta, lexical ones from the file's lexical index."""
    vector = group.vectors[query]
    k, lexical_k = group.ks[query], group.lexical_k(query)
    cosine: dict[int, float] = {}
    place: dict[int, int] = {}  # a file row's position, by rowid (delta rows have none)
    if k:
        _scored(file, positions, vector, cosine, place)
        if len(delta.rowids):
            cosines = (delta.matrix @ vector).tolist()
            cosine.update(zip(delta.rowids.tolist(), cosines, strict=True))
    bm25: dict[int, float] = {}
    if lexical_k:
        scores = file.lexical.scores(group.queries[query])
        matching = np.flatnonzero(scores > 0)  # few of a million rows, for most queries
        _scored(file, matching[top_indexes(scores[matching], lexical_k + spare)], vector,
                cosine, place)  # fmt: skip
        # A delta row is in no lexical index until the next build: BM25 0.
        bm25 = {r: float(scores[place[r]]) if r in place else 0.0 for r in cosine}
    return _Listed(cosine, bm25)


def _ranked(
    one: _Listed, alive: set[int], group: SearchGroup, query: int
) -> list[tuple[int, float, int | None, float | None, int | None]]:
    """The query's lists among rows that exist, cut to size and ranked, as Found with the
    rowid in place of the row index."""
    vector = _best({r: c for r, c in one.cosine.items() if r in alive}, group.ks[query])
    words = _best(
        {r: s for r, s in one.bm25.items() if r in alive and s > 0}, group.lexical_k(query)
    )
    lexical = bool(group.lexical_k(query))
    return [
        (rowid, one.cosine[rowid], vector_rank,
         one.bm25.get(rowid, 0.0) if lexical else None, lexical_rank)
        for rowid, vector_rank, lexical_rank in union(vector, words)
    ]  # fmt: skip


def _best(scores: dict[int, float], k: int) -> list[int]:
    """The `k` best rowids by score, ties to the smaller rowid (the exact path's order)."""
    return sorted(scores, key=lambda rowid: (-scores[rowid], rowid))[:k]


def _scored(
    file: VectorFile,
    positions: npt.NDArray[np.intp],
    vector: Vectors,
    cosine: dict[int, float],
    place: dict[int, int],
) -> None:
    """Add file rows' exact cosines (from the float32 vectors) and positions, by rowid."""
    positions = np.sort(positions)  # mapped pages in file order
    cosines: list[float] = (file.matrix[positions] @ vector).tolist() if len(positions) else []
    for position, rowid, value in zip(
        positions.tolist(), file.rowids[positions].tolist(), cosines, strict=True
    ):
        cosine[rowid], place[rowid] = value, position
