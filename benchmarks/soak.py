"""recallq under a steady offered load for minutes: does its memory stay flat?

RSS (VmRSS of the worker's process tree) is sampled every `every_s` seconds;
`start` is taken after a warm-up minute, when the caches have filled.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from benchmarks import load
from benchmarks.common import percentiles
from benchmarks.data import Workload
from benchmarks.systems import recallq, rss_mb


async def steady(
    db: Path, workload: Workload, rate: float, seconds: float, every_s: float = 30.0
) -> dict[str, Any]:
    queries = iter(workload.queries(10**7, salt="soak"))
    samples: list[tuple[float, float]] = []
    async with recallq(db) as system:  # type: ignore[attr-defined]
        await load.open_loop(system.call, queries, rate, 60.0)  # warm-up: caches fill
        started = time.perf_counter()

        async def sample() -> None:
            while True:
                samples.append((round(time.perf_counter() - started, 1), rss_mb(system.pid)))
                await asyncio.sleep(every_s)  # the sampling period, not synchronisation

        sampler = asyncio.create_task(sample())
        latencies, _ = await load.open_loop(system.call, queries, rate, seconds)
        sampler.cancel()
        samples.append((round(time.perf_counter() - started, 1), rss_mb(system.pid)))
    return {
        "offered_rps": rate,
        "seconds": seconds,
        "latency_ms": percentiles(latencies),
        "rss_mb": {"start": samples[0][1], "end": samples[-1][1]},
        "rss_samples": samples,
    }
