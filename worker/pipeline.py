"""The pipeline: one batch in, one outcome per request out, in order.

    drop expired -> embed -> search and rank -> build responses

A batch is one embedding call (the worker cuts batches to the provider's limits), so
when the provider gives no vectors in time, `embedding_unavailable` answers exactly
the requests of that call.

`process` needs no broker: it takes requests with their arrival times and
returns what became of each (`worker.outcomes`); `worker.reply.Settler` sends
the replies and settles the messages. `process_isolated` wraps it so that one
poison request cannot take its batch-mates down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from schemas.messages import (
    ErrorInfo,
    MemoryHit,
    RetrievalRequest,
    RetrievalResponse,
    SearchMode,
    Timings,
)
from worker.access.profiles import Profile
from worker.deadlines import expired, past_deadline
from worker.errors import EmbeddingUnavailable, RecallqError
from worker.metrics import Metrics
from worker.outcomes import Answered, Crashed, Expired, Outcome
from worker.retry import Deadline, deadlines_for, with_deadlines
from worker.search import search_and_rank
from worker.store.base import MemoryStore, Vectors

log = structlog.get_logger(__name__)


class Embed(Protocol):
    def __call__(self, texts: Sequence[str], deadline: float | None = None) -> Awaitable[Vectors]:
        """One row per text; `deadline` (epoch seconds) bounds a remote provider's retries."""
        ...


Hits = dict[str, list[MemoryHit]]


class Queued(Protocol):
    """What `process` needs of a delivery."""

    @property
    def request(self) -> RetrievalRequest: ...

    @property
    def received(self) -> float: ...  # time.monotonic() at arrival


@dataclass(frozen=True)
class Dependencies:
    """The model, the store, and how the pipeline uses them."""

    embed: Embed
    store: MemoryStore
    worker_id: str = ""
    candidate_factor: int = 4
    search: SearchMode = "hybrid"  # for requests that name no search mode
    store_retry_s: float = 10.0
    embed_retry_s: float = (
        10.0  # how long a remote provider is retried for a request without a deadline
    )
    metrics: Metrics = field(default_factory=Metrics)
    store_mode: str = ""
    profile: Profile | None = None  # memory type -> collection and owner field


@dataclass(frozen=True)
class _Clock:
    """One reading of both clocks: deadlines are wall time, durations monotonic."""

    wall: float
    mono: float

    @classmethod
    def now(cls) -> _Clock:
        return cls(time.time(), time.monotonic())


async def process(
    batch: Sequence[Queued], deps: Dependencies, embedded: asyncio.Event | None = None
) -> list[Outcome]:
    """One outcome per request of `batch`, in order. Raises only for a bug or a poison request.

    `embedded` is set as soon as the model is done with this batch, so the caller
    can form the next batch while this one searches.
    """
    started = _Clock.now()
    live = [i for i, q in enumerate(batch) if not past_deadline(q.request, started.wall)]
    requests = [batch[i].request for i in live]
    try:
        if not live:  # nothing to embed, search or time
            return [_expired(q, deps, "before work") for q in batch]
        vectors = await _embed(requests, deps, started)
    finally:
        if embedded is not None:
            embedded.set()
    embedded_at = time.monotonic()
    deps.metrics.embed_seconds.observe(embedded_at - started.mono)
    if isinstance(vectors, EmbeddingUnavailable):
        results: list[Hits | RecallqError] = [vectors] * len(live)
    else:
        results = await _search(requests, vectors, deps, started)
    found = dict(zip(live, results, strict=True))
    timings = _BatchTimings(started, embedded_at, time.monotonic(), len(live))
    log.info(
        "batch done",
        size=len(live),
        expired=len(batch) - len(live),
        embed_ms=round(timings.embed_ms, 2),
        search_ms=round(timings.search_ms, 2),
    )
    return [
        _outcome(q, found[i], deps, timings) if i in found else _expired(q, deps, "before work")
        for i, q in enumerate(batch)
    ]


