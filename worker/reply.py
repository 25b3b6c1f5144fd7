"""Publishing replies, and the one place that decides ack, reject or nack.

| outcome                                   | reply                  | then                       |
| ----------------------------------------- | ---------------------- | -------------------------- |
| answered (ok, or a final error)           | the response           | ack                        |
| refused (invalid, expired)                | the error, if reply_to | reject, no requeue: dead   |
| crashed, attempts left                    | none                   | reject + requeue (counted) |
| crashed on the last attempt               | `internal`             | reject, no requeue: dead   |
| not now (shutdown, reply channel lost)    | none                   | nack + requeue (uncounted) |

A request is acked only after its reply is confirmed by the broker, so a worker
that dies mid-batch leaves its requests to be redelivered to another.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable

import aiormq
import structlog
from aio_pika import DeliveryMode, Message
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aio_pika.exceptions import AMQPError, PublishError

from schemas.messages import (
    CONTENT_TYPE,
    SCHEMA_HEADER,
    SCHEMA_VERSION,
    ErrorCode,
    RetrievalResponse,
)
from schemas.topology import DELIVERY_LIMIT
from worker.metrics import Metrics

log = structlog.get_logger(__name__)

SETTLE_ERRORS = (AMQPError, aiormq.exceptions.AMQPError, ConnectionError, RuntimeError)


TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
TRACESTATE = re.compile(r"^[\x20-\x7e]{1,512}$")


def trace_headers(message: AbstractIncomingMessage) -> dict[str, str]:
    """W3C trace context to carry from request to reply; anything malformed is dropped."""
    headers = message.headers or {}
    parent, state = headers.get("traceparent"), headers.get("tracestate")
    if not (isinstance(parent, str) and TRACEPARENT.match(parent)):
        return {}
    carried = {"traceparent": parent}
    if isinstance(state, str) and TRACESTATE.match(state):
        carried["tracestate"] = state
    return carried


def delivery_count(message: AbstractIncomingMessage) -> int:
    """Earlier deliveries of this message (quorum queues count them in x-delivery-count)."""
    count = (message.headers or {}).get("x-delivery-count", 0)
    if isinstance(count, int) and count > 0:
        return count
    return 1 if message.redelivered else 0


class Replier:
    def __init__(self, channel: AbstractChannel, worker_id: str, metrics: Metrics) -> None:
        # The channel must have publisher confirms and on_return_raises=True.
        self._channel = channel
        self._worker_id = worker_id
        self._metrics = metrics

    async def publish(
        self,
        reply_to: str,
        response: RetrievalResponse,
        *,
        persistent: bool = False,
        trace: dict[str, str] | None = None,
    ) -> None:
        """Publish and await the broker's confirm; a reply nobody can receive is logged."""
        response.worker_id = self._worker_id
        message = Message(
            response.model_dump_json().encode(),
            content_type=CONTENT_TYPE,
            correlation_id=response.request_id,
            headers={SCHEMA_HEADER: SCHEMA_VERSION, **(trace or {})},
            delivery_mode=DeliveryMode.PERSISTENT if persistent else DeliveryMode.NOT_PERSISTENT,
        )
        try:
            await self._channel.default_exchange.publish(message, reply_to, mandatory=True)
        except PublishError:
            # The requester and its reply queue are gone; retrying cannot help.
            self._metrics.returned_replies.inc()
            log.warning("reply returned", request_id=response.request_id, reply_to=reply_to)

    async def answer(
        self,
        message: AbstractIncomingMessage,
        response: RetrievalResponse,
        *,
        persistent: bool = False,
    ) -> None:
        """Reply, then ack: the request is done (answered `ok` or with a final error)."""
        try:
            await self.publish(
                message.reply_to or "",
                response,
                persistent=persistent,
                trace=trace_headers(message),
            )
        except SETTLE_ERRORS as exc:
            log.warning("reply failed; requeueing", request_id=response.request_id, error=repr(exc))
            await self.requeue(message)
            return
        self._count(response)
        await self._settle(message.ack(), response.request_id)

    async def refuse(self, message: AbstractIncomingMessage, response: RetrievalResponse) -> None:
        """Reply with the error where there is a reply_to, then dead-letter the message."""
        log.warning(
            "request refused",
            request_id=response.request_id,
            code=response.error.code if response.error else None,
            error=response.error.message if response.error else None,
        )
        if message.reply_to:
            try:
                await self.publish(message.reply_to, response, trace=trace_headers(message))
            except SETTLE_ERRORS as exc:
                log.warning("refusal reply failed", request_id=response.request_id, error=repr(exc))
        self._count(response)
        await self._settle(message.reject(requeue=False), response.request_id)

    async def refuse_invalid(self, message: AbstractIncomingMessage, reason: str) -> None:
        request_id = message.correlation_id or _request_id_of(message.body) or ""
        response = RetrievalResponse.failure(request_id, ErrorCode.INVALID_REQUEST, reason)
        await self.refuse(message, response)

    async def crashed(self, message: AbstractIncomingMessage, request_id: str) -> None:
        """Processing raised: retry elsewhere while attempts remain, then answer and give up."""
        if delivery_count(message) + 1 >= DELIVERY_LIMIT:
            response = RetrievalResponse.failure(
                request_id,
                ErrorCode.INTERNAL,
                f"processing failed on {DELIVERY_LIMIT} attempts; the request is dead-lettered",
            )
            await self.refuse(message, response)
            return
        # reject, not nack: RabbitMQ 4.3 counts only rejects toward the delivery limit.
        await self._settle(message.reject(requeue=True), request_id)

    async def requeue(self, message: AbstractIncomingMessage) -> None:
        """Not now (shutdown, lost reply channel): back to the queue for another worker.

        nack, not reject: RabbitMQ 4.3 counts only rejects toward the delivery limit.
        """
        await self._settle(message.nack(requeue=True), message.correlation_id or "")

    def _count(self, response: RetrievalResponse) -> None:
        code = response.error.code.value if response.error else ""
        self._metrics.requests.labels(status=response.status, code=code).inc()

    async def _settle(self, action: Awaitable[None], request_id: str) -> None:
        # A delivery tag dies with its channel: after a reconnect the ack cannot land,
        # and the broker redelivers the request; the client drops the duplicate reply.
        self._metrics.in_flight.dec()
        try:
            await action
        except SETTLE_ERRORS as exc:
            log.warning("settle failed", request_id=request_id, error=repr(exc))


def _request_id_of(body: bytes) -> str | None:
    try:
        value = json.loads(body).get("request_id")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, str) and 0 < len(value) <= 128 else None
