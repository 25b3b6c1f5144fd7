"""Exact search, shared by every exact store: top-k by cosine (one matrix multiply per
group) and, where asked, top-k by BM25 over the group's lexical index; a query's
candidates are the union of its two lists, each with both scores and its ranks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from worker.errors import StoreMismatch
from worker.store.base import Candidate, Memory, SearchGroup, Vectors
from worker.store.lexical import LexicalIndex

Found = tuple[int, float, int | None, float | None, int | None]
"""(row index, cosine, vector rank, BM25 or None, lexical rank): one candidate of a query."""


def best(scores: np.ndarray, k: int) -> list[int]:
    """Indexes of the `k` highest scores, best first, ties broken by index (so results are
    deterministic)."""
    return [int(i) for i in top_indexes(scores, k)]


def top_indexes(scores: np.ndarray, k: int) -> np.ndarray:
    """`best` as an array: every score tied with the k-th is a candidate, so the cut at k
    keeps the lowest indexes among ties (a bare argpartition keeps arbitrary ones)."""
    k = min(k, scores.shape[0])
    if k <= 0:
        return np.zeros(0, dtype=np.intp)
    kth = np.partition(scores, scores.shape[0] - k)[scores.shape[0] - k]
    picked = np.flatnonzero(scores >= kth)
    return picked[np.lexsort((picked, -scores[picked]))[:k]]


def search_group(
    matrix: Vectors, lexical: LexicalIndex | None, group: SearchGroup
) -> list[list[Found]]:
    """Every query's candidates in a group whose rows are `matrix` (and `lexical`, built
    from the same rows in the same order, where any query wants lexical candidates): its
    best `ks[i]` by cosine, then those of its best `lexical_ks[i]` by BM25 (words that
    match: a score above 0) that the first list does not hold."""
    check_dimensions(matrix, group.vectors)
    if matrix.shape[0] == 0:
        return [[] for _ in group.ks]
    cosines = group.vectors @ matrix.T  # both sides are L2-normalised: dot = cosine
    found = []
    for query, (row, k) in enumerate(zip(cosines, group.ks, strict=True)):
        vector = best(row, k)
        bm25 = lexical.scores(group.queries[query]) if lexical and group.lexical_k(query) else None
        words = (
            [] if bm25 is None else [i for i in best(bm25, group.lexical_k(query)) if bm25[i] > 0]
        )
        found.append([
            (index, float(row[index]), vector_rank,
             None if bm25 is None else float(bm25[index]), lexical_rank)
            for index, vector_rank, lexical_rank in union(vector, words)
        ])  # fmt: skip
    return found


def union(vector: list[int], words: list[int]) -> list[tuple[int, int | None, int | None]]:
    """A query's candidates: its vector list, then the lexical list's rows it lacks, each
    with its 1-based rank in either list (None: not in it)."""
    vector_rank = {item: rank for rank, item in enumerate(vector, start=1)}
    lexical_rank = {item: rank for rank, item in enumerate(words, start=1)}
    merged = vector + [item for item in words if item not in vector_rank]
    return [(item, vector_rank.get(item), lexical_rank.get(item)) for item in merged]


def dimension_mismatch(found: dict[str, list[int]], dimensions: int, model: str) -> str:
    """One line for stored embeddings of another size than the embedder's, saying how to
    serve them: with the model (or provider) that embedded them."""
    where = ", ".join(f"{name}: {'/'.join(map(str, sizes))}" for name, sizes in found.items())
    return (
        f"stored embeddings do not fit the embedder: {where} dimensions, but {model} makes "
        f"{dimensions}. Serve this data with the model that embedded it: RECALLQ_EMBED_MODEL "
        "for a local model; memorizz's default, OpenAI text-embedding-3-small at 256, is "
        "RECALLQ_EMBED_PROVIDER=openai, RECALLQ_EMBED_MODEL=text-embedding-3-small, "
        "RECALLQ_EMBED_DIMENSIONS=256 (README, Embedding providers)"
    )


def check_dimensions(matrix: Vectors, queries: Vectors) -> None:
    if matrix.shape[0] and matrix.shape[1] != queries.shape[1]:
        raise StoreMismatch(
            f"stored embeddings have {matrix.shape[1]} dimensions, the model gives "
            f"{queries.shape[1]}: re-ingest with the worker's model"
        )


def candidate(memory: Memory, found: Found, attached: str | None = None) -> Candidate:
    _, cosine, vector_rank, bm25, lexical_rank = found
    return Candidate(memory, cosine, vector_rank, bm25, lexical_rank, attached)


def score_group(
    memories: Sequence[Memory],
    matrix: Vectors,
    group: SearchGroup,
    attached: Sequence[str | None] = (),
) -> list[list[Candidate]]:
    """Candidates per query of a group whose memories' embeddings are `matrix` (and whose
    attached-field values are `attached`, where the group searched attached ids). The
    lexical index is built over all of them: with attached ids, BM25's statistics are
    those of the owner's and the attached rows together, the union searched."""
    lexical = LexicalIndex.of(memories) if any(group.lexical_ks) else None
    return [
        [candidate(memories[f[0]], f, attached[f[0]] if attached else None) for f in per_query]
        for per_query in search_group(matrix, lexical, group)
    ]
