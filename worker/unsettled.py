"""Deliveries taken and not yet settled, and a watchdog for ones left too long.

Every delivery is opened when the consumer receives it and closed by the settle
function, whatever became of it. The in-flight gauge reads this unsettled, so it
cannot drift. A delivery still open after `limit_s` means a stage is stuck: the
watchdog logs it once, counts it and reports the worker not ready, so an
orchestrator restarts it (its unacked deliveries then go to another replica).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _Open:
    request_id: str
    opened: float
    reported: bool = False


class Unsettled:
    """The ledger of open deliveries, keyed by the message object itself."""

    def __init__(
        self,
        limit_s: float,
        on_stuck: Callable[[int], None] = lambda count: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit_s = limit_s
        self._open: dict[object, _Open] = {}
        self._on_stuck = on_stuck
        self._clock = clock
        self._emptied = asyncio.Event()
        self._emptied.set()
        self.late = 0  # open past the limit at the last check; read by /readyz's thread

    def __len__(self) -> int:
        return len(self._open)

    def opened(self, message: object, request_id: str) -> None:
        self._open[message] = _Open(request_id, self._clock())
        self._emptied.clear()

    def closed(self, message: object) -> None:
        self._open.pop(message, None)
        if not self._open:
            self._emptied.set()

    async def wait_empty(self) -> None:
        await self._emptied.wait()

    def check(self) -> int:
        """Log and count deliveries newly past the limit; how many are past it now."""
        oldest_allowed = self._clock() - self.limit_s
        late = [entry for entry in self._open.values() if entry.opened < oldest_allowed]
        new = [entry for entry in late if not entry.reported]
        for entry in new:
            entry.reported = True
            log.error(
                "delivery unsettled too long; reporting not ready",
                request_id=entry.request_id,
                open_s=round(self._clock() - entry.opened, 1),
                limit_s=self.limit_s,
            )
        if new:
            self._on_stuck(len(new))
        self.late = len(late)
        return self.late

    async def watch(self) -> None:
        """Check a few times per limit, until cancelled."""
        while True:
            await asyncio.sleep(max(self.limit_s / 4, 0.05))
            self.check()
