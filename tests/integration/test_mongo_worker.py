"""The worker on MongoDB (SecantusDB): same answers as SQLite, CLI, outages, modes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient

from producer.client import RetrievalClient
from schemas.messages import ErrorCode, MemoryType
from tests.conftest import DEMO_MEMORIES, ROOT
from tests.integration.conftest import mongo_settings, running_worker, seeded_mongo_store
from tests.integration.secantus import RestartableSecantus
from tests.oracle import Oracle
from worker.embedding.embedder import Embedder
from worker.errors import ConfigError
from worker.settings import WorkerSettings
from worker.store import MemoryStore, SQLiteStore, open_mongo
from worker.store.mongo import MongoStore

LIMITS = {"conversation_memory": 3, "long_term_memory": 3, "procedural_memory": 3}


async def answers(
    settings: WorkerSettings,
    embedder: Embedder,
    store: MemoryStore,
    questions: list[dict[str, str]],
) -> list[dict[MemoryType, list[str]]]:
    async with (
        running_worker(settings, embedder, store),
        RetrievalClient(settings, timeout=60) as client,
    ):
        responses = [await client.retrieve(q["query"], q["memory_id"], LIMITS) for q in questions]
    assert all(r.status == "ok" for r in responses)
    return [{t: [hit.id for hit in hits] for t, hits in r.results.items()} for r in responses]


async def test_sqlite_and_mongodb_give_the_same_answers(
    settings: WorkerSettings,
    embedder: Embedder,
    demo_store: SQLiteStore,
    secantus_store: MongoStore,
    oracle: Oracle,
    demo_questions: list[dict[str, str]],
) -> None:
    assert secantus_store.describe()["mode"] == "exact"
    from_sqlite = await answers(settings, embedder, demo_store, demo_questions)
    from_mongo = await answers(settings, embedder, secantus_store, demo_questions)
    assert from_mongo == from_sqlite
    question = demo_questions[0]
    expected = oracle.retrieve(
        question["query"], question["memory_id"], "procedural_memory", 3, now=time.time()
    )
    assert from_mongo[0][MemoryType.PROCEDURAL] == [e.id for e in expected]


async def test_auto_mode_explains_why_it_chose_exact(secantus_store: MongoStore) -> None:
    described = secantus_store.describe()
    assert described["mode"] == "exact"
    assert "no vector search" in described["reason"]
    assert "115" in described["reason"]
    assert secantus_store.cache_stats() is None  # no group cache: every search asks the server


async def test_forcing_vector_mode_on_a_server_without_it_fails_clearly(
    secantus: RestartableSecantus, embedder: Embedder
) -> None:
    store = open_mongo(mongo_settings(secantus.uri, mongo_search="vector"), embedder.dimensions)
    try:
        with pytest.raises(ConfigError, match="no vector search"):
            await store.connect()
    finally:
        await store.close()


async def test_init_and_ingest_commands_work_against_mongodb(secantus: RestartableSecantus) -> None:
    settings = mongo_settings(secantus.uri)
    env = {
        **os.environ,
        "RECALLQ_STORE_URL": settings.store_url,
        "RECALLQ_MONGO_DATABASE": settings.mongo_database,
        "RECALLQ_LOG_FORMAT": "json",
    }

    def worker_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "worker", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )

    init = await asyncio.to_thread(worker_cli, "init")
    assert init.returncode == 0, init.stderr
    assert "'mode': 'exact'" in init.stdout
    ingest = await asyncio.to_thread(worker_cli, "ingest", str(DEMO_MEMORIES))
    assert ingest.returncode == 0, ingest.stderr
    assert "stored 270 memories" in ingest.stdout

    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(secantus.uri)
    try:
        database = client[settings.mongo_database]
        counts = {t.value: await database[t.value].count_documents({}) for t in MemoryType}
        indexes = await database["long_term_memory"].index_information()
    finally:
        await client.close()
    assert counts["conversation_memory"] == 150
    assert counts["long_term_memory"] == 75 and counts["procedural_memory"] == 45
    assert indexes["memory_id_timestamp"]["key"] == [("memory_id", 1), ("timestamp", -1)]


async def test_a_store_outage_yields_store_unavailable_then_recovers(
    settings: WorkerSettings, embedder: Embedder, tmp_path: Path
) -> None:
    server = RestartableSecantus(tmp_path / "outage")
    server.start()
    store_settings = mongo_settings(server.uri, mongo_server_selection_timeout_ms=300)
    store = await seeded_mongo_store(store_settings, embedder)
    question = ("my knee hurts", "health-coach:sam", {"long_term_memory": 2})
    try:
        async with (
            running_worker(settings, embedder, store),
            RetrievalClient(settings, timeout=30) as client,
        ):
            before = await client.retrieve(*question)
            assert before.status == "ok" and len(before.results[MemoryType.LONG_TERM]) == 2

            server.stop()
            started = time.monotonic()
            during = await client.retrieve(*question, timeout=4)  # no RetrievalTimeout
            assert time.monotonic() - started < 4
            assert during.status == "error" and during.error is not None
            assert during.error.code == ErrorCode.STORE_UNAVAILABLE
            assert during.error.retryable

            server.start()
            after = await client.retrieve(*question, timeout=30)
            assert after.status == "ok"
            assert [h.id for h in after.results[MemoryType.LONG_TERM]] == [
                h.id for h in before.results[MemoryType.LONG_TERM]
            ]
    finally:
        await store.close()
        server.stop()
