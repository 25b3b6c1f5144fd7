"""Exact top-k by cosine: one matrix multiply per group, shared by every exact store."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from worker.errors import StoreMismatch
from worker.store.base import Candidate, Memory, Vectors


def top_k(matrix: Vectors, queries: Vectors, ks: Sequence[int]) -> list[list[tuple[int, float]]]:
    """(row index, cosine) of the best `ks[i]` rows of `matrix` for `queries[i]`.

    Both sides are L2-normalised, so the dot product is the cosine. Ties are broken
    by row index so results are deterministic.
    """
    if matrix.shape[0] == 0:
        return [[] for _ in ks]
    scores = queries @ matrix.T
    ranked = []
    for row, k in zip(scores, ks, strict=True):
        k = min(k, row.shape[0])
        picked = np.argpartition(-row, k - 1)[:k]
        order = np.lexsort((picked, -row[picked]))
        ranked.append([(int(picked[i]), float(row[picked[i]])) for i in order])
    return ranked


def check_dimensions(matrix: Vectors, queries: Vectors) -> None:
    if matrix.shape[0] and matrix.shape[1] != queries.shape[1]:
        raise StoreMismatch(
            f"stored embeddings have {matrix.shape[1]} dimensions, the model gives "
            f"{queries.shape[1]}: re-ingest with the worker's model"
        )


def score_group(
    memories: Sequence[Memory], matrix: Vectors, queries: Vectors, ks: Sequence[int]
) -> list[list[Candidate]]:
    """Candidates per query of a group whose memories' embeddings are `matrix`."""
    check_dimensions(matrix, queries)
    return [
        [Candidate(memories[index], score) for index, score in hits]
        for hits in top_k(matrix, queries, ks)
    ]
