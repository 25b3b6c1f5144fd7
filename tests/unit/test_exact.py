"""Exact top-k by cosine against a brute-force sort."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.store.base import SearchGroup
from worker.store.exact import search_group


def normalised(rng: np.random.Generator, rows: int, dims: int) -> np.ndarray:
    matrix = rng.standard_normal((rows, dims)).astype(np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(0, 60),
    queries=st.integers(1, 5),
    k=st.integers(1, 80),
    seed=st.integers(0, 2**32 - 1),
)
def test_top_k_equals_a_full_sort(rows: int, queries: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    matrix = normalised(rng, rows, 16) if rows else np.zeros((0, 16), np.float32)
    vectors = normalised(rng, queries, 16)
    ks = [max(1, k - i) for i in range(queries)]
    found = search_group(matrix, None, SearchGroup("t", "o", vectors, tuple(ks)))
    got = [[(index, score) for index, score, *_ in per_query] for per_query in found]
    for query, wanted_k, hits in zip(vectors, ks, got, strict=True):
        cosines = [float(np.dot(row, query)) for row in matrix]
        expected = sorted(cosines, reverse=True)[:wanted_k]
        indices = [index for index, _ in hits]
        # Compared by score: rows within float error of each other may come in either order.
        assert len(set(indices)) == len(indices) == len(expected)
        assert np.allclose([cosines[i] for i in indices], expected, atol=1e-5)
        for index, score in hits:
            assert abs(score - cosines[index]) < 1e-5