async def process_isolated(
    batch: Sequence[Queued], deps: Dependencies, embedded: asyncio.Event | None = None
) -> list[Outcome]:
    """`process`, except that a batch that raises is re-run request by request,
    and a lone request that raises has `Crashed`."""
    try:
        return await process(batch, deps, embedded)
    except Exception as exc:
        if len(batch) == 1:
            log.exception("request crashed", request_id=batch[0].request.request_id)
            return [Crashed(repr(exc))]
        log.exception("batch crashed; processing its requests one by one", size=len(batch))
    return [(await process_isolated([queued], deps))[0] for queued in batch]


async def _embed(
    requests: list[RetrievalRequest], deps: Dependencies, started: _Clock
) -> Vectors | EmbeddingUnavailable:
    """The batch's vectors, or why the provider gave none in time (every request's error)."""
    try:
        return await deps.embed(
            [r.query for r in requests], _embed_deadline(requests, deps, started)
        )
    except EmbeddingUnavailable as exc:
        log.warning("embedding failed", error=str(exc), code=exc.code, size=len(requests))
        return exc


def _embed_deadline(requests: list[RetrievalRequest], deps: Dependencies, now: _Clock) -> float:
    """The latest time (epoch seconds) any request of the batch still wants its vector:
    its deadline less the reply margin, or `embed_retry_s` from now without one."""
    deadlines = deadlines_for(requests, deps.embed_retry_s, now.wall, now.mono)
    return now.wall + max(d.give_up for d in deadlines) - now.mono


async def _search(
    requests: list[RetrievalRequest], vectors: Vectors, deps: Dependencies, started: _Clock
) -> list[Hits | RecallqError]:
    """Ranked hits per request, or the coded error that request ends with."""
    deadlines: list[Deadline] = deadlines_for(
        requests, deps.store_retry_s, started.wall, started.mono
    )

    async def search(pending: list[int]) -> list[Hits | RecallqError]:
        return await search_and_rank(
            deps.store,
            [requests[i] for i in pending],
            vectors[pending],
            candidate_factor=deps.candidate_factor,
            search=deps.search,
            now=started.wall,
            observe=deps.metrics.search_seconds.labels(store_mode=deps.store_mode).observe,
            profile=deps.profile,
        )

    try:
        found: list[Hits | RecallqError] = await with_deadlines(search, deadlines)
        return list(found)
    except RecallqError as exc:  # final and store-wide (dimensions differ): every request
        log.warning("search failed", error=str(exc), code=exc.code)
        return [exc] * len(requests)


@dataclass(frozen=True)
class _BatchTimings:
    started: _Clock
    embedded_at: float
    searched_at: float
    size: int

    @property
    def embed_ms(self) -> float:
        return (self.embedded_at - self.started.mono) * 1000

    @property
    def search_ms(self) -> float:
        return (self.searched_at - self.embedded_at) * 1000


def _outcome(
    queued: Queued, result: Hits | RecallqError, deps: Dependencies, timings: _BatchTimings
) -> Outcome:
    """The response, built once with its timings: ok, or the request's coded error."""
    request = queued.request
    if past_deadline(request, time.time()):
        return _expired(queued, deps, "while it was processed")
    took = Timings(
        queue_ms=(timings.started.mono - queued.received) * 1000,
        embed_ms=timings.embed_ms,
        search_ms=timings.search_ms,
        total_ms=(time.monotonic() - queued.received) * 1000,
    )
    failed = isinstance(result, RecallqError)
    response = RetrievalResponse(
        request_id=request.request_id,
        status="error" if failed else "ok",
        results={} if isinstance(result, RecallqError) else result,
        error=_error_info(result) if isinstance(result, RecallqError) else None,
        timings=took,
        batch_size=timings.size,
        worker_id=deps.worker_id,
    )
    return Answered(response)


def _error_info(error: RecallqError) -> ErrorInfo:
    return ErrorInfo(code=error.code, message=str(error), retryable=error.retryable)


def _expired(queued: Queued, deps: Dependencies, when: str) -> Expired:
    return expired(queued.request.request_id, deps.worker_id, when)
