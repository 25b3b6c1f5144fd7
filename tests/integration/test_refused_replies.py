"""Replies the broker will not take: refused ones end, direct reply-to ones are not 'returned'.

A reply queue that refuses publishes (x-max-length 0, reject-publish) makes the
broker nack every reply to it. That is not a transient failure: the request takes
the Crashed route (reject with requeue, counted on RabbitMQ 3.x and 4.x alike), and
on its last delivery it is dead-lettered, where a nack would requeue it for ever.
"""

from __future__ import annotations

import asyncio
import json

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from producer.client import RetrievalClient
from schemas.messages import CONTENT_TYPE, SCHEMA_HEADER, RetrievalResponse
from schemas.topology import DELIVERY_LIMIT
from tests.integration.conftest import running_worker
from tests.integration.test_invalid_messages import next_message
from worker.embedding.embedder import Embedder
from worker.settings import WorkerSettings
from worker.store import SQLiteStore

LIMITS = {"long_term_memory": 2}


def request(request_id: str, reply_to: str) -> aio_pika.Message:
    body = {"request_id": request_id, "query": "knee pain", "memory_id": "health-coach:sam",
            "limits": LIMITS}  # fmt: skip
    return aio_pika.Message(
        json.dumps(body).encode(),
        content_type=CONTENT_TYPE,
        correlation_id=request_id,
        reply_to=reply_to,
        headers={SCHEMA_HEADER: 1},
    )


async def test_a_reply_the_broker_refuses_ends_in_the_dead_letter_queue_within_the_limit(
    settings: WorkerSettings, embedder: Embedder, demo_store: SQLiteStore
) -> None:
    ids = ["refused-1", "refused-2", "refused-3"]
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection, running_worker(settings, embedder, demo_store) as worker:
        channel = await connection.channel()
        full = await channel.declare_queue(
            exclusive=True, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
        )
        dead = await settings.topology.dead.declare(channel)
        for request_id in ids:
            await channel.default_exchange.publish(
                request(request_id, full.name), settings.topology.requests.name
            )
        letters = [await next_message(dead, timeout=60) for _ in ids]

        assert sorted(str(letter.correlation_id) for letter in letters) == ids
        for letter in letters:
            headers = letter.headers or {}
            assert headers.get("x-first-death-reason") == "rejected"  # by the worker
            assert headers.get("x-delivery-count", 0) <= DELIVERY_LIMIT - 1
        sample = worker.metrics.registry.get_sample_value
        assert sample("recallq_refused_replies_total") == len(ids) * DELIVERY_LIMIT
        assert sample("recallq_redeliveries_total") == len(ids) * (DELIVERY_LIMIT - 1)
        assert sample("recallq_returned_replies_total") == 0

        async with RetrievalClient(settings, timeout=30) as client:  # the worker carries on
            good = await client.retrieve("knee pain", "health-coach:sam", LIMITS)
        assert good.status == "ok" and good.results["long_term_memory"]
        assert len(worker.unsettled) == 0


async def test_a_direct_reply_to_reply_arrives_and_is_not_counted_as_returned(
    settings: WorkerSettings, embedder: Embedder, demo_store: SQLiteStore
) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection, running_worker(settings, embedder, demo_store) as worker:
        channel = await connection.channel()
        direct = await channel.get_queue("amq.rabbitmq.reply-to", ensure=False)
        arrived: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        await direct.consume(arrived.put, no_ack=True)  # the requester's side of the protocol
        await channel.default_exchange.publish(
            request("direct", "amq.rabbitmq.reply-to"), settings.topology.requests.name
        )
        reply = RetrievalResponse.model_validate_json(
            (await asyncio.wait_for(arrived.get(), 30)).body
        )
        assert reply.request_id == "direct" and reply.status == "ok"
        sample = worker.metrics.registry.get_sample_value
        assert sample("recallq_returned_replies_total") == 0
        assert sample("recallq_requests_total", {"status": "ok", "code": ""}) == 1
