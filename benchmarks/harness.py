"""`python -m benchmarks run [--quick]`: the embed ceiling, naive, Celery and recallq on
two workloads (100 and 2,000 tenants), in one run: idle latency, saturated throughput,
latency at fixed offered rates and SLO capacity; int8 against fp32; a steady-load soak
for RSS. Writes the JSON, the table and a plot per workload under benchmarks/results/."""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks import celery_load, load, plots, quantize, report, soak
from benchmarks.common import RESULTS, ROOT, percentiles, write_results
from benchmarks.curves import RATES, latency_curve, slo_capacity
from benchmarks.data import Workload, build_store
from benchmarks.systems import CpuMeter, Running, ThreadCpuMeter, naive, peak_rss_mb, recallq
from worker.settings import WorkerSettings

SIZED_CACHE_MB = "2048"  # the 2,000-tenant vectors are ~1.8 GiB; the default bound is 512


@dataclass(frozen=True)
class Plan:
    idle_calls: int
    saturated_s: float
    rate_s: float  # seconds at each offered rate
    rates: tuple[float, ...] = RATES
    workloads: tuple[Workload, ...] = (Workload(), Workload(tenants=2000))
    soak_s: float = 600.0
    soak_rps: float = 80.0
    in_flight: int = 256
    warm_calls: int = 20
    ceiling_queries: int = 2048


QUICK = Plan(
    idle_calls=10, saturated_s=4, rate_s=2, rates=(25, 100),
    workloads=(Workload(),), soak_s=0, ceiling_queries=256,
)  # fmt: skip
FULL = Plan(idle_calls=200, saturated_s=30, rate_s=10)


async def embed_ceiling(workload: Workload, plan: Plan, batch: int = 64) -> dict[str, Any]:
    """The model alone, as the worker runs it (its backend, its lanes side by side),
    encoding the workload's queries in batches of `batch`."""
    from worker.embedding.embedder import Embedder

    embedder = Embedder.load(WorkerSettings().encoder_spec(), cache_size=0)
    texts = [q for q, _ in workload.queries(plan.ceiling_queries, salt="ceiling")]
    started = time.perf_counter()
    await asyncio.gather(
        *(embedder.embed(texts[i : i + batch]) for i in range(0, len(texts), batch))
    )
    rate = len(texts) / (time.perf_counter() - started)
    backend = embedder.description
    embedder.close()
    del embedder
    gc.collect()
    return {"saturated_rps": round(rate, 1), "batch": batch, "backend": backend}


async def measure_async(
    start: Callable[[Path], AsyncIterator[Running]], db: Path, workload: Workload, plan: Plan
) -> dict[str, Any]:
    queries = iter(workload.queries(10**6, salt=f"{id(start)}"))
    async with start(db) as system:  # type: ignore[attr-defined]
        await load.one_at_a_time(system.call, queries, plan.warm_calls)
        idle = await load.one_at_a_time(system.call, queries, plan.idle_calls)
        meter, threads = CpuMeter(system.pid), ThreadCpuMeter(system.pid)
        started = time.perf_counter()
        rate = await load.saturated(system.call, queries, plan.in_flight, plan.saturated_s)
        cpu = meter.percent_of_one_core()
        per_thread = threads.per_request_ms(round(rate * (time.perf_counter() - started)))

        async def at_rate(offered: float) -> tuple[list[float], float]:
            return await load.open_loop(system.call, queries, offered, plan.rate_s)

        curve = await latency_curve(at_rate, plan.rates)
        rss = peak_rss_mb(system.pid)
    return {**summarise(idle, rate, curve, rss, cpu), "saturated_cpu_ms_per_request": per_thread}


def measure_celery(db: Path, workload: Workload, plan: Plan) -> dict[str, Any]:
    queries = iter(workload.queries(10**6, salt="celery"))
    processes = os.cpu_count() or 1
    with celery_load.celery_worker(db, processes) as (task, pid):
        celery_load.one_at_a_time(task, queries, plan.warm_calls)
        idle = celery_load.one_at_a_time(task, queries, plan.idle_calls)
        meter = CpuMeter(pid)
        rate = celery_load.saturated(task, queries, plan.in_flight, plan.saturated_s)
        cpu = meter.percent_of_one_core()

        async def at_rate(offered: float) -> tuple[list[float], float]:
            return celery_load.open_loop(task, queries, offered, plan.rate_s)

        curve = asyncio.run(latency_curve(at_rate, plan.rates))
        rss = peak_rss_mb(pid)
    return {**summarise(idle, rate, curve, rss, cpu), "processes": processes}


