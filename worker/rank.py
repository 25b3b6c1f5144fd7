"""Ranking by memory signal: relevance, recency and importance.

    signal = w_rel * (1 + cos) / 2 + w_rec * 0.5 ** (age_hours / half_life) + w_imp * importance

Candidates arrive as the best `limit x candidate_factor` by cosine; the signal
re-orders them and the top `limit` are returned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from schemas.memory import FIELDS, REPLY_FIELDS
from schemas.messages import Fusion, MemoryHit, RankWeights
from worker.fusion import relevance
from worker.store.base import Candidate, Memory

DEFAULT_WEIGHTS = RankWeights()
DEFAULT_IMPORTANCE = 0.5


def memory_signal(
    candidate: Candidate, now: float, weights: RankWeights, relevance: float | None = None
) -> float:
    """The signal; `relevance` in [0, 1] as the search mode made it (vector search, or
    none given: (1 + cos) / 2)."""
    memory = candidate.memory
    if memory.timestamp is None:  # no time stored: no recency penalty
        recency = 1.0
    else:
        age_hours = max(0.0, now - memory.timestamp) / 3600.0
        recency = math.pow(0.5, age_hours / weights.half_life_hours)
    importance = DEFAULT_IMPORTANCE if memory.importance is None else memory.importance
    if relevance is None:
        relevance = (1.0 + candidate.score) / 2.0
    return (
        weights.relevance * relevance + weights.recency * recency + weights.importance * importance
    )


def rank(
    candidates: Sequence[Candidate],
    *,
    limit: int,
    now: float,
    weights: RankWeights | None = None,
    min_score: float | None = None,
    memory_type: str | None = None,
    ranking: str = "signal",
    search: str = "vector",
    fusion: Fusion | None = None,
) -> list[MemoryHit]:
    """The top `limit` candidates by signal, best first (ties: higher cosine, then id).
    `memory_type`: the name the request used (its hits carry it), if not the stored one.
    `ranking="memorizz"`: memorizz's scoring instead of the signal (weights unused).
    `search` and `fusion` say what relevance is (worker.fusion)."""
    weights = weights or DEFAULT_WEIGHTS
    relevances = relevance(candidates, search, fusion)
    kept = [
        (r, c)
        for r, c in zip(relevances, candidates, strict=True)
        if min_score is None or c.score >= min_score
    ]
    if ranking == "memorizz":
        signals = memorizz_scores([c for _, c in kept], now, [r for r, _ in kept])
    else:
        signals = [memory_signal(c, now, weights, r) for r, c in kept]
    scored = sorted(
        zip(signals, kept, strict=True),
        key=lambda pair: (-pair[0], -pair[1][1].score, pair[1][1].memory.id),
    )
    fused = search != "vector"
    return [
        _hit(candidate, signal, memory_type, r if fused else None)
        for signal, (r, candidate) in scored[:limit]
    ]


# memorizz 0.17's RetrievalScoring defaults (Generative Agents: Park et al. 2023).
MEMORIZZ_DECAY_PER_HOUR = 0.995
MEMORIZZ_DEFAULT_IMPORTANCE = 0.5


def memorizz_scores(
    candidates: Sequence[Candidate], now: float, relevances: Sequence[float] | None = None
) -> list[float]:
    """memorizz's retrieval score over one candidate set: recency (0.995 per hour since
    the last recall, else since creation; no time: 1), importance (0.5 when unset) and
    relevance (cosine), each min-max normalised over the set when there are two or more
    (a constant signal maps to 1), weighted equally and averaged."""
    recency = [
        1.0 if anchor is None else MEMORIZZ_DECAY_PER_HOUR ** (max(0.0, now - anchor) / 3600.0)
        for anchor in (_recency_anchor(c.memory) for c in candidates)
    ]
    importance = [
        MEMORIZZ_DEFAULT_IMPORTANCE if c.memory.importance is None else c.memory.importance
        for c in candidates
    ]
    relevance = list(relevances) if relevances is not None else [c.score for c in candidates]
    if len(candidates) > 1:
        recency, importance, relevance = map(_min_max, (recency, importance, relevance))
    return [(r + i + v) / 3.0 for r, i, v in zip(recency, importance, relevance, strict=True)]


def _recency_anchor(memory: Memory) -> float | None:
    return memory.timestamp if memory.last_accessed is None else memory.last_accessed


def _min_max(values: list[float]) -> list[float]:
    low, high = min(values), max(values)
    if high - low <= 1e-12:
        return [1.0] * len(values)
    return [(value - low) / (high - low) for value in values]


TAG_FIELDS = tuple(name for name in REPLY_FIELDS if FIELDS[name].kind == "tags")


def _hit(
    candidate: Candidate, signal: float, memory_type: str | None, fused: float | None
) -> MemoryHit:
    memory = candidate.memory
    values = {name: getattr(memory, name) for name in REPLY_FIELDS}  # the hit's memory fields
    for name in TAG_FIELDS:  # a tuple in the store, a list on the wire
        values[name] = list(values[name]) if values[name] else None
    if memory_type:
        values["memory_type"] = memory_type
    # model_construct: the fields come from the store and the ranker, not from a message,
    # and validating ~15 hits per request was 2% of the worker's time under load.
    return MemoryHit.model_construct(
        **values, score=candidate.score, lexical=candidate.lexical, fused=fused, signal=signal
    )
