"""The systems under test, each a process tree started on its own queue prefix."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import delete_queues, wait_for_consumer
from benchmarks.load import Call
from producer.client import RetrievalClient
from schemas.settings import BrokerSettings

LIMITS = {"conversation_memory": 5, "long_term_memory": 5, "procedural_memory": 5}


@dataclass
class Running:
    call: Call
    pid: int
    settings: BrokerSettings


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a process and its children, in MiB."""
    total_kb = 0
    pids = [pid]
    while pids:
        current = pids.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total_kb += int(line.split()[1])
        pids.extend(int(child) for child in children)
    return round(total_kb / 1024, 1)


def environment(db: Path, prefix: str) -> dict[str, str]:
    return {
        **os.environ,
        "RECALLQ_STORE_URL": f"sqlite:///{db}",
        "RECALLQ_BENCH_DB": str(db),
        "RECALLQ_QUEUE_PREFIX": prefix,
        "RECALLQ_LOG_FORMAT": "json",
        "RECALLQ_LOG_LEVEL": "warning",
    }


@asynccontextmanager
async def amqp_worker(name: str, command: list[str], db: Path) -> AsyncIterator[Running]:
    """recallq or the naive worker: both speak recallq's wire contract."""
    prefix = f"recallq-bench-{name}-{uuid.uuid4().hex[:6]}"
    settings = BrokerSettings(queue_prefix=prefix)
    process = await asyncio.create_subprocess_exec(
        *command, env=environment(db, prefix), stderr=asyncio.subprocess.DEVNULL
    )
    try:
        await wait_for_consumer(settings, process)
        async with RetrievalClient(settings, timeout=300) as client:

            async def call(query: str, memory_id: str) -> None:
                response = await client.retrieve(query, memory_id, LIMITS)
                if response.status != "ok":
                    raise RuntimeError(f"{name}: {response.error}")

            yield Running(call, process.pid, settings)
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), timeout=60)
        await delete_queues(settings)


def recallq(db: Path) -> AsyncIterator[Running]:
    return amqp_worker("recallq", [sys.executable, "-m", "worker", "run"], db)


def naive(db: Path) -> AsyncIterator[Running]:
    return amqp_worker("naive", [sys.executable, "-m", "benchmarks.naive_worker", str(db)], db)
