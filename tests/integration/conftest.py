"""Real services for integration tests: RabbitMQ, the real model, a seeded SQLite store.

RabbitMQ comes from RECALLQ_AMQP_URL (default: the local server). Where it is not
reachable the tests skip locally and fail in CI (CI is set), as dramatiq's do.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from sentence_transformers import SentenceTransformer

from tests.oracle import Oracle
from worker.embed import Embedder, bundled_model_path
from worker.ingest import ingest_file
from worker.pipeline import Worker
from worker.settings import WorkerSettings
from worker.store import SQLiteStore

ROOT = Path(__file__).resolve().parents[2]
DEMO_MEMORIES = ROOT / "data" / "demo" / "memories.jsonl"
DEMO_QUESTIONS = ROOT / "data" / "demo" / "questions.json"


@pytest.fixture(scope="session")
async def amqp_url() -> str:
    url = os.environ.get("RECALLQ_AMQP_URL", "amqp://guest:guest@localhost:5672/")
    try:
        connection = await asyncio.wait_for(aio_pika.connect(url), timeout=10)
        await connection.close()
    except Exception as exc:
        message = f"RabbitMQ not reachable at {url} ({exc!r}); start it: rabbitmq-server -detached"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return url


@pytest.fixture(scope="session")
def embedder() -> Iterator[Embedder]:
    embedder = Embedder.load(device="cpu")
    yield embedder
    embedder.close()


@pytest.fixture(scope="session")
def demo_records() -> list[dict[str, Any]]:
    return [json.loads(line) for line in DEMO_MEMORIES.read_text().splitlines() if line]


@pytest.fixture(scope="session")
def demo_questions() -> list[dict[str, str]]:
    questions: list[dict[str, str]] = json.loads(DEMO_QUESTIONS.read_text())
    return questions


@pytest.fixture(scope="session")
async def demo_store(
    tmp_path_factory: pytest.TempPathFactory, embedder: Embedder
) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path_factory.mktemp("store") / "demo.db")
    report = await ingest_file(DEMO_MEMORIES, store, embedder, progress=False)
    assert report.stored == 270 and not report.bad_lines
    yield store
    await store.close()


@pytest.fixture(scope="session")
def oracle(demo_records: list[dict[str, Any]]) -> Oracle:
    return Oracle(demo_records, SentenceTransformer(bundled_model_path(), device="cpu"))


@pytest.fixture
async def settings(amqp_url: str) -> AsyncIterator[WorkerSettings]:
    """Worker settings with a queue prefix of this test's own; its queues deleted after."""
    prefix = f"recallq-test-{uuid.uuid4().hex[:10]}"
    settings = WorkerSettings(amqp_url=amqp_url, queue_prefix=prefix, max_batch=64)
    yield settings
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        topology = settings.topology
        for name in (topology.requests.name, topology.bulk.name, topology.dead.name):
            await channel.queue_delete(name)


@asynccontextmanager
async def running_worker(
    settings: WorkerSettings, embedder: Embedder, store: SQLiteStore
) -> AsyncIterator[Worker]:
    """A worker on this event loop, consuming once this yields; stopped and drained after."""
    worker = Worker(settings, embedder, store)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    ready = asyncio.create_task(worker.ready.wait())
    await asyncio.wait({task, ready}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()  # raises what stopped the worker
    assert ready.done(), "worker did not start consuming within 60 s"
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)
