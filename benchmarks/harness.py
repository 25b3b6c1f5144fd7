"""`python -m benchmarks run [--quick]`: embed ceiling, naive, Celery and recallq on one
workload, in one run; the table, the ratios and the JSON under benchmarks/results/."""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import celery_load, load
from benchmarks.common import RESULTS, ROOT, percentiles, write_results
from benchmarks.data import Workload, build_store
from benchmarks.systems import CpuMeter, Running, naive, peak_rss_mb, recallq
from worker.settings import WorkerSettings


@dataclass(frozen=True)
class Plan:
    idle_calls: int
    saturated_s: float
    open_loop_s: float
    in_flight: int = 256
    warm_calls: int = 20
    ceiling_queries: int = 2048


QUICK = Plan(idle_calls=20, saturated_s=8, open_loop_s=5, ceiling_queries=512)
FULL = Plan(idle_calls=200, saturated_s=30, open_loop_s=20)


def embed_ceiling(workload: Workload, plan: Plan, batch: int = 64) -> dict[str, Any]:
    """The model alone (the worker's backend), encoding the workload's queries in batches."""
    from worker.embed import Embedder

    embedder = Embedder.load(WorkerSettings().encoder_spec(), cache_size=0)
    texts = [q for q, _ in workload.queries(plan.ceiling_queries, salt="ceiling")]
    started = time.perf_counter()
    for i in range(0, len(texts), batch):
        embedder.encode(texts[i : i + batch])
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
        meter = CpuMeter(system.pid)
        rate = await load.saturated(system.call, queries, plan.in_flight, plan.saturated_s)
        cpu = meter.percent_of_one_core()
        at_50 = await load.open_loop(system.call, queries, rate * 0.5, plan.open_loop_s)
        at_80 = await load.open_loop(system.call, queries, rate * 0.8, plan.open_loop_s)
        rss = peak_rss_mb(system.pid)
    return {**summarise(idle, rate, at_50, at_80, rss), "saturated_cpu_percent": cpu}


def measure_celery(db: Path, workload: Workload, plan: Plan) -> dict[str, Any]:
    queries = iter(workload.queries(10**6, salt="celery"))
    processes = os.cpu_count() or 1
    with celery_load.celery_worker(db, processes) as (task, pid):
        celery_load.one_at_a_time(task, queries, plan.warm_calls)
        idle = celery_load.one_at_a_time(task, queries, plan.idle_calls)
        meter = CpuMeter(pid)
        rate = celery_load.saturated(task, queries, plan.in_flight, plan.saturated_s)
        cpu = meter.percent_of_one_core()
        at_50 = celery_load.open_loop(task, queries, rate * 0.5, plan.open_loop_s)
        at_80 = celery_load.open_loop(task, queries, rate * 0.8, plan.open_loop_s)
        rss = peak_rss_mb(pid)
    result = summarise(idle, rate, at_50, at_80, rss)
    result["processes"] = processes
    result["saturated_cpu_percent"] = cpu
    return result


def summarise(
    idle: list[float], rate: float, at_50: list[float], at_80: list[float], rss: float
) -> dict[str, Any]:
    return {
        "saturated_rps": round(rate, 1),
        "idle_ms": percentiles(idle),
        "load50_ms": percentiles(at_50),
        "load80_ms": percentiles(at_80),
        "peak_rss_mb": rss,
    }


def ratios(systems: dict[str, dict[str, Any]]) -> dict[str, float]:
    ours = systems["recallq"]
    return {
        "recallq_vs_naive_throughput": round(
            ours["saturated_rps"] / systems["naive"]["saturated_rps"], 2
        ),
        "recallq_vs_celery_throughput": round(
            ours["saturated_rps"] / systems["celery"]["saturated_rps"], 2
        ),
        "recallq_vs_embed_ceiling": round(
            ours["saturated_rps"] / systems["embed_ceiling"]["saturated_rps"], 2
        ),
        "recallq_vs_naive_idle_p50": round(
            ours["idle_ms"]["p50"] / systems["naive"]["idle_ms"]["p50"], 2
        ),
    }


def render(systems: dict[str, dict[str, Any]], ratio: dict[str, float]) -> str:
    header = (
        "| system | saturated req/s | idle p50 / p95 / p99 ms | 50% load p50 / p99 ms "
        "| 80% load p50 / p99 ms | peak RSS MiB | CPU % at saturation: system / broker / load |"
    )
    lines = [header, "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in systems.items():
        if name == "embed_ceiling":
            lines.append(f"| embed_ceiling (batch {r['batch']}) | {r['saturated_rps']} | | | | | |")
            continue
        idle, l50, l80 = r["idle_ms"], r["load50_ms"], r["load80_ms"]
        cpu = r["saturated_cpu_percent"]
        lines.append(
            f"| {name} | {r['saturated_rps']} | {idle['p50']} / {idle['p95']} / {idle['p99']} "
            f"| {l50['p50']} / {l50['p99']} | {l80['p50']} / {l80['p99']} | {r['peak_rss_mb']} "
            f"| {cpu['system']} / {cpu['broker']} / {cpu['load_generator']} |"
        )
    lines.append("")
    lines.extend(f"- {key}: {value}" for key, value in ratio.items())
    return "\n".join(lines)


async def run(plan: Plan) -> dict[str, Any]:
    workload = Workload()
    db = await build_store(workload, ROOT / ".bench-cache")
    systems: dict[str, dict[str, Any]] = {"embed_ceiling": embed_ceiling(workload, plan)}
    print(f"embed_ceiling: {systems['embed_ceiling']['saturated_rps']} queries/s", flush=True)
    systems["naive"] = await measure_async(naive, db, workload, plan)
    print(f"naive: {systems['naive']['saturated_rps']} req/s", flush=True)
    systems["celery"] = await asyncio.to_thread(measure_celery, db, workload, plan)
    print(f"celery: {systems['celery']['saturated_rps']} req/s", flush=True)
    systems["recallq"] = await measure_async(recallq, db, workload, plan)
    print(f"recallq: {systems['recallq']['saturated_rps']} req/s", flush=True)
    return {"systems": systems, "ratios": ratios(systems)}


def main(quick: bool, results_dir: Path = RESULTS) -> None:
    plan = QUICK if quick else FULL
    workload = Workload()
    results = asyncio.run(run(plan))
    results["workload"] = {
        "tenants": workload.tenants,
        "memory_types": 3,
        "memories_per_type": workload.per_type,
        "memories": workload.tenants * 3 * workload.per_type,
        "limits": "5 per memory type (3 types)",
        "queries": "unique texts",
    }
    results["plan"] = {**plan.__dict__, "quick": quick}
    path = write_results("quick" if quick else "run", results, results_dir)
    print(render(results["systems"], results["ratios"]))
    print(f"written to {path}")
