"""Retrying store calls with backoff, never past a deadline."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import structlog

from schemas.messages import RetrievalRequest
from worker.errors import StoreUnavailable

log = structlog.get_logger(__name__)
T = TypeVar("T")


REPLY_MARGIN_S = 0.25  # time left at the deadline for the error reply to reach the caller


def batch_deadline(requests: Sequence[RetrievalRequest], default_s: float) -> float:
    """When to stop retrying a batch's store calls, on the monotonic clock.

    The earliest request deadline less a margin, so a `store_unavailable` reply
    reaches its caller before the caller gives up.
    """
    now_wall, now_mono = time.time(), time.monotonic()
    deadlines = [r.deadline_ms / 1000 for r in requests if r.deadline_ms is not None]
    if not deadlines:
        return now_mono + default_s
    return now_mono + (min(deadlines) - now_wall) - REPLY_MARGIN_S


async def with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    deadline: float,
    first_delay: float = 0.05,
    max_delay: float = 1.0,
) -> T:
    """`call()` until it succeeds; StoreUnavailable once the deadline leaves no room."""
    delay = first_delay
    for attempt in itertools.count(1):
        remaining = deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(remaining, 0.001)):
                return await call()
        except TimeoutError:
            raise StoreUnavailable("the store did not answer before the deadline") from None
        except StoreUnavailable as exc:
            if time.monotonic() + delay >= deadline:
                raise
            log.warning("store error, retrying", attempt=attempt, error=str(exc), delay_s=delay)
        await asyncio.sleep(delay)
        delay = min(2 * delay, max_delay)
    raise AssertionError("itertools.count never ends")
