"""A whole broker node stopped and started mid-load (the Erlang VM, not only the app):
worker and clients reconnect by themselves, consumers really come back (aio-pika has
open issues where they do not), nothing hangs, nothing is lost or written twice.

The node is one of our own, on another port: the machine's broker is not touched.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pytest

from benchmarks.rabbit_nodes import LocalNode, can_run_nodes, local_nodes
from producer.bulk import BulkJob
from producer.client import RetrievalClient, RetrievalError
from schemas.messages import RetrievalResponse
from tests.integration.conftest import running_worker
from tests.integration.test_bulk import read_results, write_input
from worker.embedding.embedder import Embedder
from worker.settings import WorkerSettings
from worker.store import SQLiteStore

pytestmark = pytest.mark.skipif(
    not can_run_nodes(), reason="starting a RabbitMQ node of our own needs its scripts and root"
)
QUESTION = ("my knee hurts after hills", "health-coach:sam", {"long_term_memory": 2})


@pytest.fixture(scope="module")
def node() -> Iterator[LocalNode]:
    with local_nodes(1, first_port=5690) as nodes:
        yield nodes[0]


@pytest.fixture
def on_node(node: LocalNode) -> WorkerSettings:
    prefix = f"recallq-restart-{uuid.uuid4().hex[:8]}"
    return WorkerSettings(amqp_url=node.url, queue_prefix=prefix, max_batch=64, metrics_port=0)


async def restart(node: LocalNode) -> float:
    """Stop the whole node and start it again; the seconds it was away."""
    started = time.monotonic()
    await asyncio.to_thread(node.stop)
    await asyncio.to_thread(node.start)
    return time.monotonic() - started


async def until_answered(client: RetrievalClient, within: float) -> RetrievalResponse:
    """Retry (bounded) until the restored worker answers through the restored client."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await client.retrieve(*QUESTION, timeout=5)
        except RetrievalError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def test_rpc_survives_a_full_node_restart(
    node: LocalNode, on_node: WorkerSettings, embedder: Embedder, demo_store: SQLiteStore
) -> None:
    outcomes: list[str] = []
    async with (
        running_worker(on_node, embedder, demo_store),
        RetrievalClient(on_node, timeout=10) as client,
    ):
        assert (await client.retrieve(*QUESTION)).status == "ok"
        reply_queue = client.reply_queue_name
        stop_load = asyncio.Event()

        async def load() -> None:
            while not stop_load.is_set():
                try:
                    response = await client.retrieve(*QUESTION, timeout=8)
                    outcomes.append(response.status)
                except RetrievalError as exc:  # the only failure a caller may see
                    outcomes.append(type(exc).__name__)
                    await asyncio.sleep(0.2)

        loaders = [asyncio.create_task(load()) for _ in range(4)]
        await restart(node)
        after = await until_answered(client, within=90)
        stop_load.set()
        await asyncio.wait_for(asyncio.gather(*loaders), timeout=30)
        assert after.status == "ok"
        assert client.reply_queue_name == reply_queue

        connection = await aio_pika.connect(on_node.amqp_url)
        async with connection:
            channel = await connection.channel()
            topology = on_node.topology
            for name in (topology.requests.name, topology.bulk.name, reply_queue):
                queue = await channel.declare_queue(name, passive=True)
                assert queue.declaration_result.consumer_count == 1, f"{name}: consumer lost"
    assert "ok" in outcomes
    assert set(outcomes) <= {"ok", "RetrievalTimeout", "RetrievalUnavailable"}


async def test_a_bulk_job_survives_a_full_node_restart_exactly_once(
    node: LocalNode, on_node: WorkerSettings, embedder: Embedder, demo_store: SQLiteStore,
    demo_questions: list[dict[str, str]], tmp_path: Path,
) -> None:  # fmt: skip
    lines = write_input(tmp_path / "in.jsonl", demo_questions, 1500)
    output = tmp_path / "out.jsonl"
    # A small window keeps it publishing while the node is away.
    job = BulkJob(tmp_path / "in.jsonl", output, on_node, window=200, progress=False)
    async with running_worker(on_node, embedder, demo_store):
        running = asyncio.create_task(job.run())
        deadline = time.monotonic() + 120
        while not output.exists() or output.read_text().count("\n") < 300:
            assert not running.done(), "the job ended before the restart"
            assert time.monotonic() < deadline, "the job wrote too little within 120 s"
            await asyncio.sleep(0.05)
        await restart(node)
        summary = await asyncio.wait_for(running, timeout=300)
    assert summary.complete
    ids = [r.request_id for r in read_results(output)]
    assert sorted(ids) == sorted(str(line["request_id"]) for line in lines)  # once each
