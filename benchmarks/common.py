"""What every benchmark shares: a seeded worker process, percentiles, the results file."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import numpy as np

from benchmarks.processes import WorkerProcess
from schemas.settings import BrokerSettings
from worker.embedding.base import TextEmbedder
from worker.service import Worker
from worker.settings import WorkerSettings
from worker.store import MemoryStore

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DEMO_MEMORIES = ROOT / "data" / "demo" / "memories.jsonl"
DEMO_QUESTIONS = ROOT / "data" / "demo" / "questions.json"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "hostname": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    if not samples_ms:
        return {"count": 0}
    values = np.asarray(samples_ms)
    return {
        "count": len(values),
        "p50": round(float(np.percentile(values, 50)), 2),
        "p95": round(float(np.percentile(values, 95)), 2),
        "p99": round(float(np.percentile(values, 99)), 2),
        "max": round(float(values.max()), 2),
    }


def write_results(name: str, results: dict[str, Any], directory: Path = RESULTS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC)
    host = platform.node().split(".")[0] or "machine"
    path = directory / f"{stamp:%Y-%m-%d}-{host}-{name}.json"
    document = {"benchmark": name, "date": stamp.isoformat(), "machine": machine(), **results}
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def publish(
    name: str,
    results: dict[str, Any],
    directory: Path,
    plot: Callable[[dict[str, Any], Path], Path],
    markdown: Callable[[dict[str, Any]], str],
) -> Path:
    """Write the results, draw their plot beside them (where matplotlib is installed) and
    print their table: how every benchmark ends."""
    path = write_results(name, results, directory)
    print(f"\nresults: {path}")
    try:
        print(f"plot: {plot(results, path.with_suffix('.png'))}")
    except ImportError:
        print("no plot: matplotlib is not installed")
    print("\n" + markdown(results))
    return path


async def ingest_demo(db: Path) -> None:
    """The demo memories into a fresh SQLite file, through `python -m worker ingest`."""
    ingest = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "ingest", str(DEMO_MEMORIES),
        env={**os.environ, "RECALLQ_STORE_URL": f"sqlite:///{db}"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    if await ingest.wait() != 0:
        raise RuntimeError("ingesting the demo memories failed")


@asynccontextmanager
async def worker_process(workdir: Path) -> AsyncIterator[BrokerSettings]:
    """A seeded SQLite store and a `python -m worker run` process on its own queue prefix."""
    db = workdir / "bench.db"
    await ingest_demo(db)
    settings = WorkerSettings(queue_prefix=f"recallq-bench-{uuid.uuid4().hex[:8]}")
    worker = WorkerProcess(settings, db, workdir / "worker.log")
    await worker.start()
    try:
        yield settings
    finally:
        await worker.stop()
        await delete_queues(settings)


async def delete_queues(settings: BrokerSettings) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        await settings.topology.delete_shared(await connection.channel())


@asynccontextmanager
async def running_worker(
    settings: WorkerSettings, embedder: TextEmbedder, store: MemoryStore
) -> AsyncIterator[Worker]:
    """A worker on this event loop, consuming once this yields; stopped and drained after."""
    worker = Worker.from_settings(settings, embedder, store)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    ready = asyncio.create_task(worker.ready.wait())
    await asyncio.wait({task, ready}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()  # raises what stopped the worker
    if not ready.done():
        raise TimeoutError("worker did not start consuming within 60 s")
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)
