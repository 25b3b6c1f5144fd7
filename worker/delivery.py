"""A delivery as the worker handles it, valid or not: the message, the queue lane it
came in on, when it came, and what can safely be read from it before it is
decoded (its request id, its delivery count, its trace context).

The consumer builds an Envelope for every delivery; the batcher orders requests
by lane; the settler reads the envelope to reply and to ack, reject or nack.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum

from aio_pika.abc import AbstractIncomingMessage

from schemas.messages import MAX_SHORT_STRING_BYTES, RetrievalRequest

TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
TRACESTATE = re.compile(r"^[\x20-\x7e]{1,512}$")


class QueueLane(StrEnum):
    """Which request queue a delivery came from: interactive RPC or bulk jobs."""

    INTERACTIVE = "interactive"
    BULK = "bulk"


@dataclass(frozen=True, slots=True)
class Envelope:
    """A delivery as settling needs it, valid or not."""

    message: AbstractIncomingMessage
    lane: QueueLane
    received: float  # time.monotonic() at arrival
    request_id: str  # the validated request's, else the best safe guess, else ""


@dataclass(frozen=True, slots=True)
class Delivery:
    """A valid request and the envelope it came in, until the envelope is settled."""

    request: RetrievalRequest
    envelope: Envelope
    tokens: int  # the embedder's estimate, for the batcher's padded-cost cap

    @property
    def received(self) -> float:
        return self.envelope.received

    @property
    def lane(self) -> QueueLane:
        return self.envelope.lane


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
    if isinstance(count, int) and not isinstance(count, bool) and count > 0:
        return count
    return 1 if message.redelivered else 0


def safe_request_id(message: AbstractIncomingMessage) -> str:
    """The id to answer an undecodable message under: its correlation_id, else its body's."""
    candidate: object = message.correlation_id
    if not candidate:
        try:
            candidate = json.loads(message.body).get("request_id")
        except Exception:  # deep nesting raises RecursionError, a list has no .get ...
            return ""
    if not isinstance(candidate, str):
        return ""
    try:
        fits = 0 < len(candidate.encode("utf-8")) <= MAX_SHORT_STRING_BYTES
    except UnicodeEncodeError:
        return ""
    return candidate if fits else ""
