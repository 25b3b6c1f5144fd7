"""`ranking: "memorizz"` orders candidates exactly as memorizz's own scoring does.

The oracle is memorizz itself (a pinned test dependency): its `score_candidates`
with its default `RetrievalScoring`, called on the same candidates.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.rank import memorizz_scores, rank
from worker.store.base import Candidate, Memory

memorizz_scoring = pytest.importorskip("memorizz.memagent.utils.context_dedup")
NOW = 1_790_000_000.0


def candidates(seed: int, count: int) -> list[Candidate]:
    """Distinct cosines, times over ~a year (some missing), importances (some missing),
    and a recorded last recall on some."""
    rng = random.Random(seed)
    made = []
    for i in range(count):
        timestamp = None if rng.random() < 0.2 else NOW - rng.uniform(0, 365 * 86400)
        accessed = NOW - rng.uniform(0, 30 * 86400) if rng.random() < 0.3 else None
        importance = None if rng.random() < 0.3 else rng.random()
        memory = Memory(f"m{i}", "t", "knowledge_base", f"text {i}", timestamp,
                        importance=importance, last_accessed=accessed)  # fmt: skip
        made.append(Candidate(memory, rng.uniform(-0.2, 0.9)))
    return made


def memorizz_order(given: list[Candidate]) -> tuple[list[str], dict[str, float]]:
    rows: list[dict[str, Any]] = [
        {"id": c.memory.id, "timestamp": c.memory.timestamp, "importance": c.memory.importance,
         "last_accessed": c.memory.last_accessed, "_raw_relevance": c.score}
        for c in given
    ]  # fmt: skip
    memorizz_scoring.score_candidates(rows, scoring=memorizz_scoring.RetrievalScoring(), now=NOW)
    rows.sort(key=lambda row: -row["_relevance"])
    return [row["id"] for row in rows], {row["id"]: row["_relevance"] for row in rows}


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(1, 40))
def test_memorizz_ranking_reproduces_memorizz_scores_and_order(seed: int, count: int) -> None:
    pool = candidates(seed, count)
    expected_order, expected_scores = memorizz_order(pool)
    ours = memorizz_scores(pool, NOW)
    for candidate, score in zip(pool, ours, strict=True):
        assert score == pytest.approx(expected_scores[candidate.memory.id], abs=1e-9)
    hits = rank(pool, limit=count, now=NOW, ranking="memorizz")
    # memorizz's order, up to exact ties (with few candidates min-max scores tie often,
    # e.g. 0.5 and 0.5 for two, and each sort breaks them its own way)
    assert sorted(hit.id for hit in hits) == sorted(expected_order)
    ours_by_their_score = [expected_scores[hit.id] for hit in hits]
    assert all(a >= b - 1e-9 for a, b in itertools.pairwise(ours_by_their_score))


def test_the_signal_stays_the_default_ranking() -> None:
    pool = candidates(7, 20)
    default = [hit.id for hit in rank(pool, limit=20, now=NOW)]
    assert default != memorizz_order(pool)[0]
