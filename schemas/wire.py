"""The framing of every recallq message, written once for both sides.

A request or a reply travels as JSON (UTF-8) with content_type application/json,
the header `x-recallq-schema: 1`, correlation_id equal to request_id and the
sender's AMQP login as user_id (the broker checks it). The worker, the RPC client,
bulk jobs and the dead-letter requeue all encode and check messages here, so a
change to the frame is made in one place and both sides read what the other writes.

Reading is as strict as the worker has always been with requests, with one leniency
kept for producers in other languages: a request without content_type or without the
schema header is read as this version. A reply comes only from a recallq worker,
which always stamps both, so a reply without them is refused.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TypeVar

from aio_pika import DeliveryMode, Message
from aio_pika.abc import AbstractMessage, HeadersType
from aio_pika.exceptions import ChannelInvalidStateError
from pydantic import BaseModel, ValidationError

from schemas.messages import (
    CONTENT_TYPE,
    SCHEMA_HEADER,
    SCHEMA_VERSION,
    RetrievalRequest,
    RetrievalResponse,
    describe_validation_error,
)

__all__ = [
    "TRANSIENT_AMQP_ERRORS",
    "WireError",
    "copy_request",
    "read_reply",
    "read_request",
    "reply_message",
    "request_message",
]

# The connection, or the channel with it, was lost under a publish or an ack: the same
# message may well go through on another try (a ConnectionError covers aiormq's
# connection errors). A broker's refusal is not in this tuple: a nack (DeliveryError,
# e.g. a full queue) or a channel closed over the message (ChannelClosed: not
# permitted, no such exchange, too large) says the same again on a retry.
TRANSIENT_AMQP_ERRORS: tuple[type[Exception], ...] = (ConnectionError, ChannelInvalidStateError)

Model = TypeVar("Model", bound=BaseModel)


class WireError(ValueError):
    """A message that is not one of this contract's; its text says what is wrong, fit
    for an invalid_request reply or a log line."""


def request_message(
    request: RetrievalRequest,
    *,
    reply_to: str,
    user_id: str,
    expiration: float | None = None,
    trace_headers: Mapping[str, str] | None = None,
) -> Message:
    """A request as RPC calls and bulk jobs send it: persistent (it may wait in a quorum
    queue through a broker restart), `expiration` seconds the broker keeps it queued
    (an RPC caller gives up after its timeout), W3C trace context as headers."""
    return Message(
        request.model_dump_json(exclude_none=True).encode(),
        content_type=CONTENT_TYPE,
        correlation_id=request.request_id,
        reply_to=reply_to,
        user_id=user_id,
        headers=_headers(trace_headers),
        delivery_mode=DeliveryMode.PERSISTENT,
        expiration=expiration,
    )


def reply_message(
    response: RetrievalResponse,
    *,
    user_id: str | None,
    persistent: bool,
    trace_headers: Mapping[str, str] | None = None,
) -> Message:
    """A worker's reply: the worker's login as user_id, so a client can tell a worker's
    reply from another user's; persistent for bulk results, which may wait hours in a
    job queue, not for RPC replies, whose caller waits seconds at most."""
    return Message(
        response.model_dump_json().encode(),
        content_type=CONTENT_TYPE,
        correlation_id=response.request_id,
        user_id=user_id,
        headers=_headers(trace_headers),
        delivery_mode=DeliveryMode.PERSISTENT if persistent else DeliveryMode.NOT_PERSISTENT,
    )


def copy_request(message: AbstractMessage, *, drop_headers: Collection[str] = ()) -> Message:
    """A received request framed as its sender framed it (body, properties, headers
    but `drop_headers`), for republishing it unread: the dead-letter requeue. Its
    expiration is not carried: the copy starts a new wait in the queue."""
    headers = {k: v for k, v in (message.headers or {}).items() if k not in drop_headers}
    return Message(
        message.body,
        headers=headers,
        content_type=message.content_type,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        user_id=message.user_id,
        delivery_mode=message.delivery_mode,
    )


def read_request(message: AbstractMessage, max_bytes: int) -> RetrievalRequest:
    """The request in `message`, or WireError saying what is wrong with it. Where the
    reply goes (reply_to) is the worker's to check: this reads the message only."""
    _check_size(message, max_bytes)
    if message.content_type not in (None, "", CONTENT_TYPE):
        raise WireError(f"content_type must be {CONTENT_TYPE}, got {message.content_type!r}")
    _check_version((message.headers or {}).get(SCHEMA_HEADER, SCHEMA_VERSION), "worker")
    return _parse(RetrievalRequest, message.body)


def read_reply(message: AbstractMessage, max_bytes: int | None = None) -> RetrievalResponse:
    """The response in `message`, or WireError saying what is wrong with it. No size
    limit by default: the worker bounds its replies (RECALLQ_MAX_REPLY_BYTES)."""
    if max_bytes is not None:
        _check_size(message, max_bytes)
    if message.content_type != CONTENT_TYPE:
        raise WireError(f"content_type must be {CONTENT_TYPE}, got {message.content_type!r}")
    _check_version((message.headers or {}).get(SCHEMA_HEADER), "client")
    return _parse(RetrievalResponse, message.body)


def _headers(trace_headers: Mapping[str, str] | None) -> HeadersType:
    """The schema header last: no trace header can stand in for it."""
    return {**(trace_headers or {}), SCHEMA_HEADER: SCHEMA_VERSION}


def _check_size(message: AbstractMessage, max_bytes: int) -> None:
    if len(message.body) > max_bytes:
        raise WireError(f"body is {len(message.body)} bytes, over the {max_bytes} limit")


def _check_version(version: object, speaker: str) -> None:
    """Strictly the integer 1: True == 1 in Python, but is no version."""
    if type(version) is not int or version != SCHEMA_VERSION:
        raise WireError(
            f"unsupported {SCHEMA_HEADER} {repr(version)[:40]}; this {speaker} speaks 1"
        )


def _parse(model: type[Model], body: bytes) -> Model:
    """`body` as `model`: UTF-8, then JSON, then the model's validation."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(f"body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        raise WireError(describe_validation_error(exc)) from None
    except Exception as exc:  # a parser limit (nesting, size) is a problem of the body too
        raise WireError(f"body cannot be parsed: {type(exc).__name__}") from None
