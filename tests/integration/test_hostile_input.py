"""1,000 hostile messages, generated: each refused with a reply where it can be, each
dead-lettered, and the worker still answering good requests correctly afterwards."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producer.client import RetrievalClient
from schemas.messages import SCHEMA_HEADER, ErrorCode, MemoryType, RetrievalResponse
from tests.integration.conftest import running_worker
from tests.oracle import Oracle, assert_hits_match
from worker.embedding.embedder import Embedder
from worker.settings import WorkerSettings
from worker.store import SQLiteStore

VALID: dict[str, Any] = {
    "request_id": "x",
    "query": "where do I stay in Lisbon?",
    "memory_id": "travel-concierge:maya",
    "limits": {"long_term_memory": 2},
}
finite = st.floats(allow_nan=False, allow_infinity=False)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | finite | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
not_a_string = json_value.filter(lambda v: not isinstance(v, str))


@dataclass(frozen=True)
class Hostile:
    body: bytes
    expected: ErrorCode  # what the reply must say
    has_reply_to: bool = True
    schema_header: object = 1
    content_type: str | None = "application/json"


def field_broken(field: str, value: Any) -> bytes:
    return json.dumps({**VALID, field: value}).encode()


hostile = st.one_of(
    st.binary(max_size=200).map(lambda b: Hostile(b"\x00" + b, ErrorCode.INVALID_REQUEST)),
    st.binary(min_size=1, max_size=50).map(
        lambda b: Hostile(b"\xff\xfe" + b, ErrorCode.INVALID_REQUEST)  # not UTF-8
    ),
    json_value.filter(lambda v: not isinstance(v, dict)).map(
        lambda v: Hostile(json.dumps(v).encode(), ErrorCode.INVALID_REQUEST)
    ),
    st.sampled_from(sorted(VALID)).map(
        lambda f: Hostile(
            json.dumps({k: v for k, v in VALID.items() if k != f}).encode(),
            ErrorCode.INVALID_REQUEST,
        )
    ),
    not_a_string.map(lambda v: Hostile(field_broken("memory_id", v), ErrorCode.INVALID_REQUEST)),
    not_a_string.map(lambda v: Hostile(field_broken("query", v), ErrorCode.INVALID_REQUEST)),
    st.one_of(st.integers(max_value=0), st.integers(min_value=101), finite).map(
        lambda n: Hostile(
            field_broken("limits", {"long_term_memory": n}), ErrorCode.INVALID_REQUEST
        )
    ),
    st.text(max_size=10)
    .filter(lambda t: t not in set(MemoryType))
    .map(lambda t: Hostile(field_broken("limits", {t: 1}), ErrorCode.INVALID_REQUEST)),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999"]).map(
        lambda n: Hostile(
            json.dumps(VALID)[:-1].encode() + f', "min_score": {n}}}'.encode(),
            ErrorCode.INVALID_REQUEST,
        )
    ),
    st.integers(min_value=0, max_value=int(time.time() * 1000) - 60_000).map(
        lambda d: Hostile(field_broken("deadline_ms", d), ErrorCode.EXPIRED)
    ),
    st.sampled_from([2, "1", 0, "v1"]).map(
        lambda v: Hostile(json.dumps(VALID).encode(), ErrorCode.INVALID_REQUEST, schema_header=v)
    ),
    st.just(
        Hostile(json.dumps(VALID).encode(), ErrorCode.INVALID_REQUEST, content_type="text/xml")
    ),
    st.just(Hostile(field_broken("query", "x" * 70_000), ErrorCode.INVALID_REQUEST)),
    st.just(Hostile(json.dumps(VALID).encode(), ErrorCode.INVALID_REQUEST, has_reply_to=False)),
)


@settings(max_examples=1, deadline=None, suppress_health_check=list(HealthCheck))
@given(messages=st.lists(hostile, min_size=1000, max_size=1000))
async def test_a_thousand_hostile_messages_leave_the_worker_serving(
    messages: list[Hostile],
    settings: WorkerSettings,
    embedder: Embedder,
    demo_store: SQLiteStore,
    oracle: Oracle,
) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection, running_worker(settings, embedder, demo_store) as worker:
        channel = await connection.channel()
        replies = await channel.declare_queue(exclusive=True)
        dead = await settings.topology.dead.declare(channel)
        for number, message in enumerate(messages):
            await channel.default_exchange.publish(
                aio_pika.Message(
                    message.body,
                    content_type=message.content_type,
                    correlation_id=f"bad-{number}",
                    reply_to=replies.name if message.has_reply_to else None,
                    headers={SCHEMA_HEADER: message.schema_header},  # type: ignore[dict-item]
                ),
                routing_key=settings.topology.requests.name,
            )
        with_reply = [m for m in messages if m.has_reply_to]
        answers = await collect(replies, len(with_reply), RetrievalResponse.model_validate_json)
        dead_letters = await collect(dead, len(messages), lambda body: body)

        async with RetrievalClient(settings, timeout=60) as client:
            good = await client.retrieve(VALID["query"], VALID["memory_id"], VALID["limits"])
        assert worker.stats.requests == 1

    by_id = {answer.request_id: answer for answer in answers}
    assert len(by_id) == len(with_reply)  # one reply each, none twice
    for number, message in enumerate(messages):
        if message.has_reply_to:
            reply = by_id[f"bad-{number}"]
            assert reply.status == "error" and reply.error is not None
            assert reply.error.code == message.expected, (message, reply.error)
    assert len(dead_letters) == len(messages)
    expected = oracle.retrieve(
        VALID["query"], VALID["memory_id"], "long_term_memory", 2, now=time.time()
    )
    assert good.status == "ok"
    assert_hits_match(good.results[MemoryType.LONG_TERM], expected)


async def collect(queue: aio_pika.abc.AbstractQueue, count: int, parse: Any) -> list[Any]:
    """`count` messages from `queue`, acked; bounded wait."""
    found: list[Any] = []

    async def take() -> None:
        async with queue.iterator() as messages:
            async for message in messages:
                await ack_and_keep(message, parse, found)
                if len(found) == count:
                    return

    await asyncio.wait_for(take(), timeout=120)
    return found


async def ack_and_keep(message: AbstractIncomingMessage, parse: Any, found: list[Any]) -> None:
    await message.ack()
    found.append(parse(message.body))


async def test_ids_too_long_for_amqp_and_deep_nesting_leave_nothing_unsettled(
    settings: WorkerSettings, embedder: Embedder, demo_store: SQLiteStore, oracle: Oracle
) -> None:
    """200 each: a request_id of 128 emoji (512 bytes: no AMQP short string holds it) and
    30,000 levels of nesting, both without a correlation_id; plus 20 refusals with one."""
    emoji = json.dumps({**VALID, "request_id": "🙂" * 128}).encode()
    deep = b"[" * 30_000 + b"]" * 30_000
    bodies = [(emoji, None), (deep, None)] * 200 + [(b"{", f"cid-{i}") for i in range(20)]
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection, running_worker(settings, embedder, demo_store) as worker:
        channel = await connection.channel()
        replies = await channel.declare_queue(exclusive=True)
        dead = await settings.topology.dead.declare(channel)
        for body, correlation_id in bodies:
            await channel.default_exchange.publish(
                aio_pika.Message(body, correlation_id=correlation_id, reply_to=replies.name),
                routing_key=settings.topology.requests.name,
            )
        answers = await collect(replies, len(bodies), RetrievalResponse.model_validate_json)
        dead_letters = await collect(dead, len(bodies), lambda body: body)
        async with RetrievalClient(settings, timeout=60) as client:
            good = await client.retrieve(VALID["query"], VALID["memory_id"], VALID["limits"])
        await asyncio.wait_for(worker.unsettled.wait_empty(), 30)  # the last ack follows its reply
        in_flight = worker.metrics.registry.get_sample_value("recallq_in_flight")
        unsettled = len(worker.unsettled)

    assert all(a.error is not None and a.error.code == ErrorCode.INVALID_REQUEST for a in answers)
    too_long = [a for a in answers if a.error is not None and "255 bytes" in a.error.message]
    assert len(too_long) == 200 and all(a.request_id == "" for a in too_long)
    assert sorted(a.request_id for a in answers if a.request_id) == sorted(
        f"cid-{i}" for i in range(20)
    )
    assert len(dead_letters) == len(bodies)
    assert in_flight == 0 and unsettled == 0
    expected = oracle.retrieve(
        VALID["query"], VALID["memory_id"], "long_term_memory", 2, now=time.time()
    )
    assert good.status == "ok"
    assert_hits_match(good.results[MemoryType.LONG_TERM], expected)
