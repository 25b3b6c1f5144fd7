"""A memorizz database as memorizz itself writes it (memorizz 0.17.16, its public API,
HuggingFace embeddings from the bundled model, no network), served by a worker with
RECALLQ_STORE_PROFILE=memorizz: hits equal a numpy oracle over the stored embeddings
under the same scope filters."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from pymongo import MongoClient

from producer.client import RetrievalClient
from schemas.messages import RankWeights
from tests.integration.conftest import mongo_settings, running_worker
from tests.integration.secantus import RestartableSecantus
from worker.embed import Embedder
from worker.encoders import bundled_model_path
from worker.settings import WorkerSettings
from worker.store.mongo import MongoStore

memorizz = pytest.importorskip("memorizz")
from memorizz.embeddings import configure_embeddings  # noqa: E402
from memorizz.enums.memory_type import MemoryType  # noqa: E402
from memorizz.long_term.episodic.conversational_memory_unit import (  # noqa: E402
    ConversationMemoryUnit,
)
from memorizz.long_term.semantic.entity_memory.entity_memory import EntityMemory  # noqa: E402
from memorizz.memory_provider.mongodb.provider import (  # noqa: E402
    MongoDBConfig,
    MongoDBProvider,
)

TURNS = {
    "alice": ["I am allergic to peanuts", "Book me a window seat", "My sister lives in Porto"],
    "bob": ["I prefer aisle seats", "I am vegetarian", "My brother lives in Lisbon"],
}
ENTITIES = {
    "alice": [("Porto", "city", "sister lives there"), ("Lufthansa", "airline", "window")],
    "bob": [("Lisbon", "city", "brother lives there"), ("TAP", "airline", "aisle")],
}
RELEVANCE_ONLY = RankWeights(relevance=1.0, recency=0.0, importance=0.0)


@pytest.fixture(scope="module")
def memorizz_db(secantus: RestartableSecantus) -> Iterator[str]:
    """Two users' turns and entities under one memory_id, written by memorizz."""
    database = f"memorizz_{uuid.uuid4().hex[:8]}"
    manager = configure_embeddings(
        "huggingface", {"model": bundled_model_path(), "local_files_only": True}
    )
    config = MongoDBConfig(secantus.uri, db_name=database, lazy_vector_indexes=True,
                           embedding_provider=manager)  # fmt: skip
    provider = MongoDBProvider(config)
    now = datetime.now(UTC)
    for user, texts in TURNS.items():
        for i, text in enumerate(texts):
            turn = ConversationMemoryUnit(
                role="user", content=text, timestamp=(now - timedelta(hours=i)).isoformat(),
                memory_id="shared", thread_id=f"thread-{user}", user_id=user,
                embedding=provider.embed_text(text),
            )  # fmt: skip
            provider.store(turn.model_dump(), MemoryType.CONVERSATION_MEMORY)
        for name, kind, note in ENTITIES[user]:
            EntityMemory(provider).upsert_entity(
                name=name, entity_type=kind, memory_id="shared", user_id=user,
                attributes=[{"name": "note", "value": note}],
            )  # fmt: skip
    yield database
    MongoClient(secantus.uri).drop_database(database)


def oracle(uri: str, database: str, collection: str, user: str, query: np.ndarray, k: int
           ) -> list[tuple[str, float]]:  # fmt: skip
    """Top k (id, cosine) by brute force over the stored embeddings, same scope."""
    rows: list[dict[str, Any]] = list(
        MongoClient(uri)[database][collection].find({"memory_id": "shared", "user_id": user})
    )
    matrix = np.asarray([row["embedding"] for row in rows], dtype=np.float64)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    cosines = matrix @ (query / np.linalg.norm(query))
    order = np.argsort(-cosines)[:k]
    return [(str(rows[i]["_id"]), float(cosines[i])) for i in order]


async def test_a_memorizz_database_is_served_as_memorizz_wrote_it(
    settings: WorkerSettings, secantus: RestartableSecantus, memorizz_db: str, embedder: Embedder
) -> None:
    mongo = mongo_settings(secantus.uri, store_profile="memorizz")
    mongo = mongo.model_copy(update={"mongo_database": memorizz_db,
        "amqp_url": settings.amqp_url, "queue_prefix": settings.queue_prefix})  # fmt: skip
    store = MongoStore(mongo, embedder.dimensions)
    await store.connect()
    question = "where does my family live, and which seat do I like?"
    limits = {"conversation_memory": 2, "entity_memory": 1}
    async with (
        running_worker(mongo, embedder, store),
        RetrievalClient(settings, timeout=30) as client,
    ):
        replies = {
            user: await client.retrieve(
                question, "shared", limits, weights=RELEVANCE_ONLY, filters={"user_id": user}
            )
            for user in TURNS
        }
    await store.close()
    query = embedder.encode([question])[0]
    for user, reply in replies.items():
        assert reply.status == "ok", reply.error
        for collection, k in limits.items():
            expected = oracle(secantus.uri, memorizz_db, collection, user, query, k)
            hits = reply.results[collection]
            assert [hit.id for hit in hits] == [row_id for row_id, _ in expected]
            for hit, (_, cosine) in zip(hits, expected, strict=True):
                assert hit.score == pytest.approx(cosine, abs=1e-5)
                assert hit.content and hit.timestamp is not None
        entity = reply.results["entity_memory"][0]
        assert any(f"{name} ({kind}): note: {note}" == entity.content
                   for name, kind, note in ENTITIES[user])  # fmt: skip
