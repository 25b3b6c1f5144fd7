"""The broker restarts mid-load: worker and client reconnect by themselves, consumers
really come back (aio-pika has open issues where they do not), nothing hangs."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time

import aio_pika
import pytest

from producer.client import RetrievalClient, RetrievalError
from schemas.messages import RetrievalResponse
from tests.integration.conftest import running_worker
from worker.embed import Embedder
from worker.settings import WorkerSettings
from worker.store import SQLiteStore

LOCAL = "localhost" in os.environ.get("RECALLQ_AMQP_URL", "localhost") or "127.0.0.1" in (
    os.environ.get("RECALLQ_AMQP_URL", "")
)
pytestmark = pytest.mark.skipif(
    not (LOCAL and shutil.which("rabbitmqctl")),
    reason="restarting the broker needs rabbitmqctl and a local RabbitMQ",
)
QUESTION = ("my knee hurts after hills", "health-coach:sam", {"long_term_memory": 2})


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


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


async def test_worker_and_client_survive_a_broker_restart(
    settings: WorkerSettings, embedder: Embedder, demo_store: SQLiteStore
) -> None:
    outcomes: list[str] = []
    async with (
        running_worker(settings, embedder, demo_store),
        RetrievalClient(settings, timeout=10) as client,
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
        try:
            await asyncio.to_thread(rabbitmqctl, "stop_app")
        finally:
            await asyncio.to_thread(rabbitmqctl, "start_app")
        after = await until_answered(client, within=90)
        stop_load.set()
        await asyncio.wait_for(asyncio.gather(*loaders), timeout=30)
        assert after.status == "ok"
        assert client.reply_queue_name == reply_queue

        connection = await aio_pika.connect(settings.amqp_url)
        async with connection:
            channel = await connection.channel()
            topology = settings.topology
            for name in (topology.requests.name, topology.bulk.name, reply_queue):
                queue = await channel.declare_queue(name, passive=True)
                assert queue.declaration_result.consumer_count == 1, f"{name}: consumer lost"
    assert "ok" in outcomes
    assert set(outcomes) <= {"ok", "RetrievalTimeout", "RetrievalUnavailable"}
