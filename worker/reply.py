"""Publishing replies, and the one place that decides ack, reject or nack.

| outcome                    | reply                    | then                              |
| -------------------------- | ------------------------ | --------------------------------- |
| Answered (ok, final error) | the response             | ack                               |
| Refused (invalid, forbidden) | the error, if reply_to | reject, no requeue: dead-lettered |
| Refused, silent            | none (foreign reply_to)  | reject, no requeue: dead-lettered |
| Expired (deadline passed)  | `expired`                | ack                               |
| Crashed, deliveries left   | none                     | reject + requeue (counted)        |
| Crashed, last delivery     | `internal`               | reject, no requeue: dead-lettered |
| NotNow (shutdown)          | none                     | nack + requeue (not counted)      |

When a reply cannot be sent:

| what failed                                            | then                                   |
| ------------------------------------------------------ | -------------------------------------- |
| an answer, the connection or its channel lost under it | nack + requeue: another try answers it |
| an answer refused by the broker (nacked: the reply     | as Crashed: retried, then given up     |
| queue refuses publishes; the channel closed over it:   |                                        |
| too large, not permitted), or anything else            |                                        |
| an answer returned (no reply queue: its caller left)   | logged, counted; ack                   |
| a refusal or an `internal` reply                       | logged; dead-lettered all the same     |
| cancelled (shutdown past its grace period)             | nack + requeue                         |

reject counts toward the delivery limit on RabbitMQ 4.3, nack does not: a
real failure rejects, "not now" nacks. A reply the broker refused is a real
failure: nacking it would requeue the request for ever on 4.x (the same
refusal every time), so it takes the Crashed route, bounded on 3.x and 4.x
alike by the request's own delivery count. A request is acked only after its reply
is confirmed, so a worker that dies mid-batch leaves it to be redelivered.
Whatever raises, each delivery is settled exactly once; if the settle call
itself fails (its channel closed), the broker requeues the delivery.
"""

from __future__ import annotations

import functools
from enum import Enum

import structlog
from aio_pika.abc import AbstractChannel
from aio_pika.exceptions import AMQPError, PublishError

from schemas.messages import ErrorCode, RetrievalResponse
from schemas.topology import DELIVERY_LIMIT, Topology
from schemas.wire import TRANSIENT_AMQP_ERRORS, reply_message
from worker.delivery import Envelope, QueueLane, delivery_count, trace_headers
from worker.metrics import Metrics
from worker.outcomes import Answered, Crashed, Expired, NotNow, Outcome, Refused
from worker.unsettled import Unsettled

log = structlog.get_logger(__name__)
MAX_REPLY_BYTES = 4 * 2**20

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


class Verdict(Enum):
    ACK = "ack"
    DEAD = "reject"  # no requeue: to the dead-letter queue
    RETRY = "reject+requeue"  # counted toward the delivery limit
    LATER = "nack+requeue"  # not counted