def summarise(
    idle: list[float], rate: float, curve: list[dict[str, Any]], rss: float, cpu: dict[str, float]
) -> dict[str, Any]:
    return {
        "saturated_rps": round(rate, 1),
        "slo_capacity_rps": slo_capacity(curve),
        "idle_ms": percentiles(idle),
        "curve": curve,
        "peak_rss_mb": rss,
        "saturated_cpu_percent": cpu,
    }


async def run_workload(workload: Workload, plan: Plan, ceiling: dict[str, Any]) -> dict[str, Any]:
    db = await build_store(workload, ROOT / ".bench-cache")
    systems: dict[str, dict[str, Any]] = {"embed_ceiling": ceiling}
    systems["naive"] = await measure_async(naive, db, workload, plan)
    print(f"{workload.name} naive: {brief(systems['naive'])}", flush=True)
    systems["celery"] = await asyncio.to_thread(measure_celery, db, workload, plan)
    print(f"{workload.name} celery: {brief(systems['celery'])}", flush=True)
    systems["recallq"] = await measure_async(recallq, db, workload, plan)
    print(f"{workload.name} recallq: {brief(systems['recallq'])}", flush=True)
    if workload.tenants >= 1000:  # the same worker with its group cache sized to the data
        sized = partial(recallq, settings_env={"RECALLQ_SQLITE_CACHE_MB": SIZED_CACHE_MB})
        systems["recallq_cache_2gib"] = await measure_async(sized, db, workload, plan)
        print(f"{workload.name} recallq_cache_2gib: {brief(systems['recallq_cache_2gib'])}")
    return {"workload": describe(workload), "systems": systems, "ratios": report.ratios(systems)}


def brief(system: dict[str, Any]) -> str:
    return f"{system['saturated_rps']} req/s saturated, SLO capacity {system['slo_capacity_rps']}"


def describe(workload: Workload) -> dict[str, Any]:
    return {
        "name": workload.name,
        "tenants": workload.tenants,
        "memory_types": 3,
        "memories_per_type": workload.per_type,
        "memories": workload.tenants * 3 * workload.per_type,
        "limits": "5 per memory type (3 types)",
        "queries": "unique texts, tenants drawn uniformly",
    }


async def run(plan: Plan) -> dict[str, Any]:
    ceiling = await embed_ceiling(plan.workloads[0], plan)
    print(f"embed_ceiling ({ceiling['backend']}): {ceiling['saturated_rps']} queries/s", flush=True)
    runs = [await run_workload(workload, plan, ceiling) for workload in plan.workloads]
    results: dict[str, Any] = {"workloads": runs}
    results["int8"] = await asyncio.to_thread(int8_against_fp32)
    print(f"int8: {results['int8']}", flush=True)
    if plan.soak_s:
        db = await build_store(plan.workloads[-1], ROOT / ".bench-cache")
        results["soak"] = await soak.steady(db, plan.workloads[-1], plan.soak_rps, plan.soak_s)
        print(f"soak: {results['soak']['rss_mb']}", flush=True)
    return results


def int8_against_fp32() -> dict[str, Any]:
    fp32 = replace(WorkerSettings().encoder_spec(), backend="onnx", quantize="none")
    return quantize.compare(replace(fp32, quantize="int8"), fp32)


def main(quick: bool, results_dir: Path = RESULTS) -> None:
    plan = QUICK if quick else FULL
    results = asyncio.run(run(plan))
    results["plan"] = {**asdict(plan), "quick": quick}
    path = write_results("quick" if quick else "run", results, results_dir)
    for workload in results["workloads"]:
        picture = plots.latency_plot(
            workload, path.with_suffix(f".{workload['workload']['name']}.png")
        )
        print(report.render(workload))
        print(f"plot: {picture}")
    print(f"written to {path}")
