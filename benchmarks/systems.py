"""The systems under test, each a process tree started on its own queue prefix."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import delete_queues
from benchmarks.load import Call
from producer.client import RetrievalClient
from producer.workers import wait_for_workers
from schemas.settings import BrokerSettings

LIMITS = {"conversation_memory": 5, "long_term_memory": 5, "procedural_memory": 5}


@dataclass
class Running:
    call: Call
    pid: int
    settings: BrokerSettings


def memory_mb(pid: int, field: str) -> float:
    """A /proc status figure (VmHWM: peak resident, VmRSS: resident now) summed over a
    process and its children, in MiB."""
    total_kb = 0
    for member in process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith(f"{field}:"):
                total_kb += int(line.split()[1])
    return round(total_kb / 1024, 1)


def peak_rss_mb(pid: int) -> float:
    return memory_mb(pid, "VmHWM")


def rss_mb(pid: int) -> float:
    return memory_mb(pid, "VmRSS")


def process_tree(pid: int) -> list[int]:
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        pending.extend(int(child) for child in children)
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes."""
    total = 0.0
    for pid in pids:
        try:
            total += _stat_cpu_seconds(Path(f"/proc/{pid}/stat"))
        except OSError:
            continue
    return total


def _stat_cpu_seconds(stat: Path) -> float:
    """User + system CPU seconds in a /proc .../stat file (a process's or a thread's)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def broker_pids() -> list[int]:
    """The local RabbitMQ (Erlang VM) processes, when the broker runs on this machine."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "beam.smp":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


class CpuMeter:
    """Where the CPU went during a phase: the system under test, the broker, the load."""

    def __init__(self, system_pid: int) -> None:
        self._groups = {
            "system": process_tree(system_pid),
            "broker": broker_pids(),
            "load_generator": [os.getpid()],
        }
        self._start = {name: cpu_seconds(pids) for name, pids in self._groups.items()}
        self._wall = time.perf_counter()

    def percent_of_one_core(self) -> dict[str, float]:
        wall = time.perf_counter() - self._wall
        return {
            name: round((cpu_seconds(pids) - self._start[name]) / wall * 100, 1)
            for name, pids in self._groups.items()
        }


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds so far per kernel thread name (recallq names its threads), process tree."""
    totals: dict[str, float] = {}
    for member in process_tree(pid):
        try:
            tasks = list(Path(f"/proc/{member}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                name = (task / "comm").read_text().strip()
                seconds = _stat_cpu_seconds(task / "stat")
            except OSError:
                continue
            totals[name] = totals.get(name, 0.0) + seconds
    return totals


class ThreadCpuMeter:
    """CPU milliseconds per request, by thread, over a phase that answered `requests`."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._start = thread_cpu_seconds(pid)

    def per_request_ms(self, requests: int) -> dict[str, float]:
        now = thread_cpu_seconds(self._pid)
        spent = {name: now[name] - self._start.get(name, 0.0) for name in now}
        return {
            name: round(seconds * 1000 / max(1, requests), 3)
            for name, seconds in sorted(spent.items(), key=lambda item: -item[1])
            if seconds > 0.05
        }


def environment(db: Path, prefix: str) -> dict[str, str]:
    return {
        **os.environ,
        "RECALLQ_STORE_URL": f"sqlite:///{db}",
        "RECALLQ_BENCH_DB": str(db),
        "RECALLQ_QUEUE_PREFIX": prefix,
        "RECALLQ_LOG_FORMAT": "json",
        "RECALLQ_LOG_LEVEL": "warning",
        "RECALLQ_METRICS_PORT": "0",
    }


@asynccontextmanager
async def amqp_worker(
    name: str, command: list[str], db: Path, settings_env: dict[str, str] | None = None
) -> AsyncIterator[Running]:
    """recallq or the naive worker: both speak recallq's wire contract."""
    prefix = f"recallq-bench-{name}-{uuid.uuid4().hex[:6]}"
    settings = BrokerSettings(queue_prefix=prefix)
    process = await asyncio.create_subprocess_exec(
        *command,
        env={**environment(db, prefix), **(settings_env or {})},
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_for_workers(settings, alive=lambda: process.returncode is None)
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


def recallq(db: Path, settings_env: dict[str, str] | None = None) -> AsyncIterator[Running]:
    """`python -m worker run`, default settings unless `settings_env` names some."""
    return amqp_worker("recallq", [sys.executable, "-m", "worker", "run"], db, settings_env)


def naive(db: Path) -> AsyncIterator[Running]:
    return amqp_worker("naive", [sys.executable, "-m", "benchmarks.naive_worker", str(db)], db)
