"""Queue topology as data, declared idempotently from one place.

Every name derives from one prefix, so a test run (or a second deployment on the
same broker) can live beside another without sharing queues.

Two layouts share the queues and differ in how messages reach them:

- `default-exchange` (simple installs, other-language clients): requests and
  replies go through the default exchange, routed by queue name. Anyone who may
  publish at all may publish into any queue.
- `least-privilege` (shared brokers): requests go through the `<prefix>.submit`
  exchange and replies through `<prefix>.replies`, which only workers may write
  to; reply and job queues are named `<prefix>.reply.<user>.<id>` and
  `<prefix>.job.<user>.<id>`, so RabbitMQ permission regexes scope each user to
  its own queues (schemas/permissions.py has them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from aio_pika import ExchangeType

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

DELIVERY_LIMIT = 5
# Requests a request queue holds: what the workers answer within a caller's timeout
# (one 2-core worker, measured under a burst: ~150 req/s, x the client's default
# 10 s), so a request that gets in is answered in time and the rest are refused at
# once. A longer queue only turns refusals into timeouts (benchmarks/overload.py).
MAX_QUEUED = 1_500
MAX_QUEUED_BYTES = 64 * 2**20
MAX_DEAD_LETTERS = 10_000  # oldest dropped first
REPLY_QUEUE_TTL_MS = 60_000
JOB_QUEUE_TTL_MS = 24 * 3600 * 1000
# A user name that cannot run into another's queue names (no dots, no regex syntax).
OWNER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Layout(StrEnum):
    DEFAULT_EXCHANGE = "default-exchange"
    LEAST_PRIVILEGE = "least-privilege"


class TopologyMissing(RuntimeError):
    """The shared exchanges are not declared yet (workers declare them)."""


@dataclass(frozen=True)
class QueueSpec:
    """A queue's name and declaration arguments."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    durable: bool = True

    async def declare(self, channel: AbstractChannel) -> AbstractQueue:
        return await channel.declare_queue(
            self.name, durable=self.durable, arguments=dict(self.arguments)
        )


