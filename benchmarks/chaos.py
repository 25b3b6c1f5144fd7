"""`python -m benchmarks chaos [--cluster N]`: requests through two workers while one
is killed and restarted several times and, midway, the broker fails once. Nothing may
be lost.

The broker is a RabbitMQ node of this run's own (`--cluster 1`, the default: the
whole node is stopped and started) or a cluster of N nodes (`--cluster 3`: the node
holding the quorum queues' leaders is SIGKILLed, then started again; client and
workers are connected to the other nodes). `--cluster 0` uses RECALLQ_AMQP_URL and
fails no broker. The client retries a request (same request_id) on a timeout or a
retryable error, as a careful caller would; the reply it keeps is the first, later
ones are dropped (counted). Recovery time: the longest gap between two answers.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika

from benchmarks.common import DEMO_QUESTIONS, delete_queues, ingest_demo, write_results
from benchmarks.processes import WorkerProcess
from benchmarks.rabbit_nodes import LocalNode, can_run_nodes, local_nodes
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
    broker_failures: list[str] = field(default_factory=list)
    broker_away_s: float = 0.0
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


BrokerFailure = Callable[[], Awaitable[str]]


async def chaos(
    workers: list[WorkerProcess], kills: int, fail_broker: BrokerFailure | None,
    report: ChaosReport,
) -> None:  # fmt: skip
    """Kill and restart the first worker `kills` times, evenly through the run; fail the
    broker once, midway."""
    for round_ in range(kills):
        await report.reached(report.sent * (round_ + 1) // (kills + 1))
        await workers[0].signal(signal.SIGKILL)
        report.kills += 1
        report.answered_at_kills.append(report.answered)
        if fail_broker is not None and round_ == kills // 2:
            started = time.monotonic()
            report.broker_failures.append(await fail_broker())
            report.broker_away_s = round(time.monotonic() - started, 1)
        await workers[0].start()


async def run_chaos(
    requests: int, kills: int, workdir: Path, *, urls: Sequence[str] = (),
    fail_broker: BrokerFailure | None = None, concurrency: int = 64,
) -> ChaosReport:  # fmt: skip
    """`urls`: the topology is declared on the first (its node leads the quorum queues);
    client and workers use the others, or the first when there is one (none: the
    configured broker)."""
    prefix = f"recallq-chaos-{uuid.uuid4().hex[:6]}"
    db = workdir / "chaos.db"
    base = WorkerSettings(queue_prefix=prefix, store_url=f"sqlite:///{db}")
    leader = base.model_copy(update={"amqp_url": urls[0]}) if urls else base
    await declare_shared(leader)
    served = [base.model_copy(update={"amqp_url": url}) for url in urls[1:] or urls[:1]] or [base]
    await ingest_demo(db)
    workers = [
        WorkerProcess(served[i % len(served)], db, workdir / f"worker{i}.log") for i in range(2)
    ]
    for worker in workers:
        await worker.start()
    report = ChaosReport(sent=requests)
    answers: list[float] = []
    started = time.monotonic()
    try:
        await drive(served[0], requests, concurrency, report, answers,
                    chaos(workers, kills, fail_broker, report))  # fmt: skip
    finally:
        for worker in workers:
            await worker.stop()
        await delete_queues(served[0])
    report.seconds = round(time.monotonic() - started, 1)
    moments = [started, *sorted(answers)]
    report.longest_gap_s = round(max(b - a for a, b in itertools.pairwise(moments)), 2)
    return report


async def drive(
    settings: WorkerSettings, requests: int, concurrency: int, report: ChaosReport,
    answers: list[float], chaos_run: Coroutine[Any, Any, None],
) -> None:  # fmt: skip
    questions = json.loads(DEMO_QUESTIONS.read_text())
    async with RetrievalClient(settings, timeout=15) as client:
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            q = questions[i % len(questions)]
            async with gate:
                query = Query(f"{q['query']} #{i}", q["memory_id"], LIMITS)
                await ask_until_answered(client, query, f"chaos-{i}", report, answers)

        chaos_task = asyncio.create_task(chaos_run)
        await asyncio.gather(*(one(i) for i in range(requests)))
        await chaos_task
        report.duplicates_dropped = client.dropped_replies


async def declare_shared(settings: WorkerSettings) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        await settings.topology.declare_shared(await connection.channel())


def leaders(node: LocalNode) -> dict[str, str]:
    """Each recallq quorum queue's leader node, as the cluster reports it."""
    listing = node.ctl("list_queues", "-q", "name", "leader")
    rows = (line.split("\t") for line in listing.splitlines())
    return {row[0].rsplit(".", 1)[-1]: row[1].split("@")[0] for row in rows
            if len(row) == 2 and row[1] and row[0].startswith("recallq-chaos")}  # fmt: skip


def node_failure(nodes: list[LocalNode]) -> BrokerFailure:
    """One node: stop and start it whole. A cluster: SIGKILL the leaders' node, then
    start it again (it rejoins)."""

    async def fail() -> str:
        if len(nodes) == 1:
            await asyncio.to_thread(nodes[0].stop)
            await asyncio.to_thread(nodes[0].start)
            return "node stopped and started"
        before = await asyncio.to_thread(leaders, nodes[1])
        await asyncio.to_thread(nodes[0].kill)
        await asyncio.to_thread(nodes[0].start)
        after = await asyncio.to_thread(leaders, nodes[1])
        return f"{nodes[0].node} SIGKILLed and restarted; leaders before {before}, after {after}"

    return fail


def main(requests: int, kills: int, cluster: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        if cluster == 0:
            report = asyncio.run(run_chaos(requests, kills, Path(tmp)))
        else:
            if not can_run_nodes():
                print("starting RabbitMQ nodes of our own needs their scripts and root")
                return 2
            with local_nodes(cluster) as nodes:
                urls, failure = [node.url for node in nodes], node_failure(nodes)
                run = run_chaos(requests, kills, Path(tmp), urls=urls, fail_broker=failure)
                report = asyncio.run(run)
    summary = report.as_dict()
    print(f"results: {write_results(f'chaos-cluster{cluster}', summary)}")
    for key in ("sent", "answered", "duplicates_dropped", "retries", "lost", "by_status"):
        print(f"{key:20} {summary[key]}")
    print(f"{'kills':20} {report.kills} (after {report.answered_at_kills} answers)")
    print(f"{'broker failures':20} {report.broker_failures} (away {report.broker_away_s} s)")
    print(f"{'longest gap':20} {report.longest_gap_s} s; run took {report.seconds} s")
    return 1 if report.lost else 0
