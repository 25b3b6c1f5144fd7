"""A brute-force retrieval oracle written independently of the worker's code.

It embeds every memory itself with the real model, filters by tenant and type
in plain Python, sorts all cosines, and applies the documented signal formula.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sentence_transformers import SentenceTransformer


@dataclass(frozen=True)
class Expected:
    id: str
    cosine: float
    signal: float


@dataclass
class Oracle:
    records: list[dict[str, Any]]
    model: SentenceTransformer
    matrix: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        texts = [record["content"] for record in self.records]
        self.matrix = self.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)

    def embed(self, query: str) -> np.ndarray:
        return self.model.encode([query.strip()], normalize_embeddings=True)[0]

    def embed_many(self, queries: list[str]) -> np.ndarray:
        return self.model.encode([q.strip() for q in queries], normalize_embeddings=True)

    def nearest(self, query: str, memory_id: str, memory_type: str, k: int) -> list[Expected]:
        """The k memories of one tenant and type closest to `query` by cosine (signal unset)."""
        vector = self.embed(query)
        pool = [
            Expected(record["id"], float(np.dot(self.matrix[row], vector)), 0.0)
            for row, record in enumerate(self.records)
            if record["memory_id"] == memory_id and record["memory_type"] == memory_type
        ]
        return sorted(pool, key=lambda e: -e.cosine)[:k]

    def retrieve(
        self,
        query: str,
        memory_id: str,
        memory_type: str,
        limit: int,
        *,
        now: float,
        weights: dict[str, float] | None = None,
        min_score: float | None = None,
        candidate_factor: int = 4,
        vector: np.ndarray | None = None,
    ) -> list[Expected]:
        """`vector`: the query's embedding when already computed (see `embed_many`)."""
        w = {"relevance": 1.0, "recency": 0.25, "importance": 0.25, "half_life_hours": 168.0}
        w.update(weights or {})
        vector = self.embed(query) if vector is None else vector
        pool = []
        for row, record in enumerate(self.records):
            if record["memory_id"] == memory_id and record["memory_type"] == memory_type:
                pool.append((float(np.dot(self.matrix[row], vector)), record))
        pool.sort(key=lambda pair: -pair[0])
        pool = pool[: limit * candidate_factor]
        ranked = []
        for cosine, record in pool:
            if min_score is not None and cosine < min_score:
                continue
            age_hours = max(0.0, now - record["timestamp"]) / 3600
            signal = (
                w["relevance"] * (1 + cosine) / 2
                + w["recency"] * math.pow(0.5, age_hours / w["half_life_hours"])
                + w["importance"] * record.get("importance", 0.5)
            )
            ranked.append(Expected(record["id"], cosine, signal))
        ranked.sort(key=lambda e: -e.signal)
        return ranked[:limit]


def assert_hits_match(hits: list[Any], expected: list[Expected], tie: float = 1e-5) -> None:
    """Same ids in the same order; scores equal up to the float noise of batched encoding.

    Two memories whose signals differ by less than `tie` may trade places: batching
    pads differently and moves cosines by ~1e-6, enough to reorder a near-tie.
    """
    assert len(hits) == len(expected), ([h.id for h in hits], [e.id for e in expected])
    for position, (hit, want) in enumerate(zip(hits, expected, strict=True)):
        if hit.id != want.id:
            assert abs(hit.signal - want.signal) < tie, (position, hit.id, want.id, expected)
    wanted = {e.id: e for e in expected}
    for hit in hits:
        if hit.id in wanted:
            assert abs(hit.score - wanted[hit.id].cosine) < 1e-4, (hit.id, hit.score)
            assert abs(hit.signal - wanted[hit.id].signal) < 1e-3, (hit.id, hit.signal)
