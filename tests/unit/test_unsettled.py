"""The unsettled of unsettled deliveries and its watchdog, on a clock the test turns."""

from __future__ import annotations

from worker.unsettled import Unsettled


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_delivery_open_past_the_limit_is_reported_once_until_settled() -> None:
    clock, reported = Clock(), []
    unsettled = Unsettled(30, on_stuck=reported.append, clock=clock)
    first, second = object(), object()
    unsettled.opened(first, "r1")
    clock.now += 20
    unsettled.opened(second, "r2")
    assert unsettled.check() == 0 and unsettled.late == 0 and len(unsettled) == 2

    clock.now += 15  # r1 open 35 s, r2 15 s
    assert unsettled.check() == 1 and unsettled.late == 1
    assert unsettled.check() == 1
    assert reported == [1]  # logged and counted once, however often it is checked

    unsettled.closed(first)
    assert unsettled.check() == 0 and unsettled.late == 0 and len(unsettled) == 1
    unsettled.closed(second)
    unsettled.closed(second)  # closing twice is harmless
    assert len(unsettled) == 0


async def test_wait_empty_returns_once_the_last_delivery_is_settled() -> None:
    unsettled = Unsettled(30)
    await unsettled.wait_empty()  # nothing open: at once
    message = object()
    unsettled.opened(message, "r1")
    assert not unsettled._emptied.is_set()
    unsettled.closed(message)
    await unsettled.wait_empty()
