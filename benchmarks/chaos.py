"""`python -m benchmarks chaos`: requests through two workers while one is killed and
restarted several times and the broker restarts once. Nothing may be lost.

The client retries a request (same request_id) on a timeout or a retryable error,
as a careful caller would; the reply it keeps is the first, later ones are dropped.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import DEMO_QUESTIONS, delete_queues, ingest_demo
from benchmarks.processes import WorkerProcess
from producer.client import Query, RetrievalClient, RetrievalError
from worker.settings import WorkerSettings

LIMITS = {"long_term_memory": 2, "procedural_memory": 2}


@dataclass
class ChaosReport:
    sent: int = 0
    answered: int = 0
    duplicates_dropped: int = 0
    retries: int = 0
    lost: list[str] = field(default_factory=list)
    by_status: Counter[str] = field(default_factory=Counter)
    longest_gap_s: float = 0.0
    kills: int = 0
    answered_at_kills: list[int] = field(default_factory=list)
    broker_restarts: int = 0
    seconds: float = 0.0

    def __post_init__(self) -> None:
        self.progress = asyncio.Condition()

    async def reached(self, answered: int) -> None:
        async with self.progress:
            await self.progress.wait_for(lambda: self.answered >= answered)

    async def one_answered(self, code: str) -> None:
        async with self.progress:
            self.answered += 1
            self.by_status[code] += 1
            self.progress.notify_all()

    def as_dict(self) -> dict[str, Any]:
        fields = {k: v for k, v in self.__dict__.items() if k != "progress"}
        return {**fields, "lost": len(self.lost), "by_status": dict(self.by_status)}


async def ask_until_answered(
    client: RetrievalClient,
    query: Query,
    request_id: str,
    report: ChaosReport,
    answers: list[float],
) -> None:
    for attempt in range(12):
        try:
            future = await client.submit(query, request_id=request_id, timeout=15)
            response = await client.wait(future, 15)
        except RetrievalError:
            report.retries += 1
            await asyncio.sleep(min(0.2 * 2**attempt, 3.0))
            continue
        code = response.error.code.value if response.error else "ok"
        if response.error is not None and response.error.retryable and attempt < 11:
            report.retries += 1
            continue
        answers.append(time.monotonic())
        await report.one_answered(code)
        return
    report.lost.append(request_id)


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


async def chaos(
    workers: list[WorkerProcess], kills: int, broker_restart: bool, report: ChaosReport
) -> None:
    """Kill and restart the first worker `kills` times, evenly through the run; restart
    the broker once, midway."""
    for round_ in range(kills):
        await report.reached(report.sent * (round_ + 1) // (kills + 1))
        await workers[0].signal(signal.SIGKILL)
        report.kills += 1
        report.answered_at_kills.append(report.answered)
        if broker_restart and round_ == kills // 2:
            await asyncio.to_thread(rabbitmqctl, "stop_app")
            await asyncio.to_thread(rabbitmqctl, "start_app")
            report.broker_restarts += 1
        await workers[0].start()


async def run_chaos(
    requests: int, kills: int, broker_restart: bool, workdir: Path, concurrency: int = 64
) -> ChaosReport:
    prefix = f"recallq-chaos-{uuid.uuid4().hex[:6]}"
    settings = WorkerSettings(queue_prefix=prefix, store_url=f"sqlite:///{workdir / 'chaos.db'}")
    db = workdir / "chaos.db"
    await ingest_demo(db)
    workers = [WorkerProcess(settings, db, workdir / f"worker{i}.log") for i in range(2)]
    for worker in workers:
        await worker.start()
    questions = json.loads(DEMO_QUESTIONS.read_text())
    report = ChaosReport(sent=requests)
    answers: list[float] = []
    started = time.monotonic()
    try:
        async with RetrievalClient(settings, timeout=15) as client:
            gate = asyncio.Semaphore(concurrency)

            async def one(i: int) -> None:
                q = questions[i % len(questions)]
                async with gate:
                    query = Query(f"{q['query']} #{i}", q["memory_id"], LIMITS)
                    await ask_until_answered(client, query, f"chaos-{i}", report, answers)

            chaos_task = asyncio.create_task(chaos(workers, kills, broker_restart, report))
            await asyncio.gather(*(one(i) for i in range(requests)))
            await chaos_task
            report.duplicates_dropped = client.dropped_replies
    finally:
        for worker in workers:
            await worker.stop()
        await delete_queues(settings)
    report.seconds = round(time.monotonic() - started, 1)
    moments = [started, *sorted(answers)]
    report.longest_gap_s = round(max(b - a for a, b in itertools.pairwise(moments)), 2)
    return report


def main(requests: int, kills: int, broker_restart: bool) -> int:
    if broker_restart and not shutil.which("rabbitmqctl"):
        print("no rabbitmqctl here: running without the broker restart")
        broker_restart = False
    with tempfile.TemporaryDirectory() as tmp:
        report = asyncio.run(run_chaos(requests, kills, broker_restart, Path(tmp)))
    summary = report.as_dict()
    for key in ("sent", "answered", "duplicates_dropped", "retries", "lost", "by_status"):
        print(f"{key:20} {summary[key]}")
    print(f"{'kills':20} {report.kills} (after {report.answered_at_kills} answers)")
    print(f"{'broker restarts':20} {report.broker_restarts}")
    print(f"{'longest gap':20} {report.longest_gap_s} s; run took {report.seconds} s")
    return 1 if report.lost else 0
