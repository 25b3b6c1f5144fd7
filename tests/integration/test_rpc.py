"""RPC over the real RabbitMQ, answered by a real worker, checked against the oracle."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aio_pika
import pytest

from producer.client import Query, RetrievalClient
from schemas.messages import SCHEMA_HEADER, MemoryType, RankWeights, RetrievalResponse
from schemas.topology import Layout
from schemas.wire import reply_message
from tests.integration.conftest import declare_topology, running_worker
from tests.oracle import Oracle, assert_hits_match
from worker.embedding.embedder import Embedder
from worker.settings import WorkerSettings
from worker.store import SQLiteStore

LIMITS = {"conversation_memory": 4, "long_term_memory": 3, "procedural_memory": 2}


# The whole suite runs in both broker topologies (this overrides the `layout` fixture).
pytestmark = pytest.mark.parametrize("layout", list(Layout), ids=str)


async def test_round_trip_hits_equal_the_oracle(
    settings: WorkerSettings,
    embedder: Embedder,
    demo_store: SQLiteStore,
    oracle: Oracle,
    demo_questions: list[dict[str, str]],
) -> None:
    async with (
        running_worker(settings, embedder, demo_store) as worker,
        RetrievalClient(settings, timeout=30) as client,
    ):
        for question in demo_questions:
            response = await client.retrieve(question["query"], question["memory_id"], LIMITS)
            assert response.status == "ok", response.error
            assert response.worker_id == settings.worker_id
            assert set(response.results) == {MemoryType(t) for t in LIMITS}
            for memory_type, limit in LIMITS.items():
                expected = oracle.retrieve(
                    question["query"], question["memory_id"], memory_type, limit, now=time.time()
                )
                assert len(expected) == limit
                assert_hits_match(response.results[MemoryType(memory_type)], expected)
        assert worker.stats.requests == len(demo_questions)


async def test_weights_and_min_score_from_the_request_are_applied(
    settings: WorkerSettings, embedder: Embedder, demo_store: SQLiteStore, oracle: Oracle
) -> None:
    query, memory_id = "peanut allergy and snacks", "health-coach:sam"
    weights = {"relevance": 1.0, "recency": 0.0, "importance": 2.0, "half_life_hours": 24.0}
    async with (
        running_worker(settings, embedder, demo_store),
        RetrievalClient(settings, timeout=30) as client,
    ):
        response = await client.retrieve(
            query,
            memory_id,
            {"long_term_memory": 5},
            min_score=0.2,
            weights=RankWeights(**weights),
        )
    hits = response.results[MemoryType.LONG_TERM]
    expected = oracle.retrieve(
        query, memory_id, "long_term_memory", 5, now=time.time(), weights=weights, min_score=0.2
    )
    assert_hits_match(hits, expected)
    assert all(hit.score >= 0.2 for hit in hits)


async def test_200_concurrent_requests_are_batched_and_each_answered_once(
    settings: WorkerSettings,
    embedder: Embedder,
    demo_store: SQLiteStore,
    oracle: Oracle,
    demo_questions: list[dict[str, str]],
) -> None:
    queries = [
        Query(f"{q['query']} (variant {i})", q["memory_id"], {"long_term_memory": 2})
        for i in range(30)
        for q in demo_questions
    ][:200]
    await declare_topology(settings)  # as an operator would; least-privilege clients may not
    async with RetrievalClient(settings, timeout=120) as client:
        # Publish all 200 before any worker runs, so the worker finds a backlog to batch.
        futures = await asyncio.gather(
            *(client.submit(q, request_id=f"req-{i}") for i, q in enumerate(queries))
        )
        async with running_worker(settings, embedder, demo_store) as worker:
            responses = await asyncio.gather(*(client.wait(f, 120) for f in futures))
    assert [r.request_id for r in responses] == [f"req-{i}" for i in range(200)]
    assert all(r.status == "ok" for r in responses)
    assert max(r.batch_size for r in responses) > 1
    assert worker.stats.requests == 200 and worker.stats.batches < 200
    assert client.dropped_replies == 0
    now = time.time()
    for query, response in zip(queries[::17], responses[::17], strict=True):
        expected = oracle.retrieve(query.query, query.memory_id, "long_term_memory", 2, now=now)
        assert_hits_match(response.results[MemoryType.LONG_TERM], expected)


async def test_no_request_sees_another_memory_id_s_memories(
    settings: WorkerSettings,
    embedder: Embedder,
    demo_store: SQLiteStore,
    demo_records: list[dict[str, Any]],
) -> None:
    owners = {(r["memory_type"], r["id"]): r["memory_id"] for r in demo_records}
    tenants = sorted({r["memory_id"] for r in demo_records})
    every_type = {t: 100 for t in ("conversation_memory", "long_term_memory", "procedural_memory")}
    # Each tenant asks about the others' facts by name; nothing of theirs may come back.
    probes = [
        Query(f"{other} {topic}", tenant, every_type)
        for tenant in tenants
        for other in tenants
        for topic in ("FastAPI ledgerly migrations", "Lisbon hotel", "knee half marathon")
    ]
    async with (
        running_worker(settings, embedder, demo_store),
        RetrievalClient(settings, timeout=60) as client,
    ):
        responses = await client.retrieve_many(probes, concurrency=16)
        stranger = await client.retrieve("Lisbon hotel", "nobody:unknown", every_type)
    for probe, response in zip(probes, responses, strict=True):
        assert response.status == "ok"
        returned = [hit for hits in response.results.values() for hit in hits]
        assert returned, "each tenant has memories of every type"
        assert {owners[(hit.memory_type, hit.id)] for hit in returned} == {probe.memory_id}
    assert stranger.status == "ok"
    assert all(hits == [] for hits in stranger.results.values())


async def test_a_reply_not_framed_as_the_contract_says_is_counted_and_dropped(
    settings: WorkerSettings,
) -> None:
    """A reply of another schema version is not read; the real one after it is. Replies
    arrive in order, so once the real one is in, the other has been judged."""
    await declare_topology(settings)
    async with RetrievalClient(settings, timeout=30) as client:
        pending = await client.submit(Query("q", "m", {"summaries": 1}), request_id="r-1")
        answer = RetrievalResponse(request_id="r-1", status="ok", worker_id="w")
        other_version = reply_message(answer, user_id=None, persistent=False)
        other_version.headers[SCHEMA_HEADER] = 2
        connection = await aio_pika.connect(settings.amqp_url)
        async with connection:
            channel = await connection.channel()
            for reply in (other_version, reply_message(answer, user_id=None, persistent=False)):
                await channel.default_exchange.publish(reply, client.reply_queue_name)
        assert await client.wait(pending, 30) == answer
    assert client.unreadable_replies == 1 and client.dropped_replies == 0
