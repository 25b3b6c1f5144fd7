"""`python -m benchmarks overload`: a burst of 10 x the queue bound against one worker.

First the worker's capacity is measured (closed loop, saturated, same client and
machine). Then `burst_factor x RECALLQ_MAX_QUEUED` requests are offered open-loop
at `burst_rate` req/s, each with the client's 10 s timeout (its `expiration` on the
broker). Each caller ends one of four ways: `ok` inside its deadline, refused
(`overloaded`, from the publish nack), timed out, or an error reply. Reported:
goodput (answers delivered inside their deadline per second, from the first send
to the last accepted caller's end) against capacity, and the refusal latency.
Targets (issue 13): goodput >= 90% of capacity; refusals p99 <= 100 ms.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import multiprocessing
import tempfile
import time
import uuid
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from benchmarks.common import (
    DEMO_QUESTIONS,
    delete_queues,
    ingest_demo,
    percentiles,
    write_results,
)
from benchmarks.load import saturated
from benchmarks.processes import WorkerProcess
from benchmarks.systems import CpuMeter
from producer.client import Query, RetrievalClient, RetrievalOverloaded, RetrievalTimeout
from schemas.settings import BrokerSettings
from worker.settings import WorkerSettings

LIMITS = {"long_term_memory": 3, "procedural_memory": 2}
TIMEOUT_S = 10.0
PROBE_RPS = 20.0


class Burst:
    """The outcome of every caller in the burst, and when each accepted one ended."""

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.refused_ms: list[float] = []
        self.answered_ms: list[float] = []
        self.last_end = 0.0

    async def caller(self, client: RetrievalClient, query: Query) -> None:
        started = time.perf_counter()
        try:
            future = await client.submit(query, timeout=TIMEOUT_S)
        except RetrievalOverloaded:
            self.refused_ms.append((time.perf_counter() - started) * 1000)
            self.outcomes["overloaded"] += 1
            return
        try:
            response = await client.wait(future, TIMEOUT_S)
        except RetrievalTimeout:
            self.outcomes["timeout"] += 1
        else:
            code = response.error.code.value if response.error else "ok"
            self.outcomes[code] += 1
            if code == "ok":
                self.answered_ms.append((time.perf_counter() - started) * 1000)
        self.last_end = max(self.last_end, time.perf_counter())


def queries(tag: str) -> itertools.cycle[Query]:
    questions = json.loads(DEMO_QUESTIONS.read_text())
    unique = (
        Query(f"{q['query']} {tag}{i}", q["memory_id"], LIMITS)
        for i, q in enumerate(itertools.islice(itertools.cycle(questions), 50_000))
    )
    return itertools.cycle(unique)


async def measure_capacity(client: RetrievalClient, seconds: float) -> float:
    stream = queries("capacity")

    async def call(text: str, memory_id: str) -> None:
        await client.retrieve(text, memory_id, LIMITS, timeout=60)

    pairs = ((q.query, q.memory_id) for q in stream)
    return await saturated(call, pairs, in_flight=256, seconds=seconds)


async def offer_burst(
    client: RetrievalClient, total: int, rate: float
) -> tuple[Burst, float, float]:
    """The burst's outcomes, the seconds it took to offer, and the seconds until the
    last accepted caller ended (its reply or its timeout)."""
    burst, stream, tasks = Burst(), queries("burst"), []
    start = time.perf_counter()
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)  # the offered schedule
        tasks.append(asyncio.create_task(burst.caller(client, next(stream))))
    offered_s = time.perf_counter() - start
    await asyncio.gather(*tasks)
    window = max(burst.last_end, start + offered_s) - start
    return burst, offered_s, window


async def lone_caller(settings: BrokerSettings, seconds: float) -> Burst:
    """One independent caller (its own process, its own connection) asking PROBE_RPS
    times a second: what a single client sees, without the crowd generator's own
    event-loop queueing in its latencies."""
    async with RetrievalClient(settings, timeout=TIMEOUT_S) as client:
        burst, stream, tasks = Burst(), queries("probe"), []
        start = time.perf_counter()
        for i in range(int(PROBE_RPS * seconds)):
            await asyncio.sleep(max(0.0, start + i / PROBE_RPS - time.perf_counter()))
            tasks.append(asyncio.create_task(burst.caller(client, next(stream))))
        await asyncio.gather(*tasks)
    return burst


def _probe_main(settings_json: str, seconds: float, out: Connection) -> None:
    burst = asyncio.run(lone_caller(BrokerSettings.model_validate_json(settings_json), seconds))
    out.send((dict(burst.outcomes), burst.refused_ms))


async def run(
    settings: BrokerSettings, worker_pid: int, factor: int, rate: float, capacity_s: float
) -> dict[str, Any]:
    async with RetrievalClient(settings, timeout=TIMEOUT_S) as client:
        meter = CpuMeter(worker_pid)
        capacity = await measure_capacity(client, capacity_s)
        cpu_at_capacity = meter.percent_of_one_core()
        total = factor * settings.max_queued
        receive, send = multiprocessing.get_context("spawn").Pipe(duplex=False)
        probe = multiprocessing.get_context("spawn").Process(
            target=_probe_main, args=(settings.model_dump_json(), total / rate, send)
        )
        probe.start()
        meter = CpuMeter(worker_pid)
        burst, offered_s, window = await offer_burst(client, total, rate)
        cpu_in_burst = meter.percent_of_one_core()
        probe_outcomes, probe_refused_ms = await asyncio.to_thread(receive.recv)
        probe.join()
    goodput = (burst.outcomes["ok"] + probe_outcomes.get("ok", 0)) / window
    return {
        "queue_bound": settings.max_queued,
        "capacity_rps": round(capacity, 1),
        "burst_requests": total,
        "offered_rps": rate,
        "offered_over_s": round(offered_s, 2),
        "window_s": round(window, 2),
        "outcomes": dict(burst.outcomes),
        "goodput_rps": round(goodput, 1),
        "goodput_of_capacity": round(goodput / capacity, 3),
        "refused_latency_ms": percentiles(burst.refused_ms),
        "lone_caller": {"outcomes": probe_outcomes, "refused_ms": percentiles(probe_refused_ms)},
        "answered_latency_ms": percentiles(burst.answered_ms),
        # % of one core: the worker, the broker and this load generator share the machine
        "cpu_at_capacity": cpu_at_capacity,
        "cpu_in_burst": cpu_in_burst,
    }


async def overload(factor: int, rate: float, capacity_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        await ingest_demo(db)
        settings = WorkerSettings(queue_prefix=f"recallq-overload-{uuid.uuid4().hex[:8]}")
        worker = WorkerProcess(settings, db, Path(tmp) / "worker.log")
        await worker.start()
        assert worker.process is not None
        try:
            return await run(settings, worker.process.pid, factor, rate, capacity_s)
        finally:
            await worker.stop()
            await delete_queues(settings)


def main(factor: int = 10, rate: float = 2_500.0, quick: bool = False) -> dict[str, Any]:
    results = asyncio.run(overload(1 if quick else factor, rate, 3.0 if quick else 15.0))
    if not quick:
        print(f"results: {write_results('overload', results)}")
    print(json.dumps(results, indent=2))
    return results
