"""`process` with the real model and the real SQLite store, and no broker; the numpy
oracle judges the hits."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from schemas.messages import ErrorCode, MemoryType, RetrievalRequest
from tests.oracle import Oracle, assert_hits_match
from tests.stores import WrappedStore
from worker.embedding.embedder import Embedder
from worker.errors import StoreMismatch, StoreUnavailable
from worker.outcomes import Answered, Crashed, Expired, Outcome, Refused
from worker.pipeline import Dependencies, process, process_isolated
from worker.store import GroupResult, SearchGroup, SQLiteStore

LIMITS = {"long_term_memory": 3, "procedural_memory": 2}


@dataclass(frozen=True)
class Queued:
    request: RetrievalRequest
    received: float


def queued(request_id: str, query: str, memory_id: str, **extra: Any) -> Queued:
    request = RetrievalRequest.model_validate(
        {"request_id": request_id, "query": query, "memory_id": memory_id, "limits": LIMITS} | extra
    )
    return Queued(request, time.monotonic())


def in_ms(seconds: float) -> int:
    return int((time.time() + seconds) * 1000)


class FaultyStore(WrappedStore):
    """The real store, except that one tenant is poison and the first `down` calls fail."""

    def __init__(self, store: SQLiteStore, *, down: int = 0, error: Exception | None = None):
        super().__init__(store)
        self._down = down
        self._error = error or StoreUnavailable("store restarting")
        self.calls = 0

    async def search(self, groups: Sequence[SearchGroup]) -> list[GroupResult]:
        self.calls += 1
        if any(group.owner == "poison:tenant" for group in groups):
            raise RuntimeError("a bug that only this tenant triggers")
        if self.calls <= self._down:
            raise self._error
        return await self.store.search(groups)


def stages(embedder: Embedder, store: Any, **overrides: Any) -> Dependencies:
    return Dependencies(embed=embedder.embed, store=store, worker_id="w-test", **overrides)


def by_id(batch: Sequence[Queued], outcomes: Sequence[Outcome]) -> dict[str, Outcome]:
    assert len(outcomes) == len(batch)
    return {q.request.request_id: o for q, o in zip(batch, outcomes, strict=True)}


def code_of(outcome: Outcome) -> ErrorCode | None:
    assert isinstance(outcome, Answered | Refused | Expired), outcome
    return outcome.response.error.code if outcome.response.error else None


async def test_good_expired_and_poison_requests_each_get_their_outcome(
    embedder: Embedder,
    demo_store: SQLiteStore,
    demo_questions: list[dict[str, str]],
    oracle: Oracle,
) -> None:
    good = [queued(f"good{i}", q["query"], q["memory_id"]) for i, q in enumerate(demo_questions)]
    late = queued("late", "anything", "health-coach:sam", deadline_ms=1_000)
    poison = queued("poison", "anything at all", "poison:tenant")
    batch = [good[0], late, poison, *good[1:]]

    outcomes = by_id(
        batch, await process_isolated(batch, stages(embedder, FaultyStore(demo_store)))
    )

    assert isinstance(outcomes["late"], Expired) and code_of(outcomes["late"]) == ErrorCode.EXPIRED
    assert isinstance(outcomes["poison"], Crashed)
    now = time.time()
    for item, question in zip(good, demo_questions, strict=True):
        outcome = outcomes[item.request.request_id]
        assert isinstance(outcome, Answered) and outcome.response.status == "ok"
        assert outcome.response.worker_id == "w-test"
        for memory_type, limit in LIMITS.items():
            expected = oracle.retrieve(
                question["query"], question["memory_id"], memory_type, limit, now=now
            )
            assert_hits_match(outcome.response.results[MemoryType(memory_type)], expected)


async def test_a_whole_batch_is_answered_in_one_pass_with_its_timings(
    embedder: Embedder, demo_store: SQLiteStore, demo_questions: list[dict[str, str]]
) -> None:
    batch = [queued(f"q{i}", q["query"], q["memory_id"]) for i, q in enumerate(demo_questions)]
    batch.append(queued("late", "anything", "health-coach:sam", deadline_ms=1_000))

    outcomes = await process(batch, stages(embedder, demo_store))

    answered = [o for o in outcomes if isinstance(o, Answered)]
    assert len(answered) == len(demo_questions)
    for outcome in answered:
        response = outcome.response
        assert response.batch_size == len(demo_questions)  # the expired one took no part
        timings = response.timings
        assert timings.queue_ms >= 0 and timings.embed_ms > 0 and timings.search_ms > 0
        assert timings.total_ms >= timings.queue_ms + timings.embed_ms + timings.search_ms - 1e-6
    assert isinstance(outcomes[-1], Expired)


async def test_a_poison_request_makes_process_raise_and_isolation_keeps_the_rest(
    embedder: Embedder, demo_store: SQLiteStore
) -> None:
    batch = [queued("ok", "knee pain", "health-coach:sam"), queued("bad", "x", "poison:tenant")]
    store = FaultyStore(demo_store)
    try:
        await process(batch, stages(embedder, store))
    except RuntimeError:
        pass
    else:
        raise AssertionError("process hid a crash that isolation must see")
    outcomes = by_id(batch, await process_isolated(batch, stages(embedder, store)))
    assert isinstance(outcomes["ok"], Answered) and outcomes["ok"].response.status == "ok"
    assert isinstance(outcomes["bad"], Crashed)


async def test_a_short_deadline_in_the_batch_shortens_no_one_elses(
    embedder: Embedder, demo_store: SQLiteStore, demo_questions: list[dict[str, str]]
) -> None:
    """150 ms deadlines beside none, on a healthy store: no false store_unavailable."""
    soon = in_ms(0.15)
    batch = [
        queued(f"{kind}{i}", q["query"], q["memory_id"], **({"deadline_ms": soon} if kind else {}))
        for i, q in enumerate(demo_questions * 3)
        for kind in ("", "soon")
    ]

    outcomes = by_id(batch, await process(batch, stages(embedder, demo_store)))

    for request_id, outcome in outcomes.items():
        if request_id.startswith("soon"):  # ok, or expired if the model was slower than 150 ms
            assert code_of(outcome) in (None, ErrorCode.EXPIRED), outcome
        else:
            assert isinstance(outcome, Answered) and outcome.response.status == "ok", outcome


async def test_each_request_retries_the_store_until_its_own_deadline(
    embedder: Embedder, demo_store: SQLiteStore
) -> None:
    """The store fails its first three calls (0.35 s of backoff): a request with 150 ms
    left gives up alone; the requests without a deadline are served."""
    batch = [
        queued("hurried", "knee pain", "health-coach:sam", deadline_ms=in_ms(0.15)),
        queued("patient1", "knee pain", "health-coach:sam"),
        queued("patient2", "hotel in Lisbon", "travel-concierge:maya"),
    ]
    store = FaultyStore(demo_store, down=3)

    outcomes = by_id(batch, await process(batch, stages(embedder, store, store_retry_s=5)))

    hurried = outcomes["hurried"]
    assert code_of(hurried) in (ErrorCode.STORE_UNAVAILABLE, ErrorCode.EXPIRED)
    if code_of(hurried) == ErrorCode.STORE_UNAVAILABLE:
        assert isinstance(hurried, Answered)
        assert hurried.response.error is not None and hurried.response.error.retryable
    for patient in ("patient1", "patient2"):
        outcome = outcomes[patient]
        assert isinstance(outcome, Answered) and outcome.response.status == "ok"
    assert store.calls > 3  # retried past the three failures (one call per memory type)


async def test_a_store_that_stays_down_is_answered_store_unavailable_in_time(
    embedder: Embedder, demo_store: SQLiteStore
) -> None:
    batch = [queued("a", "knee pain", "health-coach:sam"), queued("b", "tea", "m")]
    store = FaultyStore(demo_store, down=10**6)
    started = time.monotonic()

    outcomes = await process(batch, stages(embedder, store, store_retry_s=0.5))

    assert time.monotonic() - started < 5  # bounded by store_retry_s plus one backoff
    for outcome in outcomes:
        assert isinstance(outcome, Answered) and code_of(outcome) == ErrorCode.STORE_UNAVAILABLE


async def test_a_final_store_error_answers_every_request_without_retrying(
    embedder: Embedder, demo_store: SQLiteStore
) -> None:
    store = FaultyStore(demo_store, down=10**6, error=StoreMismatch("384 != 256 dimensions"))
    batch = [queued("a", "knee pain", "health-coach:sam"), queued("b", "tea", "m")]

    outcomes = await process(batch, stages(embedder, store))

    assert store.calls == 1  # one attempt: one store call for the whole batch
    for outcome in outcomes:
        assert isinstance(outcome, Answered) and code_of(outcome) == ErrorCode.INTERNAL
        assert outcome.response.error is not None and not outcome.response.error.retryable


SETTINGS = [
    ("vector", None),
    ("lexical", None),
    ("hybrid", {"method": "score", "lexical_weight": 0.3}),
    ("hybrid", {"method": "rank", "lexical_weight": 0.5, "rank_constant": 10}),
]


@pytest.mark.parametrize(("search", "fusion"), SETTINGS, ids=["vector", "lexical", "score", "rank"])
async def test_every_search_mode_equals_the_oracle(
    embedder: Embedder,
    demo_store: SQLiteStore,
    demo_questions: list[dict[str, str]],
    oracle: Oracle,
    search: str,
    fusion: dict[str, Any] | None,
) -> None:
    """BM25 by its formula over the owner's rows, the documented fusion and the signal,
    all computed in the test, against what the pipeline answers."""
    extra: dict[str, Any] = {"search": search} | ({"fusion": fusion} if fusion else {})
    batch = [
        queued(f"q{i}", q["query"], q["memory_id"], **extra) for i, q in enumerate(demo_questions)
    ]
    outcomes = await process(batch, stages(embedder, demo_store))
    now = time.time()
    for outcome, question in zip(outcomes, demo_questions, strict=True):
        assert isinstance(outcome, Answered) and outcome.response.status == "ok"
        for memory_type, limit in LIMITS.items():
            expected = oracle.retrieve(
                question["query"], question["memory_id"], memory_type, limit, now=now,
                search=search, fusion=fusion,
            )  # fmt: skip
            hits = outcome.response.results[MemoryType(memory_type)]
            assert_hits_match(hits, expected)
            wanted = {e.id: e for e in expected}
            for hit in hits:
                if hit.id in wanted and search != "vector":
                    assert hit.lexical is not None
                    assert abs(hit.lexical - wanted[hit.id].lexical) < 1e-4
                    assert hit.fused is not None and 0.0 <= hit.fused <= 1.0 + 1e-9
