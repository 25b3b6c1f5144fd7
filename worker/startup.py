"""Starting up: wait for a store that is not reachable yet, and turn what stops a start
into one line a person can act on (what failed, the setting to check).

A failure without such a line is a bug: the CLI shows its traceback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog
from pydantic import ValidationError

from schemas.connect import StartupError, explain, masked
from schemas.settings import settings_error_line
from worker.errors import ConfigError, RecallqError, StoreMismatch, StoreUnavailable

log = structlog.get_logger(__name__)


async def wait_for_store(connect: Callable[[], Awaitable[None]], url: str, wait_s: float) -> None:
    """`connect()`, retried while the store is unavailable for up to `wait_s` seconds
    (backoff 0.5 s doubling to 5 s, each retry logged)."""
    deadline = time.monotonic() + wait_s
    delay = 0.5
    while True:
        try:
            await connect()
            return
        except StoreUnavailable as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            log.warning("store not reachable yet; retrying", url=masked(url), error=str(exc),
                        retry_in_s=round(min(delay, left), 1))  # fmt: skip
            await asyncio.sleep(min(delay, left))
            delay = min(2 * delay, 5.0)


def failure_line(exc: BaseException, amqp_url: str, store_url: str) -> str | None:
    """One line for a failure a person must fix, or None for a bug."""
    if isinstance(exc, StartupError | ConfigError):
        return str(exc)
    if isinstance(exc, StoreUnavailable | StoreMismatch):
        return f"store {masked(store_url)}: {exc}; check RECALLQ_STORE_URL"
    if isinstance(exc, RecallqError):
        return str(exc)
    if isinstance(exc, ValidationError):
        return settings_error_line(exc)
    return explain(exc, amqp_url)
