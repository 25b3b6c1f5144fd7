"""Consume both request lanes, decode and validate, and hand requests to the batcher.

Invalid deliveries never reach the batcher: they go straight to the settle
policy (an `invalid_request` reply, then dead-lettering).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from pydantic import ValidationError

from schemas.messages import CONTENT_TYPE, SCHEMA_HEADER, SCHEMA_VERSION, RetrievalRequest
from schemas.topology import Topology
from worker.batch import Batcher, Lane
from worker.errors import InvalidMessage, describe_validation_error
from worker.metrics import Metrics
from worker.reply import delivery_count

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Delivery:
    """A valid request and the message it came in, until the message is settled."""

    request: RetrievalRequest
    message: AbstractIncomingMessage
    lane: Lane
    received: float  # time.monotonic() at arrival
    tokens: int  # the embedder's estimate, for the batcher's padded-cost cap
    dispatched: float = 0.0


def decode(message: AbstractIncomingMessage, max_bytes: int) -> RetrievalRequest:
    """The request in `message`, or InvalidMessage saying what is wrong with it."""
    if len(message.body) > max_bytes:
        raise InvalidMessage(f"body is {len(message.body)} bytes, over the {max_bytes} limit")
    if message.content_type not in (None, "", CONTENT_TYPE):
        raise InvalidMessage(f"content_type must be {CONTENT_TYPE}, got {message.content_type!r}")
    version = (message.headers or {}).get(SCHEMA_HEADER, SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise InvalidMessage(f"unsupported {SCHEMA_HEADER} {version!r}; this worker speaks 1")
    if not message.reply_to:
        raise InvalidMessage("reply_to is missing: there is nowhere to send the result")
    try:
        text = message.body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidMessage(f"body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        return RetrievalRequest.model_validate_json(text)
    except ValidationError as exc:
        raise InvalidMessage(describe_validation_error(exc)) from None


InvalidHandler = Callable[[AbstractIncomingMessage, str], Awaitable[None]]


class Consumer:
    """One consumer per lane, each on its own channel with its own prefetch.

    Prefetch is per consumer (quorum queues refuse a global QoS), so a full bulk
    lane never takes the interactive lane's share of unacked deliveries.
    """

    def __init__(
        self,
        channels: dict[Lane, AbstractChannel],
        topology: Topology,
        batcher: Batcher[Delivery],
        count_tokens: Callable[[str], int],
        on_invalid: InvalidHandler,
        max_message_bytes: int,
        metrics: Metrics,
    ) -> None:
        self._metrics = metrics
        self._channels = channels
        self._max_bytes = max_message_bytes
        self.redeliveries = 0
        self._topology = topology
        self._batcher = batcher
        self._count_tokens = count_tokens
        self._on_invalid = on_invalid
        self._queues: dict[Lane, AbstractQueue] = {}  # strong refs: robust reconnects need them
        self._tags: dict[Lane, str] = {}

    async def start(self) -> None:
        await self._topology.declare_shared(self._channels[Lane.INTERACTIVE])
        specs = {Lane.INTERACTIVE: self._topology.requests, Lane.BULK: self._topology.bulk}
        for lane, spec in specs.items():
            self._queues[lane] = await spec.declare(self._channels[lane])
            self._tags[lane] = await self._queues[lane].consume(self._callback(lane))
        log.info("consuming", queues=[q.name for q in self._queues.values()])

    async def stop(self) -> None:
        """Stop new deliveries; what is already prefetched stays unacked for the caller."""
        for lane, tag in list(self._tags.items()):
            await self._queues[lane].cancel(tag)
            del self._tags[lane]

    def _callback(self, lane: Lane) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
        async def on_message(message: AbstractIncomingMessage) -> None:
            self._metrics.in_flight.inc()  # until the settle policy acks, rejects or nacks it
            if message.redelivered:
                self._metrics.redeliveries.inc()
                # Another worker died (or shut down) holding it, or processing crashed.
                self.redeliveries += 1
                log.info(
                    "redelivered request",
                    request_id=message.correlation_id,
                    earlier_deliveries=delivery_count(message),
                )
            try:
                request = decode(message, self._max_bytes)
            except InvalidMessage as exc:
                await self._on_invalid(message, str(exc))
                return
            tokens = self._count_tokens(request.query)
            delivery = Delivery(request, message, lane, time.monotonic(), tokens)
            self._batcher.put(delivery, lane, tokens)

        return on_message
