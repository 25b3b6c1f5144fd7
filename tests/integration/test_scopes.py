"""Scope filters on a shared memory_id, in a memorizz-shaped MongoDB database
(SecantusDB: the exact path; the $vectorSearch stage is checked structurally in
tests/unit/test_mongo_query.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from pymongo import AsyncMongoClient

from producer.client import RetrievalClient
from schemas.messages import ErrorCode
from tests.integration.conftest import mongo_settings, running_worker
from tests.integration.secantus import RestartableSecantus
from worker.embedding.embedder import Embedder
from worker.errors import ConfigError
from worker.settings import WorkerSettings
from worker.store import SearchGroup, open_mongo
from worker.store.mongo import MongoStore

TURNS = {
    "alice": ["I am allergic to peanuts", "Book me a window seat", "My sister lives in Porto"],
    "bob": ["I prefer aisle seats", "I am vegetarian", "My brother lives in Lisbon"],
}


@pytest.fixture
async def shared(
    secantus: RestartableSecantus, embedder: Embedder
) -> AsyncIterator[tuple[WorkerSettings, MongoStore]]:
    """Two users' turns under one memory_id, written as memorizz writes them."""
    settings = mongo_settings(secantus.uri, store_profile="memorizz")
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(secantus.uri)
    now = datetime.now(UTC)
    rows = []
    for user, texts in TURNS.items():
        vectors = await embedder.embed(texts)
        for i, (text, vector) in enumerate(zip(texts, vectors, strict=True)):
            rows.append({"_id": f"{user}-{i}", "memory_id": "shared", "user_id": user,
                         "role": "user", "content": text, "embedding": vector.tolist(),
                         "timestamp": (now - timedelta(hours=i)).isoformat()})  # fmt: skip
    await client[settings.mongo_database]["conversation_memory"].insert_many(rows)
    store = open_mongo(settings, embedder.dimensions)
    await store.connect()
    yield settings, store
    await store.close()
    await client.drop_database(settings.mongo_database)
    await client.close()


async def test_filters_return_only_that_users_rows_equal_to_the_oracle(
    settings: WorkerSettings, shared: tuple[WorkerSettings, MongoStore], embedder: Embedder
) -> None:
    mongo, store = shared
    worker_settings = mongo.model_copy(
        update={"amqp_url": settings.amqp_url, "queue_prefix": settings.queue_prefix}
    )
    question, limits = "where does my family live and what do I eat?", {"conversation_memory": 3}
    async with (
        running_worker(worker_settings, embedder, store),
        RetrievalClient(settings, timeout=30) as client,
    ):
        both = await client.retrieve(question, "shared", limits)
        answers = {
            user: await client.retrieve(question, "shared", limits, filters={"user_id": user})
            for user in TURNS
        }
        bad = await client.retrieve(question, "shared", limits, filters={"role": "user"})
    users_seen = {hit.id.split("-")[0] for hit in both.results["conversation_memory"]}
    assert users_seen == {"alice", "bob"}  # without a filter the memory_id is shared
    query = (await embedder.embed([question]))[0]
    for user, reply in answers.items():
        hits = reply.results["conversation_memory"]
        assert {hit.id.split("-")[0] for hit in hits} == {user}
        cosines = (await embedder.embed(TURNS[user])) @ query  # the oracle: this user's rows only
        by_id = {f"{user}-{i}": float(c) for i, c in enumerate(cosines)}
        for hit in hits:
            assert hit.score == pytest.approx(by_id[hit.id], abs=1e-5)
        assert len(hits) == 3 and np.isfinite([hit.signal for hit in hits]).all()
    assert bad.error is not None and bad.error.code == ErrorCode.INVALID_REQUEST
    assert "'role'" in bad.error.message


async def test_embeddings_of_another_size_stop_the_start_and_unembedded_rows_are_skipped(
    secantus: RestartableSecantus, embedder: Embedder
) -> None:
    settings = mongo_settings(secantus.uri, store_profile="memorizz")
    assert settings.mongo_vector_index == "vector_index"  # memorizz's name for it
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(secantus.uri)
    database = client[settings.mongo_database]
    try:
        await database["knowledge_base"].insert_one(
            {"_id": "k1", "memory_id": "m", "content": "x", "embedding": [0.1] * 256}
        )
        store = open_mongo(settings, embedder.dimensions)
        with pytest.raises(ConfigError, match=r"knowledge_base: 256 dimensions.*makes 384"):
            await store.connect()
        await store.close()
        await database["knowledge_base"].delete_many({})
        vector = (await embedder.embed(["likes tea"]))[0].tolist()
        await database["knowledge_base"].insert_many([
            {"_id": "k2", "memory_id": "m", "content": "likes tea", "embedding": vector},
            {"_id": "k3", "memory_id": "m", "content": "not embedded yet"},
        ])  # fmt: skip
        store = open_mongo(settings, embedder.dimensions)
        skipped: list[tuple[str, int]] = []
        store.on_skipped = lambda name, rows: skipped.append((name, rows))
        await store.connect()
        group = SearchGroup("knowledge_base", "m", (await embedder.embed(["tea"])), (5,))
        [[[hit]]] = await store.search([group])  # one group, one query, one hit
        await store.close()
    finally:
        await client.drop_database(settings.mongo_database)
        await client.close()
    assert hit.memory.id == "k2"  # never the unembedded row with a made-up score
    assert skipped == [("knowledge_base", 1)]


async def test_worker_init_indexes_the_attached_field_beside_the_owner(
    secantus: RestartableSecantus, embedder: Embedder
) -> None:
    """An attached search's $or (memory_id = X OR knowledge_base_id IN ids) has a B-tree
    index on each side; a collection without an attached field gets none."""
    settings = mongo_settings(secantus.uri, store_profile="memorizz", mongo_search="exact")
    store = open_mongo(settings, embedder.dimensions)
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(secantus.uri)
    try:
        await store.ensure_indexes()
        database = client[settings.mongo_database]
        names = {
            collection: {
                i["name"] for i in await (await database[collection].list_indexes()).to_list(None)
            }
            for collection in ("knowledge_base", "conversation_memory")
        }
    finally:
        await store.close()
        await client.drop_database(settings.mongo_database)
        await client.close()
    assert {"memory_id_timestamp", "knowledge_base_id_timestamp"} <= names["knowledge_base"]
    assert not any("knowledge_base_id" in name for name in names["conversation_memory"])
