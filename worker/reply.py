"""Publishing replies, and the one place that decides ack, reject or nack.

A request message is acked only after its reply is confirmed by the broker, so
a worker that dies mid-batch leaves its requests to be redelivered elsewhere.
"""

from __future__ import annotations

import json
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
from worker.errors import InvalidMessage

log = structlog.get_logger(__name__)

SETTLE_ERRORS = (AMQPError, aiormq.exceptions.AMQPError, ConnectionError, RuntimeError)


class Replier:
    def __init__(self, channel: AbstractChannel, worker_id: str) -> None:
        # The channel must have publisher confirms and on_return_raises=True.
        self._channel = channel
        self._worker_id = worker_id
        self.returned = 0

    async def publish(
        self, reply_to: str, response: RetrievalResponse, *, persistent: bool = False
    ) -> None:
        """Publish and await the broker's confirm; a reply nobody can receive is logged."""
        response.worker_id = self._worker_id
        message = Message(
            response.model_dump_json().encode(),
            content_type=CONTENT_TYPE,
            correlation_id=response.request_id,
            headers={SCHEMA_HEADER: SCHEMA_VERSION},
            delivery_mode=DeliveryMode.PERSISTENT if persistent else DeliveryMode.NOT_PERSISTENT,
        )
        try:
            await self._channel.default_exchange.publish(message, reply_to, mandatory=True)
        except PublishError:
            # The requester and its reply queue are gone; retrying cannot help.
            self.returned += 1
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
            await self.publish(message.reply_to or "", response, persistent=persistent)
        except SETTLE_ERRORS as exc:
            log.warning("reply failed; requeueing", request_id=response.request_id, error=repr(exc))
            await requeue(message)
            return
        await _settle(message.ack(), response.request_id)

    async def refuse(self, message: AbstractIncomingMessage, error: InvalidMessage) -> None:
        """Reply `invalid_request` where possible, then reject without requeue: dead letter."""
        request_id = message.correlation_id or _request_id_of(message.body) or ""
        log.warning("invalid request", request_id=request_id, error=str(error))
        if message.reply_to:
            response = RetrievalResponse.failure(request_id, ErrorCode.INVALID_REQUEST, str(error))
            try:
                await self.publish(message.reply_to, response)
            except SETTLE_ERRORS as exc:
                log.warning("invalid reply failed", request_id=request_id, error=repr(exc))
        await _settle(message.reject(requeue=False), request_id)


async def requeue(message: AbstractIncomingMessage) -> None:
    """Not now (shutdown, lost reply channel): back to the queue for another worker.

    nack, not reject: RabbitMQ 4.3 counts only rejects toward the delivery limit.
    """
    await _settle(message.nack(requeue=True), message.correlation_id or "")


async def retry_later(message: AbstractIncomingMessage) -> None:
    """Processing crashed: reject with requeue, so the delivery limit bounds the retries."""
    await _settle(message.reject(requeue=True), message.correlation_id or "")


async def _settle(action: Awaitable[None], request_id: str) -> None:
    # A delivery tag dies with its channel: after a reconnect the ack cannot land,
    # and the broker redelivers the request; the client drops the duplicate reply.
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
