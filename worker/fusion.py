"""Relevance by search mode: one number in [0, 1] per candidate, which the memory
signal then weighs with recency and importance.

- vector: (1 + cosine) / 2, as before hybrid search existed;
- lexical: BM25 min-max normalised over the lexical list;
- hybrid, method score: each list's scores min-max normalised over that list,
  weighted and summed (a candidate missing from a list gets 0 from it);
- hybrid, method rank: reciprocal rank fusion, w / (k + rank) summed over the
  lists, divided by its largest possible value 1 / (k + 1).

Lists, not whole score vectors, are fused: what an exact store and Atlas
($vectorSearch and $search, each a top-N list) can both give.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from schemas.messages import Fusion
from worker.store.base import Candidate

DEFAULT_FUSION = Fusion()
_Value = Callable[[Candidate], float | None]  # a candidate's score in one list, if a member


def relevance(candidates: Sequence[Candidate], search: str, fusion: Fusion | None) -> list[float]:
    """Each candidate's relevance in [0, 1] under `search` (vector, lexical, hybrid)."""
    if search == "vector":
        return [(1.0 + c.score) / 2.0 for c in candidates]
    fusion = fusion or DEFAULT_FUSION
    weight = 1.0 if search == "lexical" else fusion.lexical_weight
    if fusion.method == "rank" and search == "hybrid":
        k = fusion.rank_constant
        top = 1.0 / (k + 1)
        return [
            ((1 - weight) * _reciprocal(c.vector_rank, k) + weight * _reciprocal(c.lexical_rank, k))
            / top
            for c in candidates
        ]
    vector = _normalised(candidates, lambda c: c.score if c.vector_rank else None)
    lexical = _normalised(candidates, lambda c: c.lexical if c.lexical_rank else None)
    return [(1 - weight) * v + weight * w for v, w in zip(vector, lexical, strict=True)]


def _reciprocal(rank: int | None, k: int) -> float:
    return 0.0 if rank is None else 1.0 / (k + rank)


def _normalised(candidates: Sequence[Candidate], value: _Value) -> list[float]:
    """Min-max over the list's members (a list of one, or of equal scores: 1); 0 for a
    candidate that is not a member."""
    values = [value(c) for c in candidates]
    members = [v for v in values if v is not None]
    if not members:
        return [0.0] * len(values)
    low, high = min(members), max(members)
    span = high - low
    return [0.0 if v is None else (1.0 if span <= 1e-12 else (v - low) / span) for v in values]
