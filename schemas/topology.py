"""Queue topology as data, declared idempotently by producers and workers alike.

Every name derives from one prefix, so a test run (or a second deployment on the
same broker) can live beside another without sharing queues.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel, AbstractQueue

DELIVERY_LIMIT = 5
MAX_QUEUED = 100_000
REPLY_QUEUE_TTL_MS = 60_000
JOB_QUEUE_TTL_MS = 24 * 3600 * 1000


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
    """The queues of one recallq deployment, named from `prefix`."""

    prefix: str = "recallq"
    max_queued: int = MAX_QUEUED  # per request queue; past it the broker refuses publishes

    @property
    def dead(self) -> QueueSpec:
        return QueueSpec(f"{self.prefix}.dead", {"x-queue-type": "quorum"})

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
            f"{self.prefix}.reply.{client_id}",
            {"x-queue-type": "classic", "x-expires": REPLY_QUEUE_TTL_MS},
        )

    def job(self, job_id: str) -> QueueSpec:
        """One per bulk job: results wait there while the job's client is away."""
        return QueueSpec(
            f"{self.prefix}.job.{job_id}",
            {"x-queue-type": "classic", "x-expires": JOB_QUEUE_TTL_MS},
        )

    def _request_queue(self, lane: str) -> QueueSpec:
        # The delivery limit and the dead-letter target are explicit so RabbitMQ 3.10
        # (unlimited by default) and 4.x (20 by default) behave alike; at-least-once
        # dead-lettering keeps a poison message until the dead queue confirms it.
        # A full queue nacks new publishes (reject-publish): producers learn of
        # overload at once instead of queueing without limit.
        return QueueSpec(
            f"{self.prefix}.{lane}",
            {
                "x-queue-type": "quorum",
                "x-delivery-limit": DELIVERY_LIMIT,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": f"{self.prefix}.dead",
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
                "x-max-length": self.max_queued,
            },
        )

    async def declare_shared(self, channel: AbstractChannel) -> dict[str, AbstractQueue]:
        """Declare the dead-letter queue first, then the two request lanes."""
        dead = await self.dead.declare(channel)
        requests = await self.requests.declare(channel)
        bulk = await self.bulk.declare(channel)
        return {"dead": dead, "requests": requests, "bulk": bulk}

    async def delete_shared(self, channel: AbstractChannel) -> None:
        """Delete the request lanes and the dead-letter queue (tests, demos, teardown)."""
        for spec in (self.requests, self.bulk, self.dead):
            await channel.queue_delete(spec.name)
