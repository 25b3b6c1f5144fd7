"""Retrying store calls with backoff, each request within its own deadline.

A batch's requests share store calls, but not deadlines: a store error is
retried for as long as any request still has time, and each request gives up
at its own deadline (less a margin, so its `store_unavailable` reply reaches
the caller in time). No request's deadline shortens another's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import structlog

from schemas.backoff import delays
from schemas.messages import RetrievalRequest
from worker.errors import StoreUnavailable

log = structlog.get_logger(__name__)
T = TypeVar("T")

REPLY_MARGIN_S = 0.25  # time left at the deadline for the error reply to reach the caller


@dataclass(frozen=True, slots=True)
class Deadline:
    """When the caller stops waiting, and when to stop retrying for it (monotonic)."""

    end: float
    give_up: float


def deadlines_for(
    requests: Sequence[RetrievalRequest], retry_s: float, now_wall: float, now_mono: float
) -> list[Deadline]:
    """Each request's own deadline, or `retry_s` from now for a request without one."""
    deadlines = []
    for request in requests:
        if request.deadline_ms is None:
            end = now_mono + retry_s
            deadlines.append(Deadline(end, end))
        else:
            end = now_mono + (request.deadline_ms / 1000 - now_wall)
            deadlines.append(Deadline(end, end - REPLY_MARGIN_S))
    return deadlines


async def with_deadlines(
    call: Callable[[list[int]], Awaitable[list[T]]],
    deadlines: Sequence[Deadline],
    *,
    first_delay: float = 0.05,
    max_delay: float = 1.0,
) -> list[T | StoreUnavailable]:
    """`call(pending)` answers the requests at those indexes, in order.

    On StoreUnavailable (or no answer in time), each pending request either gives
    up with that error, if its deadline leaves no room for another try, or is
    tried again after a backoff, with the others that still have time.
    """
    results: dict[int, T | StoreUnavailable] = {}
    pending = list(range(len(deadlines)))
    waits = delays(first_delay, max_delay)
    while pending:
        latest = max(deadlines[i].end for i in pending)
        try:
            async with asyncio.timeout(max(latest - time.monotonic(), 0.001)):
                answers = await call(pending)
            results.update(zip(pending, answers, strict=True))
            break
        except TimeoutError:
            error = StoreUnavailable("the store did not answer before the deadline")
        except StoreUnavailable as exc:
            error = exc
        delay = next(waits)
        retry_at = time.monotonic() + delay
        results.update((i, error) for i in pending if retry_at >= deadlines[i].give_up)
        pending = [i for i in pending if i not in results]
        if pending:
            log.warning("store error, retrying", error=str(error), delay_s=delay, left=len(pending))
            await asyncio.sleep(delay)
    return [results[i] for i in range(len(deadlines))]
