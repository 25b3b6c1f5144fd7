"""What every benchmark shares: a seeded worker process, percentiles, the results file."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import numpy as np

from producer.workers import wait_for_workers
from schemas.settings import BrokerSettings

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


@asynccontextmanager
async def worker_process(
    workdir: Path, *, extra_env: dict[str, str] | None = None
) -> AsyncIterator[BrokerSettings]:
    """A seeded SQLite store and a `python -m worker run` process on its own queue prefix."""
    prefix = f"recallq-bench-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "RECALLQ_STORE_URL": f"sqlite:///{workdir / 'bench.db'}",
        "RECALLQ_QUEUE_PREFIX": prefix,
        "RECALLQ_LOG_FORMAT": "json",
        "RECALLQ_LOG_LEVEL": "warning",
        "RECALLQ_METRICS_PORT": "0",
        **(extra_env or {}),
    }
    ingest = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "ingest",
        str(DEMO_MEMORIES),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if await ingest.wait() != 0:
        raise RuntimeError("ingesting the demo memories failed")
    with (workdir / "worker.log").open("w") as log:
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker", "run", env=env, stderr=log
        )
        settings = BrokerSettings(queue_prefix=prefix)
        try:
            await wait_for_workers(settings, alive=lambda: worker.returncode is None)
            yield settings
        finally:
            worker.send_signal(signal.SIGTERM)
            await asyncio.wait_for(worker.wait(), timeout=60)
            await delete_queues(settings)


async def delete_queues(settings: BrokerSettings) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        await settings.topology.delete_shared(await connection.channel())