@dataclass(frozen=True)
class Topology:
    """The queues and exchanges of one recallq deployment, named from `prefix`."""

    prefix: str = "recallq"
    max_queued: int = MAX_QUEUED  # per request queue; past it the broker refuses publishes
    max_queued_bytes: int = MAX_QUEUED_BYTES  # the same, counted in message bytes
    max_dead_letters: int = MAX_DEAD_LETTERS
    layout: Layout = Layout.DEFAULT_EXCHANGE
    owner: str = ""  # the AMQP user whose reply and job queues these are (least-privilege)

    @property
    def least_privilege(self) -> bool:
        return self.layout is Layout.LEAST_PRIVILEGE

    @property
    def submit_exchange(self) -> str:
        return f"{self.prefix}.submit"

    @property
    def replies_exchange(self) -> str:
        return f"{self.prefix}.replies"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.prefix}.dead-letters"

    @property
    def dead(self) -> QueueSpec:
        """Dead letters of both lanes, bounded: past the bound the oldest is dropped."""
        return QueueSpec(
            f"{self.prefix}.dead",
            {
                "x-queue-type": "quorum",
                "x-max-length": self.max_dead_letters,
                "x-overflow": "drop-head",
            },
        )

    @property
    def requests(self) -> QueueSpec:
        """Interactive RPC requests: the lane the batcher serves first."""
        return self._request_queue("requests")

    @property
    def bulk(self) -> QueueSpec:
        """Background job requests: they top up batches the interactive lane leaves room in."""
        return self._request_queue("bulk")

    def reply(self, client_id: str) -> QueueSpec:
        """One per RPC client, reused for all its calls and stable across reconnects."""
        return QueueSpec(
            f"{self.prefix}.reply.{self._owned(client_id)}",
            {"x-queue-type": "classic", "x-expires": REPLY_QUEUE_TTL_MS},
        )

    def job(self, job_id: str) -> QueueSpec:
        """One per bulk job: results wait there while the job's client is away."""
        return QueueSpec(
            f"{self.prefix}.job.{self._owned(job_id)}",
            {"x-queue-type": "classic", "x-expires": JOB_QUEUE_TTL_MS},
        )

    def owns(self, user_id: str | None, reply_to: str) -> bool:
        """Whether `reply_to` is one of `user_id`'s own queues (least-privilege names)."""
        if not user_id or not OWNER_NAME.match(user_id):
            return False
        return any(
            reply_to.startswith(f"{self.prefix}.{kind}.{user_id}.") for kind in ("reply", "job")
        )

    def _owned(self, local_id: str) -> str:
        return f"{self.owner}.{local_id}" if self.least_privilege else local_id

    def _request_queue(self, lane: str) -> QueueSpec:
        # The delivery limit and the dead-letter target are explicit so RabbitMQ 3.10
        # (unlimited by default) and 4.x (20 by default) behave alike; at-least-once
        # dead-lettering keeps a poison message until the dead queue confirms it.
        # A full queue nacks new publishes (reject-publish): producers learn of
        # overload at once instead of queueing without limit. Requests carry their
        # deadline as `expiration`, so the broker drops (dead-letters) what expired.
        return QueueSpec(
            f"{self.prefix}.{lane}",
            {
                "x-queue-type": "quorum",
                "x-delivery-limit": DELIVERY_LIMIT,
                "x-dead-letter-exchange": self.dead_letter_exchange,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
                "x-max-length": self.max_queued,
                "x-max-length-bytes": self.max_queued_bytes,
            },
        )

    async def declare_shared(self, channel: AbstractChannel) -> dict[str, AbstractQueue]:
        """Declare the dead-letter path first, then the request lanes (and, for the
        least-privilege layout, the submit and replies exchanges)."""
        dead_letters = await channel.declare_exchange(
            self.dead_letter_exchange, ExchangeType.FANOUT, durable=True
        )
        dead = await self.dead.declare(channel)
        await dead.bind(dead_letters, routing_key="")
        requests = await self.requests.declare(channel)
        bulk = await self.bulk.declare(channel)
        if self.least_privilege:
            submit = await channel.declare_exchange(
                self.submit_exchange, ExchangeType.DIRECT, durable=True
            )
            for queue in (requests, bulk):
                await queue.bind(submit, routing_key=queue.name)
            await channel.declare_exchange(self.replies_exchange, ExchangeType.TOPIC, durable=True)
        return {"dead": dead, "requests": requests, "bulk": bulk}

    async def prepare_client(self, channel: AbstractChannel) -> None:
        """What a producer needs before publishing. In the least-privilege layout it
        may not declare shared queues, so it only checks that the workers did."""
        if not self.least_privilege:
            await self.declare_shared(channel)
            return
        try:
            await channel.declare_exchange(self.submit_exchange, passive=True)
        except Exception:
            raise TopologyMissing(
                f"exchange {self.submit_exchange} does not exist: start a worker (it declares "
                "the topology) or load the definitions (`recallq worker definitions --out "
                "FILE`, then `rabbitmqctl import_definitions FILE`)"
            ) from None

    async def declare_private(self, channel: AbstractChannel, spec: QueueSpec) -> AbstractQueue:
        """Declare a reply or job queue; in the least-privilege layout bind it to the
        replies exchange under its own name, which is what workers publish to."""
        queue = await spec.declare(channel)
        if self.least_privilege:
            await queue.bind(self.replies_exchange, routing_key=queue.name)
        return queue

    async def request_exchange(self, channel: AbstractChannel) -> AbstractExchange:
        """Where requests are published, with the lane's queue name as routing key."""
        if self.least_privilege:
            return await channel.get_exchange(self.submit_exchange, ensure=False)
        return channel.default_exchange

    async def reply_exchange(self, channel: AbstractChannel) -> AbstractExchange:
        """Where replies are published, with the request's reply_to as routing key."""
        if self.least_privilege:
            return await channel.get_exchange(self.replies_exchange, ensure=False)
        return channel.default_exchange

    async def delete_shared(self, channel: AbstractChannel) -> None:
        """Delete the request lanes, the dead-letter queue and the exchanges (tests, demos)."""
        for spec in (self.requests, self.bulk, self.dead):
            await channel.queue_delete(spec.name)
        for name in (self.dead_letter_exchange, self.submit_exchange, self.replies_exchange):
            await channel.exchange_delete(name)
