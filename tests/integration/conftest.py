"""Real services for integration tests: RabbitMQ, MongoDB-wire servers, running workers.

RabbitMQ comes from RECALLQ_AMQP_URL (default: the local server). Where it is not
reachable the tests skip locally and fail in CI (CI is set), as dramatiq's do.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aio_pika
import numpy as np
import pytest

from benchmarks.common import running_worker as running_worker  # the tests' worker
from schemas.messages import MemoryType
from schemas.topology import Layout
from tests.conftest import DEMO_MEMORIES
from tests.integration.secantus import RestartableSecantus
from worker.admin.ingest import ingest_file
from worker.embedding.embedder import Embedder
from worker.settings import WorkerSettings
from worker.store import MemoryStore, SearchGroup, open_mongo
from worker.store.mongo import MongoStore


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


@pytest.fixture
def layout() -> Layout:
    """The broker topology the `settings` fixture uses; suites that must hold in both
    override this fixture with both layouts as params."""
    return Layout.DEFAULT_EXCHANGE


@pytest.fixture
async def settings(amqp_url: str, layout: Layout) -> AsyncIterator[WorkerSettings]:
    """Worker settings with a queue prefix of this test's own; its queues deleted after."""
    prefix = f"recallq-test-{uuid.uuid4().hex[:10]}"
    settings = WorkerSettings(
        amqp_url=amqp_url, queue_prefix=prefix, max_batch=64, metrics_port=0, broker_topology=layout
    )
    yield settings
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        await settings.topology.delete_shared(await connection.channel())


async def declare_topology(settings: WorkerSettings) -> None:
    """Declare the shared queues and exchanges as the broker's admin (guest) would."""
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        await settings.topology.declare_shared(await connection.channel())


@pytest.fixture(scope="session")
def secantus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestartableSecantus]:
    server = RestartableSecantus(tmp_path_factory.mktemp("secantus"))
    server.start()
    yield server
    server.stop()


def mongo_settings(url: str, **overrides: Any) -> WorkerSettings:
    """Settings for a MongoDB store in a database of this test run's own."""
    database = f"recallq_test_{uuid.uuid4().hex[:10]}"
    return WorkerSettings(store_url=url, mongo_database=database, metrics_port=0, **overrides)


async def seeded_mongo_store(settings: WorkerSettings, embedder: Embedder) -> MongoStore:
    store = open_mongo(settings, embedder.dimensions)
    await store.ensure_indexes()
    report = await ingest_file(DEMO_MEMORIES, store, embedder, progress=False)
    assert report.stored == 270
    await store.connect()
    return store


@pytest.fixture(scope="session")
async def secantus_store(
    secantus: RestartableSecantus, embedder: Embedder
) -> AsyncIterator[MongoStore]:
    store = await seeded_mongo_store(mongo_settings(secantus.uri), embedder)
    yield store
    await store.close()


def atlas_url() -> str | None:
    """RECALLQ_TEST_MONGODB_URL, else testcontainers' mongodb-atlas-local where Docker runs."""
    if url := os.environ.get("RECALLQ_TEST_MONGODB_URL"):
        return url
    try:
        import docker

        docker.from_env().ping()
    except Exception:
        return None
    from testcontainers.community.mongodb import MongoDBAtlasLocalContainer

    container = MongoDBAtlasLocalContainer()
    container.start()
    atexit.register(container.stop)
    return str(container.get_connection_url())


@pytest.fixture(scope="session")
async def atlas_store(embedder: Embedder) -> AsyncIterator[MongoStore]:
    url = atlas_url()
    if url is None:
        pytest.skip(
            "no Atlas-compatible MongoDB: set RECALLQ_TEST_MONGODB_URL or run a Docker engine "
            "(mongodb-atlas-local); the $vectorSearch path runs only there"
        )
    settings = mongo_settings(url, mongo_vector_exact=True)
    store = await seeded_mongo_store(settings, embedder)
    if store.mode != "vector":
        await store.close()
        pytest.skip(f"{url} has no usable $vectorSearch: {store.reason}")
    await wait_until_indexed(store)
    yield store
    await store.close()


async def wait_until_indexed(store: MongoStore, timeout: float = 120) -> None:
    """Search indexes catch up with writes asynchronously: wait (bounded) until they have."""
    probe = SearchGroup(
        MemoryType.LONG_TERM, "health-coach:sam", np.ones((1, 384), np.float32), (100,)
    )
    deadline = time.monotonic() + timeout
    while len((await store.search([probe]))[0][0]) < 25:
        assert time.monotonic() < deadline, "vector index did not catch up with the seed data"
        await asyncio.sleep(1)


@pytest.fixture(scope="session", params=["sqlite", "mongodb-secantus", "mongodb-atlas"])
def any_store(request: pytest.FixtureRequest) -> MemoryStore:
    """Every store the contract suite runs against."""
    fixture = {
        "sqlite": "demo_store",
        "mongodb-secantus": "secantus_store",
        "mongodb-atlas": "atlas_store",
    }[request.param]
    store: MemoryStore = request.getfixturevalue(fixture)
    return store
