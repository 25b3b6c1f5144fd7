"""Tenants bound to broker identities: real RabbitMQ users, a policy file, a live worker."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import pytest
from aio_pika.exceptions import ChannelPreconditionFailed

from producer.client import Query, RetrievalClient
from schemas.messages import (
    CONTENT_TYPE,
    SCHEMA_HEADER,
    SCHEMA_VERSION,
    ErrorCode,
    RetrievalResponse,
)
from tests.integration.conftest import running_worker
from tests.integration.test_invalid_messages import next_message
from tests.integration.test_metrics import until
from worker.embedding.embedder import Embedder
from worker.settings import WorkerSettings
from worker.store import SQLiteStore

LIMITS = {"long_term_memory": 3}
pytestmark = pytest.mark.skipif(
    not shutil.which("rabbitmqctl"), reason="creating broker users needs rabbitmqctl"
)


def rabbitmqctl(*args: str) -> str:
    """Run rabbitmqctl; its output. (It may run as the broker's own OS user, which
    reads files only where that user may.)"""
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"rabbitmqctl {args[0]}: {done.stderr.strip()[-500:]}"
    return done.stdout


@pytest.fixture
def users(amqp_url: str) -> Iterator[dict[str, str]]:
    """Two broker users of this test's own (full rights on the vhost), removed after."""
    tag = uuid.uuid4().hex[:8]
    names = {"alice": f"alice-{tag}", "bob": f"bob-{tag}"}
    vhost = urlsplit(amqp_url).path.lstrip("/") or "/"
    for name in names.values():
        rabbitmqctl("add_user", name, "secret")
        rabbitmqctl("set_permissions", "-p", vhost, name, ".*", ".*", ".*")
    yield names
    for name in names.values():
        rabbitmqctl("delete_user", name)


def as_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    netloc = f"{user}:secret@{parts.hostname}:{parts.port or 5672}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def test_a_user_reads_only_its_memory_ids_and_the_rest_is_forbidden_and_dead_lettered(
    settings: WorkerSettings, embedder: Embedder, demo_store: SQLiteStore, tmp_path: Path,
    users: dict[str, str],
) -> None:  # fmt: skip
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"users": {users["alice"]: {"memory_ids": ["travel-*"]}}}))
    worker_settings = settings.model_copy(update={"tenant_policy": str(policy)})
    alice = settings.model_copy(update={"amqp_url": as_user(settings.amqp_url, users["alice"])})
    bob = settings.model_copy(update={"amqp_url": as_user(settings.amqp_url, users["bob"])})
    async with (
        running_worker(worker_settings, embedder, demo_store) as worker,
        RetrievalClient(alice, timeout=30) as alice_client,
        RetrievalClient(bob, timeout=30) as bob_client,
    ):
        own = await alice_client.retrieve("Which seat?", "travel-concierge:maya", LIMITS)
        assert own.status == "ok" and own.results["long_term_memory"]
        other = await alice_client.retrieve("Hotfix steps?", "code-copilot:devon", LIMITS)
        assert other.status == "error" and other.error is not None
        assert other.error.code == ErrorCode.FORBIDDEN and not other.error.retryable
        assert other.results == {}
        unnamed = await bob_client.retrieve("Which seat?", "travel-concierge:maya", LIMITS)
        assert unnamed.error is not None and unnamed.error.code == ErrorCode.FORBIDDEN
        connection = await aio_pika.connect(settings.amqp_url)
        async with connection:
            dead = await settings.topology.dead.declare(await connection.channel())
            dead_ids = {(await next_message(dead)).correlation_id for _ in range(2)}
        assert dead_ids == {other.request_id, unnamed.request_id}
        assert worker.stats.requests == 1  # only alice's own request reached the model


async def test_a_request_without_user_id_is_forbidden_under_a_policy(
    settings: WorkerSettings, embedder: Embedder, demo_store: SQLiteStore, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"users": {"guest": {"memory_ids": ["*"]}}}))
    worker_settings = settings.model_copy(update={"tenant_policy": str(policy)})
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection, running_worker(worker_settings, embedder, demo_store):
        channel = await connection.channel()
        replies = await channel.declare_queue(exclusive=True)
        body = {"request_id": "anonymous", "query": "seat?", "memory_id": "travel-concierge:maya",
                "limits": LIMITS}  # fmt: skip
        message = aio_pika.Message(
            json.dumps(body).encode(), content_type=CONTENT_TYPE, correlation_id="anonymous",
            reply_to=replies.name, headers={SCHEMA_HEADER: SCHEMA_VERSION},
        )  # fmt: skip
        await channel.default_exchange.publish(message, settings.topology.requests.name)
        reply = json.loads((await next_message(replies)).body)
    assert reply["status"] == "error" and reply["error"]["code"] == "forbidden"


async def test_the_broker_refuses_a_user_id_that_is_not_the_login(
    settings: WorkerSettings, users: dict[str, str]
) -> None:
    connection = await aio_pika.connect(as_user(settings.amqp_url, users["alice"]))
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        forged = aio_pika.Message(b"{}", user_id=users["bob"])
        with pytest.raises(ChannelPreconditionFailed, match="user_id property set to"):
            await asyncio.wait_for(channel.default_exchange.publish(forged, queue.name), 10)


async def test_a_forged_reply_is_ignored_and_the_real_one_is_taken(
    settings: WorkerSettings, embedder: Embedder, demo_store: SQLiteStore, users: dict[str, str]
) -> None:
    alice = settings.model_copy(
        update={"amqp_url": as_user(settings.amqp_url, users["alice"]), "worker_users": "guest"}
    )
    async with RetrievalClient(alice, timeout=60) as client:
        request_id = f"alice-{uuid.uuid4().hex[:8]}"
        question = Query("Which seat?", "travel-concierge:maya", LIMITS)
        pending = await client.submit(question, request_id=request_id)
        forged = RetrievalResponse(request_id=request_id, status="ok", worker_id="FORGED")
        bob = await aio_pika.connect(as_user(settings.amqp_url, users["bob"]))
        async with bob:
            channel = await bob.channel()
            for user_id in (users["bob"], None):  # signed as bob, and unsigned
                message = aio_pika.Message(
                    forged.model_dump_json().encode(), content_type=CONTENT_TYPE,
                    correlation_id=request_id, user_id=user_id,
                    headers={SCHEMA_HEADER: SCHEMA_VERSION},
                )  # fmt: skip
                await channel.default_exchange.publish(message, client.reply_queue_name)
        await until(lambda: client.rejected_replies == 2, timeout=30)
        assert not pending.done()
        async with running_worker(settings, embedder, demo_store):  # runs as guest
            response = await asyncio.wait_for(pending, 60)
    assert response.worker_id == settings.worker_id and response.status == "ok"
    assert response.results["long_term_memory"]