class Settler:
    def __init__(
        self,
        *,
        channel: AbstractChannel,
        worker_id: str,
        metrics: Metrics,
        unsettled: Unsettled,
        user_id: str | None = None,
        max_reply_bytes: int = MAX_REPLY_BYTES,
        topology: Topology | None = None,
    ) -> None:
        # The channel must have publisher confirms and on_return_raises=True. `user_id`,
        # the worker's AMQP login, goes on every reply: clients can check who sent it.
        self._channel = channel
        self._topology = topology or Topology()
        self._user_id = user_id
        self._max_reply_bytes = max_reply_bytes
        self._worker_id = worker_id
        self._metrics = metrics
        self._unsettled = unsettled

    async def settle(self, envelope: Envelope, outcome: Outcome) -> None:
        """Send the outcome's reply, then ack, reject or nack: once, whatever raises."""
        verdict = Verdict.LATER  # cancelled before a verdict: give the request back
        try:
            verdict = await self._reply(envelope, outcome)
        except Exception as exc:
            verdict = await self._reply_failed(envelope, exc)
        finally:
            message = envelope.message
            try:
                match verdict:
                    case Verdict.ACK:
                        await message.ack()
                    case Verdict.DEAD:
                        await message.reject(requeue=False)
                    case Verdict.RETRY:
                        await message.reject(requeue=True)
                    case Verdict.LATER:
                        await message.nack(requeue=True)
            except Exception as exc:
                # A delivery tag dies with its channel: the broker has already requeued
                # the delivery, and the client drops a duplicate reply.
                log.warning("settle failed", request_id=envelope.request_id, error=repr(exc))
            finally:
                self._unsettled.closed(message)

    async def _reply(self, envelope: Envelope, outcome: Outcome) -> Verdict:
        """The policy table above, row by row."""
        match outcome:
            case Answered(response):
                await self._publish(envelope, response)
                return Verdict.ACK
            case Refused(response, silent=True):
                self._observe(envelope, response)
                return Verdict.DEAD
            case Refused(response):
                await self._publish_best_effort(envelope, response)
                return Verdict.DEAD
            case Expired(response):
                await self._publish_best_effort(envelope, response)
                return Verdict.ACK
            case Crashed(error) if delivery_count(envelope.message) + 1 >= DELIVERY_LIMIT:
                log.error("request gave up", request_id=envelope.request_id, error=error)
                await self._publish_best_effort(envelope, self._gave_up(envelope.request_id))
                return Verdict.DEAD
            case Crashed(error):
                log.warning(
                    "request crashed; retrying", request_id=envelope.request_id, error=error
                )
                return Verdict.RETRY
            case NotNow(reason):
                log.info("request put back", request_id=envelope.request_id, reason=reason)
                return Verdict.LATER

    async def _reply_failed(self, envelope: Envelope, exc: Exception) -> Verdict:
        if isinstance(exc, TRANSIENT_AMQP_ERRORS):
            log.warning("reply failed; requeueing", request_id=envelope.request_id, error=repr(exc))
            return Verdict.LATER
        if isinstance(exc, AMQPError):
            self._metrics.refused_replies.inc()
            return await self._reply(envelope, Crashed(f"the broker refused the reply: {exc!r}"))
        return await self._reply(envelope, Crashed(f"reply could not be sent: {exc!r}"))

    async def _publish(self, envelope: Envelope, response: RetrievalResponse) -> None:
        """Publish and await the broker's confirm; a reply nobody can receive is logged."""
        message = envelope.message
        # Bulk results may wait hours in a job queue, so they survive a broker restart;
        # an RPC caller waits seconds at most, so its reply skips the disk.
        persistent = envelope.lane is QueueLane.BULK
        frame = functools.partial(
            reply_message,
            user_id=self._user_id,
            persistent=persistent,
            trace_headers=trace_headers(message),
        )
        reply = frame(response)
        if len(reply.body) > self._max_reply_bytes:  # over the broker's limit it would never arrive
            response = self._too_large(response.request_id, len(reply.body))
            reply = frame(response)
        # RabbitMQ 3.x returns a mandatory message to direct reply-to though it delivers
        # it: there, a return would say nothing about the caller.
        reply_to = message.reply_to or ""
        mandatory = not reply_to.startswith(DIRECT_REPLY_TO)
        try:
            exchange = await self._topology.reply_exchange(self._channel)
            await exchange.publish(reply, reply_to, mandatory=mandatory)
        except PublishError:
            # The requester and its reply queue are gone; retrying cannot help.
            self._metrics.returned_replies.inc()
            log.warning("reply returned", request_id=response.request_id, to=message.reply_to)
        self._observe(envelope, response)

    async def _publish_best_effort(self, envelope: Envelope, response: RetrievalResponse) -> None:
        if not envelope.message.reply_to:
            self._observe(envelope, response)
            return
        try:
            await self._publish(envelope, response)
        except Exception as exc:
            log.warning("error reply failed", request_id=response.request_id, error=repr(exc))

    def _too_large(self, request_id: str, size: int) -> RetrievalResponse:
        log.warning("reply over the size limit", request_id=request_id, size=size)
        return RetrievalResponse.failure(
            request_id,
            ErrorCode.INVALID_REQUEST,
            f"the reply would be {size} bytes, over RECALLQ_MAX_REPLY_BYTES "
            f"({self._max_reply_bytes}): ask for fewer hits or memory types",
            worker_id=self._worker_id,
        )

    def _gave_up(self, request_id: str) -> RetrievalResponse:
        return RetrievalResponse.failure(
            request_id,
            ErrorCode.INTERNAL,
            f"processing failed on {DELIVERY_LIMIT} attempts; the request is dead-lettered",
            worker_id=self._worker_id,
        )

    def _observe(self, envelope: Envelope, response: RetrievalResponse) -> None:
        code = response.error.code.value if response.error else ""
        self._metrics.requests.labels(status=response.status, code=code).inc()
        self._metrics.request_seconds.labels(
            lane=envelope.lane.value, status=response.status
        ).observe(response.timings.total_ms / 1000)
