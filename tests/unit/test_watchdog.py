"""The ledger of unsettled deliveries and its watchdog, on a clock the test turns."""

from __future__ import annotations

from worker.watchdog import Unsettled


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_delivery_open_past_the_limit_is_reported_once_until_settled() -> None:
    clock, reported = Clock(), []
    ledger = Unsettled(30, on_stuck=reported.append, clock=clock)
    first, second = object(), object()
    ledger.opened(first, "r1")
    clock.now += 20
    ledger.opened(second, "r2")
    assert ledger.check() == 0 and ledger.late == 0 and len(ledger) == 2

    clock.now += 15  # r1 open 35 s, r2 15 s
    assert ledger.check() == 1 and ledger.late == 1
    assert ledger.check() == 1
    assert reported == [1]  # logged and counted once, however often it is checked

    ledger.closed(first)
    assert ledger.check() == 0 and ledger.late == 0 and len(ledger) == 1
    ledger.closed(second)
    ledger.closed(second)  # closing twice is harmless
    assert len(ledger) == 0


async def test_wait_empty_returns_once_the_last_delivery_is_settled() -> None:
    ledger = Unsettled(30)
    await ledger.wait_empty()  # nothing open: at once
    message = object()
    ledger.opened(message, "r1")
    assert not ledger._emptied.is_set()
    ledger.closed(message)
    await ledger.wait_empty()
