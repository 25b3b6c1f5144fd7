"""Bad input gets an invalid_request reply and a dead letter; the worker carries on."""

from __future__ import annotations

import asyncio
import json

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from producer.client import RetrievalClient
from schemas.messages import SCHEMA_HEADER, ErrorCode, RetrievalResponse
from tests.integration.conftest import running_worker
from worker.embedding.embedder import Embedder
from worker.settings import WorkerSettings
from worker.store import SQLiteStore


async def next_message(queue: AbstractQueue, timeout: float = 30) -> AbstractIncomingMessage:
    async with queue.iterator() as messages:
        message = await asyncio.wait_for(anext(messages), timeout)
        await message.ack()
        return message


async def test_malformed_and_schema_invalid_messages_are_refused_and_dead_lettered(
    settings: WorkerSettings, embedder: Embedder, demo_store: SQLiteStore
) -> None:
    bad_bodies = {
        "malformed": b'{"request_id": "malformed", "query": ',
        "schema-invalid": json.dumps(
            {
                "request_id": "schema-invalid",
                "query": "where is my hotel?",
                "memory_id": {"$ne": None},
                "limits": {"long_term_memory": 3},
            }
        ).encode(),
    }
    connection = await aio_pika.connect(settings.amqp_url)
    async with (
        connection,
        running_worker(settings, embedder, demo_store) as worker,
    ):
        channel = await connection.channel()
        replies = await channel.declare_queue(exclusive=True)
        dead = await settings.topology.dead.declare(channel)
        for correlation_id, body in bad_bodies.items():
            await channel.default_exchange.publish(
                aio_pika.Message(
                    body,
                    content_type="application/json",
                    correlation_id=correlation_id,
                    reply_to=replies.name,
                    headers={SCHEMA_HEADER: 1},
                ),
                routing_key=settings.topology.requests.name,
            )
        answers = {}
        for _ in bad_bodies:
            reply = RetrievalResponse.model_validate_json((await next_message(replies)).body)
            answers[reply.request_id] = reply
        assert set(answers) == set(bad_bodies)
        for reply in answers.values():
            assert reply.status == "error" and reply.error is not None
            assert reply.error.code == ErrorCode.INVALID_REQUEST
            assert not reply.error.retryable
        assert answers["schema-invalid"].error is not None
        assert "memory_id" in answers["schema-invalid"].error.message

        dead_bodies = {(await next_message(dead)).body for _ in bad_bodies}
        assert dead_bodies == set(bad_bodies.values())

        async with RetrievalClient(settings, timeout=30) as client:
            good = await client.retrieve("my knee hurts", "health-coach:sam", {"summaries": 1})
            # the embedded store serves the recallq profile: no type takes attached ids
            attached = await client.retrieve(
                "my knee hurts", "health-coach:sam", {"long_term_memory": 1},
                knowledge_base_ids=["kb"],
            )  # fmt: skip
        assert good.status == "ok"
        assert worker.stats.requests == 1
        assert attached.error is not None and attached.error.code == ErrorCode.INVALID_REQUEST
        assert "knowledge_base_ids" in attached.error.message


async def test_a_request_past_its_deadline_is_answered_expired_without_work(
    settings: WorkerSettings, embedder: Embedder, demo_store: SQLiteStore
) -> None:
    async with RetrievalClient(settings, timeout=30) as client:
        connection = await aio_pika.connect(settings.amqp_url)
        async with connection, running_worker(settings, embedder, demo_store) as worker:
            channel = await connection.channel()
            body = {
                "request_id": "too-late",
                "query": "anything",
                "memory_id": "health-coach:sam",
                "limits": {"long_term_memory": 1},
                "deadline_ms": 1_000,
            }
            future = asyncio.get_running_loop().create_future()
            client._pending["too-late"] = future  # the client's own reply routing
            await channel.default_exchange.publish(
                aio_pika.Message(
                    json.dumps(body).encode(),
                    correlation_id="too-late",
                    reply_to=client.reply_queue_name,
                ),
                routing_key=settings.topology.requests.name,
            )
            reply = await client.wait(future, 30)
        assert reply.status == "error" and reply.error is not None
        assert reply.error.code == ErrorCode.EXPIRED
        assert worker.stats.requests == 0


async def test_trace_context_travels_from_request_to_reply(
    settings: WorkerSettings, embedder: Embedder, demo_store: SQLiteStore
) -> None:
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    request = {
        "request_id": "traced",
        "query": "knee pain",
        "memory_id": "health-coach:sam",
        "limits": {"long_term_memory": 1},
    }
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection, running_worker(settings, embedder, demo_store):
        channel = await connection.channel()
        replies = await channel.declare_queue(exclusive=True)
        for request_id, headers in (
            ("traced", {"traceparent": parent, "tracestate": "vendor=1"}),
            ("junk", {"traceparent": "not-a-trace; DROP TABLE", "tracestate": "x"}),
        ):
            await channel.default_exchange.publish(
                aio_pika.Message(
                    json.dumps({**request, "request_id": request_id}).encode(),
                    correlation_id=request_id,
                    reply_to=replies.name,
                    headers=headers,
                ),
                routing_key=settings.topology.requests.name,
            )
        got = {}
        for _ in range(2):
            reply = await next_message(replies)
            got[reply.correlation_id] = reply.headers or {}
    assert got["traced"]["traceparent"] == parent
    assert got["traced"]["tracestate"] == "vendor=1"
    assert "traceparent" not in got["junk"] and "tracestate" not in got["junk"]
