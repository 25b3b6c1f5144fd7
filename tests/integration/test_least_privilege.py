"""The least-privilege topology with the documented permissions, imported as definitions.

Users are real broker users created by importing `worker definitions` output and
deleted afterwards; each attack a producer might try is refused by RabbitMQ itself
(or, for a foreign reply_to, by the worker), and the victim's traffic goes on.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import pytest
from aio_pika import ExchangeType, Message
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aiormq.exceptions import AMQPError, ChannelInvalidStateError

from producer.client import RetrievalClient
from schemas.messages import CONTENT_TYPE, ErrorCode
from schemas.topology import Layout
from tests.integration.conftest import running_worker
from tests.integration.test_invalid_messages import next_message
from tests.integration.test_tenants import as_user, rabbitmqctl
from worker.admin.definitions import BrokerUser, build_definitions
from worker.embedding.embedder import Embedder
from worker.settings import WorkerSettings
from worker.store import SQLiteStore

LIMITS = {"long_term_memory": 3}
pytestmark = pytest.mark.skipif(
    not shutil.which("rabbitmqctl"), reason="importing definitions needs rabbitmqctl"
)


@dataclass(frozen=True)
class Deployment:
    worker: WorkerSettings
    alice: WorkerSettings
    bob: WorkerSettings


@pytest.fixture
def deployment(settings: WorkerSettings) -> Iterator[Deployment]:
    """Two producers and a worker, with exactly the permissions `worker definitions` writes."""
    tag = uuid.uuid4().hex[:8]
    names = {"alice": f"alice-{tag}", "bob": f"bob-{tag}", "worker": f"worker-{tag}"}
    users = [
        BrokerUser(names["alice"], "producer", "secret"),
        BrokerUser(names["bob"], "producer", "secret"),
        BrokerUser(names["worker"], "worker", "secret"),
    ]
    shared = settings.model_copy(update={"broker_topology": Layout.LEAST_PRIVILEGE})
    definitions = json.dumps(build_definitions(shared.topology, users))
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir="/tmp") as file:
        file.write(definitions)
        file.flush()
        os.chmod(file.name, 0o644)  # rabbitmqctl reads it as the broker's OS user
        rabbitmqctl("import_definitions", file.name)
    wait_for_binding(shared.topology.submit_exchange, shared.topology.bulk.name)

    def login(name: str) -> WorkerSettings:
        return shared.model_copy(
            update={"amqp_url": as_user(settings.amqp_url, name), "worker_users": names["worker"]}
        )

    try:
        yield Deployment(login(names["worker"]), login(names["alice"]), login(names["bob"]))
    finally:
        for name in names.values():
            rabbitmqctl("delete_user", name)


def wait_for_binding(source: str, destination: str, timeout: float = 60) -> None:
    """The import runs in the background and ends with bindings: wait for the last one."""
    deadline = time.monotonic() + timeout
    while f"{source}\t{destination}" not in rabbitmqctl(
        "list_bindings", "-q", "source_name", "destination_name"
    ):
        assert time.monotonic() < deadline, "definitions not imported in time"
        time.sleep(0.1)


@pytest.fixture
async def alice_connection(deployment: Deployment) -> AsyncIterator[AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(deployment.alice.amqp_url)
    async with connection:
        yield connection


async def refused(
    connection: AbstractRobustConnection, attack: str, bob_queue: str, settings: WorkerSettings
) -> BaseException:
    """Run one attack on a fresh channel; what the broker answered (it must refuse)."""
    topology = settings.topology
    channel: AbstractChannel = await connection.channel()
    forged = Message(b'{"request_id": "x", "status": "ok"}', content_type=CONTENT_TYPE)
    try:
        match attack:
            case "consume requests":
                queue = await channel.declare_queue(topology.requests.name, passive=True)
                await queue.consume(lambda message: None)
            case "purge requests":
                queue = await channel.declare_queue(topology.requests.name, passive=True)
                await queue.purge()
            case "delete requests":
                await channel.queue_delete(topology.requests.name)
            case "publish to bob via the default exchange":
                await channel.default_exchange.publish(forged, bob_queue)
            case "publish to bob via the replies exchange":
                replies = await channel.get_exchange(topology.replies_exchange, ensure=False)
                await replies.publish(forged, bob_queue)
            case "declare bob's reply queue":
                await channel.declare_queue(bob_queue, arguments={"x-expires": 60_000})
            case "bind own queue under bob's name":
                own = topology.reply(f"spy-{uuid.uuid4().hex[:6]}")
                queue = await own.declare(channel)
                await queue.bind(topology.replies_exchange, routing_key=bob_queue)
            case "declare a replies exchange of its own":
                await channel.declare_exchange(topology.replies_exchange, ExchangeType.FANOUT)
    except (AMQPError, ChannelInvalidStateError) as exc:
        return exc
    raise AssertionError(f"the broker allowed: {attack}")


ATTACKS = [
    "consume requests",
    "purge requests",
    "delete requests",
    "publish to bob via the default exchange",
    "publish to bob via the replies exchange",
    "declare bob's reply queue",
    "bind own queue under bob's name",
    "declare a replies exchange of its own",
]


async def test_a_producer_is_refused_every_attack_and_the_victim_is_unaffected(
    deployment: Deployment, embedder: Embedder, demo_store: SQLiteStore,
    alice_connection: AbstractRobustConnection,
) -> None:  # fmt: skip
    async with (
        running_worker(deployment.worker, embedder, demo_store),
        RetrievalClient(deployment.bob, timeout=30) as bob,
    ):
        for attack in ATTACKS:
            answer = await refused(alice_connection, attack, bob.reply_queue_name, deployment.alice)
            assert "ACCESS_REFUSED" in str(answer), f"{attack}: {answer!r}"
        reply = await bob.retrieve("Which seat?", "travel-concierge:maya", LIMITS)
        assert reply.status == "ok" and reply.results["long_term_memory"]
        assert bob.rejected_replies == 0 and bob.dropped_replies == 0


@pytest.mark.parametrize("signed", [True, False], ids=["alice-signed", "no-user_id"])
async def test_a_request_naming_anothers_reply_queue_is_dead_lettered_without_a_reply(
    settings: WorkerSettings, deployment: Deployment, embedder: Embedder, demo_store: SQLiteStore,
    alice_connection: AbstractRobustConnection, signed: bool,
) -> None:  # fmt: skip
    """As the README says: a reply_to that is not the sender's, or a request without the
    broker-validated user_id that would prove whose it is, gets no reply at all."""
    topology = deployment.alice.topology
    user_id = deployment.alice.amqp_user if signed else None
    async with (
        running_worker(deployment.worker, embedder, demo_store) as worker,
        RetrievalClient(deployment.bob, timeout=30) as bob,
    ):
        channel = await alice_connection.channel()
        submit = await topology.request_exchange(channel)
        body = {"request_id": "stolen", "query": "Which seat?",
                "memory_id": "travel-concierge:maya", "limits": LIMITS}  # fmt: skip
        message = Message(
            json.dumps(body).encode(),
            content_type=CONTENT_TYPE,
            correlation_id="stolen",
            reply_to=bob.reply_queue_name,  # answers would land in bob's context
            user_id=user_id,
        )
        await submit.publish(message, topology.requests.name, mandatory=True)
        admin = await aio_pika.connect(settings.amqp_url)  # guest: the test's operator
        async with admin:
            dead = await (await admin.channel()).declare_queue(topology.dead.name, passive=True)
            letter = await next_message(dead)
        assert letter.correlation_id == "stolen" and letter.user_id == user_id
        assert (letter.headers or {}).get("x-first-death-reason") == "rejected"
        # The refusal was settled before it was dead-lettered, and replies reach bob's
        # queue in order: had the worker answered, bob would have dropped it by now.
        reply = await bob.retrieve("Which seat?", "travel-concierge:maya", LIMITS)
        assert reply.status == "ok"
        assert bob.dropped_replies == 0 and bob.rejected_replies == 0
        forbidden = {"status": "error", "code": ErrorCode.FORBIDDEN.value}
        assert worker.metrics.registry.get_sample_value("recallq_requests_total", forbidden) == 1


async def test_ask_where_no_worker_declared_the_topology_says_what_to_do_in_one_line(
    deployment: Deployment,
) -> None:
    """A producer may not declare the shared topology: before any worker (or the
    definitions) has, `recallq ask` says so in one line and exits 2, no traceback."""
    fresh = f"recallq-undeclared-{uuid.uuid4().hex[:8]}"  # a topology nobody declared
    env = {**os.environ, "RECALLQ_AMQP_URL": deployment.alice.amqp_url,
           "RECALLQ_BROKER_TOPOLOGY": Layout.LEAST_PRIVILEGE.value,
           "RECALLQ_QUEUE_PREFIX": fresh, "RECALLQ_LOG_FORMAT": "json"}  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "recallq"), "ask", "Which seat?", "--memory-id", "m",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    lines = err.decode().splitlines()
    assert process.returncode == 2 and len(lines) == 1 and not out, err.decode()
    assert lines[0].startswith(f"recallq ask: exchange {fresh}.submit does not exist: ")
    assert "start a worker" in lines[0] and "definitions" in lines[0]
