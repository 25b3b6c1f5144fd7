"""Ranking by memory signal, checked against hand-computed values."""

from __future__ import annotations

import pytest

from schemas.memory import FIELDS, REPLY_FIELDS
from schemas.messages import MemoryHit, MemoryType, RankWeights
from worker.rank import rank
from worker.store.base import Candidate, Memory

NOW = 1_800_000_000.0
HOUR = 3600.0


def candidate(
    id: str, score: float, age_hours: float = 0.0, importance: float | None = None
) -> Candidate:
    memory = Memory(
        id=id,
        memory_id="m",
        memory_type=MemoryType.LONG_TERM,
        content=f"memory {id}",
        timestamp=NOW - age_hours * HOUR,
        importance=importance,
    )
    return Candidate(memory, score)


def test_signal_is_the_documented_formula() -> None:
    hit = rank([candidate("a", 0.6, age_hours=168, importance=0.9)], limit=1, now=NOW)[0]
    # 1.0 * (1 + 0.6) / 2 + 0.25 * 0.5 ** (168 / 168) + 0.25 * 0.9
    assert hit.signal == pytest.approx(0.8 + 0.125 + 0.225)
    assert hit.score == 0.6


def test_missing_importance_counts_as_one_half() -> None:
    hit = rank([candidate("a", 0.0)], limit=1, now=NOW, weights=RankWeights(recency=0))[0]
    assert hit.signal == pytest.approx(0.5 + 0.25 * 0.5)


def test_recency_and_importance_can_outrank_a_slightly_better_cosine() -> None:
    old = candidate("old", 0.70, age_hours=24 * 60, importance=0.1)
    fresh = candidate("fresh", 0.65, age_hours=1, importance=0.9)
    assert [h.id for h in rank([old, fresh], limit=2, now=NOW)] == ["fresh", "old"]
    relevance_only = RankWeights(recency=0, importance=0)
    assert [h.id for h in rank([old, fresh], limit=2, now=NOW, weights=relevance_only)] == [
        "old",
        "fresh",
    ]


def test_limit_and_min_score() -> None:
    pool = [candidate(str(i), score=i / 10) for i in range(10)]
    hits = rank(pool, limit=3, now=NOW, weights=RankWeights(recency=0, importance=0))
    assert [h.id for h in hits] == ["9", "8", "7"]
    kept = rank(pool, limit=10, now=NOW, min_score=0.75)
    assert sorted(h.id for h in kept) == ["8", "9"]


def test_future_timestamps_do_not_exceed_full_recency() -> None:
    hit = rank([candidate("a", 0.0, age_hours=-5)], limit=1, now=NOW)[0]
    assert hit.signal == pytest.approx(0.5 + 0.25 + 0.125)


def test_ties_break_by_cosine_then_id() -> None:
    weights = RankWeights(relevance=0, recency=0, importance=0)
    pool = [candidate("b", 0.1), candidate("a", 0.1), candidate("c", 0.3)]
    assert [h.id for h in rank(pool, limit=3, now=NOW, weights=weights)] == ["c", "a", "b"]


def test_a_hit_carries_the_memory_fields_marked_reply_with_their_types() -> None:
    """MemoryHit is declared by hand (the wire contract, typed, in its own order); this
    holds it to schemas.memory: the same names and types, tags as a list, each optional
    on the wire where a memory may lack it."""
    assert set(MemoryHit.model_fields) == {*REPLY_FIELDS, "score", "lexical", "fused", "signal"}
    for name in REPLY_FIELDS:
        spec, declared = FIELDS[name], MemoryHit.model_fields[name]
        wire = {"tags": list[str] | None}.get(spec.kind, spec.annotation)
        assert declared.annotation == wire, name
        assert declared.is_required() == (spec.required and not spec.optional), name
        assert declared.description in (None, spec.meaning), name


def test_a_hit_carries_every_reply_field_of_its_memory_and_the_requested_type() -> None:
    memory = Memory(
        id="x", memory_id="owner", memory_type="knowledge_base", content="c", timestamp=NOW,
        summary_content="s", role="user", situational_tags=("a", "b"), importance=0.4,
        last_accessed=NOW - HOUR,
    )  # fmt: skip
    [hit] = rank([Candidate(memory, 0.5)], limit=1, now=NOW, memory_type="long_term_memory")
    assert hit.model_dump(exclude={"score", "lexical", "fused", "signal"}) == {
        "id": "x", "memory_type": "long_term_memory", "content": "c", "timestamp": NOW,
        "summary_content": "s", "role": "user", "situational_tags": ["a", "b"], "importance": 0.4,
    }  # fmt: skip
    assert hit.model_validate_json(hit.model_dump_json()) == hit  # valid on the wire
    [stored] = rank([Candidate(memory, 0.5)], limit=1, now=NOW)
    assert stored.memory_type == "knowledge_base" and stored.situational_tags == ["a", "b"]
