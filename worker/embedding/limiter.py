"""How many calls a remote provider gets at once, and when: additive increase,
multiplicative decrease (AIMD), with one shared "not before" time.

A 429 halves the calls allowed in flight (never below one) and sets a time before
which no call starts: the provider's Retry-After, or an exponential backoff with
jitter when it gives none. Every waiting call honours it, not only the one that was
refused, so a rate-limited worker goes quiet instead of spending its retries on more
429s. After a round of successes at the current level (as many as are allowed) one
slot comes back. Calls started before a halving that come back 429 do not halve it
again: one burst of refusals is one congestion event, as in TCP.

The point, in the worker: while calls wait, batches keep forming from the queue, so
when calls resume each carries more requests, and a storm of 429s costs fewer calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable

FIRST_BACKOFF_S = 0.25  # a 429 without Retry-After: the first shared wait
MOST_BACKOFF_S = 8.0


class AdaptiveLimiter:
    def __init__(
        self,
        most: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.most = most
        self.allowed = most
        self.in_flight = 0
        self.not_before = 0.0  # monotonic: no call starts before it
        self._clock = clock
        self._jitter = jitter
        self._epoch = 0  # bumped by each halving
        self._successes = 0  # at the current level
        self._refusals = 0  # 429s in a row without Retry-After: the backoff's exponent
        self._changed = asyncio.Event()  # set (and replaced) when a slot comes back

    @contextlib.asynccontextmanager
    async def slot(self, deadline: float) -> AsyncIterator[int]:
        """Hold one of the allowed slots (waiting past `not_before` for one); yields the
        epoch to report a 429 with. TimeoutError if none is had by `deadline`."""
        await self._acquire(deadline)
        try:
            yield self._epoch
        finally:
            self.in_flight -= 1
            self._wake()

    async def _acquire(self, deadline: float) -> None:
        while True:
            now = self._clock()
            if now >= deadline:
                raise TimeoutError("no call slot before the deadline")
            if now < self.not_before:
                wait = min(self.not_before, deadline) - now
            elif self.in_flight >= self.allowed:
                wait = deadline - now
            else:
                self.in_flight += 1
                return
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), wait)

    def succeeded(self) -> None:
        """A call was answered: one slot back after a round at this level."""
        self._refusals = 0
        if self.allowed >= self.most:
            return
        self._successes += 1
        if self._successes >= self.allowed:
            self.allowed += 1
            self._successes = 0
            self._wake()

    def rate_limited(self, epoch: int, retry_after: float | None) -> tuple[float, bool]:
        """A 429 on a call that started in `epoch`: halve (once per event) and push
        `not_before` out. Returns (seconds until calls may start, whether it halved)."""
        now = self._clock()
        if retry_after is None:
            ceiling = min(FIRST_BACKOFF_S * 2**self._refusals, MOST_BACKOFF_S)
            retry_after = ceiling * (0.5 + self._jitter() / 2)
            self._refusals += 1
        self.not_before = max(self.not_before, now + retry_after)
        halved = epoch == self._epoch
        if halved:
            self._epoch += 1
            self.allowed = max(1, self.allowed // 2)
            self._successes = 0
        return self.not_before - now, halved

    def _wake(self) -> None:
        """Every waiter looks again (a slot came back)."""
        self._changed.set()
        self._changed = asyncio.Event()
