"""The dead-letter queue: bounded (oldest dropped), listed with reasons, requeued, purged."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractQueue

from schemas.messages import CONTENT_TYPE, SCHEMA_HEADER, RetrievalResponse
from tests.integration.conftest import declare_topology, running_worker
from tests.integration.test_invalid_messages import next_message
from worker.admin import dead_letters
from worker.admin.dead_letters import DeadLetter
from worker.embedding.embedder import Embedder
from worker.settings import WorkerSettings
from worker.store import SQLiteStore

ROOT = Path(__file__).resolve().parents[2]


async def publish(
    channel: AbstractChannel,
    settings: WorkerSettings,
    replies: AbstractQueue,
    request_id: str,
    body: bytes,
    expiration_s: float | None = None,
) -> None:
    message = aio_pika.Message(
        body, content_type=CONTENT_TYPE, correlation_id=request_id, reply_to=replies.name,
        headers={SCHEMA_HEADER: 1}, expiration=expiration_s,
    )  # fmt: skip
    await channel.default_exchange.publish(message, settings.topology.requests.name)


def request(request_id: str) -> bytes:
    return json.dumps({"request_id": request_id, "query": "Which seat?",
                       "memory_id": "travel-concierge:maya",
                       "limits": {"long_term_memory": 1}}).encode()  # fmt: skip


async def dead_letters_once(settings: WorkerSettings, count: int) -> list[DeadLetter]:
    """The dead letters, once `count` of them are there (a bounded wait)."""
    deadline = time.monotonic() + 30
    while len(letters := await dead_letters.list_dead_letters(settings, 100)) < count:
        assert time.monotonic() < deadline, f"{len(letters)} dead letters, expected {count}"
        await asyncio.sleep(0.05)
    return letters


async def test_dead_letters_are_listed_with_reasons_requeued_and_purged(
    settings: WorkerSettings, embedder: Embedder, demo_store: SQLiteStore
) -> None:
    await declare_topology(settings)
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        replies = await channel.declare_queue(exclusive=True)
        # Expires while no worker runs: the broker drops it when a consumer comes.
        await publish(channel, settings, replies, "late", request("late"), expiration_s=0.001)
        async with running_worker(settings, embedder, demo_store):
            await publish(channel, settings, replies, "bad", b'{"request_id": "bad"')
            await check_list_requeue_purge(settings, replies)


async def check_list_requeue_purge(settings: WorkerSettings, replies: AbstractQueue) -> None:
    """List (twice: listing gives them back), requeue one to be served, purge the rest."""
    letters = await dead_letters_once(settings, 2)
    reasons = {letter.request_id: letter.reason for letter in letters}
    assert reasons == {"late": "expired", "bad": "rejected"}
    assert {letter.queue for letter in letters} == {settings.topology.requests.name}
    assert len(await dead_letters_once(settings, 2)) == 2  # listing gave them back
    listed = await run_cli(settings, "list", "--json")
    assert sorted(json.loads(line)["request_id"] for line in listed) == ["bad", "late"]

    assert await dead_letters.requeue(settings, 100, request_id="late") == 1
    answers: dict[str, RetrievalResponse] = {}
    while "late" not in answers:
        reply = RetrievalResponse.model_validate_json((await next_message(replies)).body)
        answers[reply.request_id] = reply
    assert answers["late"].status == "ok"  # served once requeued
    assert [letter.request_id for letter in await dead_letters_once(settings, 1)] == ["bad"]
    assert await dead_letters.purge(settings) == 1
    assert await dead_letters.list_dead_letters(settings, 100) == []


async def test_the_dead_letter_queue_keeps_only_the_newest(
    settings: WorkerSettings, embedder: Embedder, demo_store: SQLiteStore
) -> None:
    bounded = settings.model_copy(update={"max_dead_letters": 3})
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection, running_worker(bounded, embedder, demo_store):
        channel = await connection.channel()
        replies = await channel.declare_queue(exclusive=True)
        for i in range(5):
            await publish(channel, bounded, replies, f"bad{i}", b"not json")
        for _ in range(5):
            await next_message(replies)  # each refused with an invalid_request reply
        deadline = time.monotonic() + 30
        while (ids := [d.request_id for d in await dead_letters.list_dead_letters(bounded, 9)])[
            -1:
        ] != ["bad4"]:
            assert time.monotonic() < deadline, ids
            await asyncio.sleep(0.05)
    assert ids == ["bad2", "bad3", "bad4"]


async def run_cli(settings: WorkerSettings, *args: str) -> list[str]:
    env = {**os.environ, "RECALLQ_AMQP_URL": settings.amqp_url,
           "RECALLQ_QUEUE_PREFIX": settings.queue_prefix}  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "dead-letters", *args, env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, err.decode()
    assert b"dead letters:" in err  # the summary by reason
    return out.decode().splitlines()
