"""Consume both request lanes, decode and validate, and hand requests to the batcher.

Invalid deliveries never reach the batcher: the consumer turns them into a
`Refused` outcome (an `invalid_request` reply, then dead-lettering) for the
settle function. Whatever raises here, the delivery is still settled.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from schemas.messages import (
    RetrievalRequest,
    RetrievalResponse,
)
from schemas.topology import Topology
from schemas.wire import WireError, read_request
from worker.access.profiles import Profile, load_profile
from worker.access.tenants import TenantPolicy
from worker.batch import Batcher
from worker.deadlines import expired, past_deadline
from worker.delivery import Delivery, Envelope, QueueLane, delivery_count, safe_request_id
from worker.errors import Forbidden, ForeignReplyTo, InvalidMessage
from worker.metrics import Metrics
from worker.outcomes import Crashed, Expired, Outcome, Refused
from worker.unsettled import Unsettled

log = structlog.get_logger(__name__)


def decode(message: AbstractIncomingMessage, max_bytes: int) -> RetrievalRequest:
    """The request in `message`, or InvalidMessage saying what is wrong with it."""
    try:
        request = read_request(message, max_bytes)
    except WireError as exc:
        raise InvalidMessage(str(exc)) from None
    if not message.reply_to:
        raise InvalidMessage("reply_to is missing: there is nowhere to send the result")
    return request


Settle = Callable[[Envelope, Outcome], Awaitable[None]]


class Consumer:
    """One consumer per lane, each on its own channel with its own prefetch.

    Prefetch is per consumer (quorum queues refuse a global QoS), so a full bulk
    lane never takes the interactive lane's share of unacked deliveries.
    """

    def __init__(
        self,
        *,
        channels: dict[QueueLane, AbstractChannel],
        topology: Topology,
        batcher: Batcher[Delivery],
        count_tokens: Callable[[str], int],
        settle: Settle,
        unsettled: Unsettled,
        max_message_bytes: int,
        worker_id: str,
        metrics: Metrics,
        policy: TenantPolicy | None = None,
        profile: Profile | None = None,
    ) -> None:
        self._profile = profile or load_profile("recallq")
        self._metrics = metrics
        self._policy = policy
        self._channels = channels
        self._max_bytes = max_message_bytes
        self._worker_id = worker_id
        self.redeliveries = 0
        self._topology = topology
        self._batcher = batcher
        self._count_tokens = count_tokens
        self._settle = settle
        self._unsettled = unsettled
        self._queues: dict[
            QueueLane, AbstractQueue
        ] = {}  # strong refs: robust reconnects need them
        self._tags: dict[QueueLane, str] = {}

    async def start(self) -> None:
        await self._topology.declare_shared(self._channels[QueueLane.INTERACTIVE])
        specs = {
            QueueLane.INTERACTIVE: self._topology.requests,
            QueueLane.BULK: self._topology.bulk,
        }
        for lane, spec in specs.items():
            self._queues[lane] = await spec.declare(self._channels[lane])
            self._tags[lane] = await self._queues[lane].consume(self._callback(lane))
        log.info("consuming", queues=[q.name for q in self._queues.values()])

    async def stop(self) -> None:
        """Stop new deliveries; what is already prefetched stays unacked for the caller."""
        for lane, tag in list(self._tags.items()):
            await self._queues[lane].cancel(tag)
            del self._tags[lane]

    async def ready_messages(self) -> int:
        """Messages waiting in both request queues, not yet delivered to any consumer."""
        total = 0
        for lane, queue in self._queues.items():
            channel = await self._channels[lane].get_underlay_channel()
            declared = await channel.queue_declare(queue.name, passive=True)
            total += declared.message_count or 0
        return total

    def _callback(self, lane: QueueLane) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
        async def on_message(message: AbstractIncomingMessage) -> None:
            await self.receive(message, lane)

        return on_message

    async def receive(self, message: AbstractIncomingMessage, lane: QueueLane) -> None:
        """Open the delivery, then batch its request or settle it as refused (or crashed)."""
        received = time.monotonic()
        self._unsettled.opened(message, message.correlation_id or "")
        if message.redelivered:
            self._note_redelivery(message)
        try:
            if (late := self._accept(message, lane, received)) is not None:
                await self._settle(self._envelope(message, lane, received), late)
        except (InvalidMessage, Forbidden) as exc:
            envelope = self._envelope(message, lane, received)
            await self._settle(envelope, self._refusal(envelope, exc))
        except Exception as exc:
            log.exception("consuming a delivery crashed", request_id=message.correlation_id)
            await self._settle(self._envelope(message, lane, received), Crashed(repr(exc)))

    def _accept(
        self, message: AbstractIncomingMessage, lane: QueueLane, received: float
    ) -> Expired | None:
        """Batch the request; or Expired, when its caller has already given up (it then
        takes no batch slot: under overload the queue's tail is mostly such)."""
        request = decode(message, self._max_bytes)
        attached = request.knowledge_base_ids or []
        owner = self._profile.check(request.limits, request.filters or (), attached)
        if self._topology.least_privilege and not message.user_id:
            raise ForeignReplyTo(  # no identity: whose reply_to it names cannot be known
                "no user_id: the least-privilege topology answers only requests that carry "
                "the sender's broker-validated user_id"
            )
        if self._topology.least_privilege and not self._topology.owns(
            message.user_id, message.reply_to or ""
        ):
            raise ForeignReplyTo(
                f"reply_to {message.reply_to!r} is not a queue of user {message.user_id!r}"
            )
        if self._policy is not None:  # before any work: the model never sees a refused query
            widens = request.agent_wide and bool(
                self._profile.widened(request.limits, request.filters or ())
            )
            self._policy.check(
                message.user_id, request.memory_id, request.filters, owner,
                attached_field=self._profile.attached_field_of(request.limits),
                attached_ids=attached, agent_wide=widens,
            )  # fmt: skip
        if past_deadline(request, time.time()):
            return expired(request.request_id, self._worker_id, "while it was queued")
        envelope = Envelope(message, lane, received, request.request_id)
        tokens = self._count_tokens(request.query)
        self._batcher.put(Delivery(request, envelope, tokens), lane, tokens)
        return None

    def _envelope(
        self, message: AbstractIncomingMessage, lane: QueueLane, received: float
    ) -> Envelope:
        return Envelope(message, lane, received, safe_request_id(message))

    def _refusal(self, envelope: Envelope, exc: InvalidMessage | Forbidden) -> Refused:
        if isinstance(exc, Forbidden):
            log.warning("forbidden request", request_id=envelope.request_id, reason=str(exc))
        response = RetrievalResponse.failure(
            envelope.request_id, exc.code, str(exc), worker_id=self._worker_id
        )
        return Refused(response, silent=isinstance(exc, ForeignReplyTo))

    def _note_redelivery(self, message: AbstractIncomingMessage) -> None:
        # Another worker died (or shut down) holding it, or processing crashed.
        self._metrics.redeliveries.inc()
        self.redeliveries += 1
        log.info(
            "redelivered request",
            request_id=message.correlation_id,
            earlier_deliveries=delivery_count(message),
        )
