"""Load shapes: one at a time (idle), closed loop (saturated), open loop (a fixed rate).

`call(query, memory_id)` performs one retrieval and returns when its reply is in.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator

Call = Callable[[str, str], Awaitable[None]]


async def one_at_a_time(call: Call, queries: Iterator[tuple[str, str]], count: int) -> list[float]:
    latencies = []
    for _ in range(count):
        query, memory_id = next(queries)
        started = time.perf_counter()
        await call(query, memory_id)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


async def saturated(
    call: Call, queries: Iterator[tuple[str, str]], in_flight: int, seconds: float
) -> float:
    """Requests per second with `in_flight` requests outstanding for `seconds`."""
    done = 0
    stop_at = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await call(*next(queries))
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(in_flight)))
    return done / (time.perf_counter() - started)


async def open_loop(
    call: Call, queries: Iterator[tuple[str, str]], rate: float, seconds: float
) -> tuple[list[float], float]:
    """Latencies of requests sent at a fixed `rate`, whatever the replies do, and the
    seconds from the first send to the last reply."""
    latencies: list[float] = []

    async def timed(query: str, memory_id: str) -> None:
        started = time.perf_counter()
        await call(query, memory_id)
        latencies.append((time.perf_counter() - started) * 1000)

    tasks = []
    start = time.perf_counter()
    for i in range(max(1, int(rate * seconds))):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)  # the schedule itself, not synchronisation
        tasks.append(asyncio.create_task(timed(*next(queries))))
    await asyncio.gather(*tasks)
    return latencies, time.perf_counter() - start
