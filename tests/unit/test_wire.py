"""The wire module: what one side writes the other reads back, and every message that is
not one of the contract's is refused with a reason (the same reasons the worker gives)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aio_pika import DeliveryMode, Message
from aiormq.exceptions import (
    ChannelAccessRefused,
    ChannelInvalidStateError,
    ConnectionClosed,
    DeliveryError,
)
from pamqp.commands import Basic

from producer.client import (
    RetrievalOverloaded,
    RetrievalRefused,
    RetrievalUnavailable,
    publish_failure,
)
from schemas.messages import (
    CONTENT_TYPE,
    SCHEMA_HEADER,
    ErrorCode,
    RetrievalRequest,
    RetrievalResponse,
)
from schemas.wire import (
    TRANSIENT_AMQP_ERRORS,
    WireError,
    copy_request,
    read_reply,
    read_request,
    reply_message,
    request_message,
)
from worker.consume import decode
from worker.errors import InvalidMessage

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
REQUEST = RetrievalRequest(
    request_id="r-1",
    query="Which seat should I book?",
    memory_id="travel-concierge:maya",
    limits={"long_term_memory": 5},
    deadline_ms=1_795_564_800_000,
)
RESPONSE = RetrievalResponse.failure("r-1", ErrorCode.EXPIRED, "too late", worker_id="w-1")
BODY = REQUEST.model_dump_json().encode()
MAX_BYTES = 1024


def framed(body: bytes = BODY, **properties: Any) -> Message:
    """A message as a sender in any language might frame it; the contract's by default."""
    frame: dict[str, Any] = {"content_type": CONTENT_TYPE, "headers": {SCHEMA_HEADER: 1},
                             "reply_to": "replies"} | properties  # fmt: skip
    return Message(body, **frame)


def test_a_request_reads_back_as_sent_with_the_contract_s_frame() -> None:
    message = request_message(REQUEST, reply_to="recallq.reply.c1", user_id="alice",
                              expiration=5.0, trace_headers={"traceparent": PARENT})  # fmt: skip
    assert read_request(message, MAX_BYTES) == REQUEST
    assert message.content_type == CONTENT_TYPE and message.correlation_id == "r-1"
    assert message.headers == {SCHEMA_HEADER: 1, "traceparent": PARENT}
    assert (message.reply_to, message.user_id) == ("recallq.reply.c1", "alice")
    assert message.delivery_mode == DeliveryMode.PERSISTENT
    assert message.properties.expiration == "5000"
    assert b"min_score" not in message.body  # unset optional fields stay off the wire


def test_a_reply_reads_back_as_sent_with_the_contract_s_frame() -> None:
    for persistent, mode in ((True, DeliveryMode.PERSISTENT), (False, DeliveryMode.NOT_PERSISTENT)):
        message = reply_message(RESPONSE, user_id="worker", persistent=persistent,
                                trace_headers={"traceparent": PARENT})  # fmt: skip
        assert read_reply(message) == RESPONSE
        assert message.delivery_mode == mode
        assert message.content_type == CONTENT_TYPE and message.correlation_id == "r-1"
        assert message.headers == {SCHEMA_HEADER: 1, "traceparent": PARENT}
        assert message.user_id == "worker" and message.reply_to is None


def test_no_trace_header_can_stand_in_for_the_schema_header() -> None:
    message = reply_message(RESPONSE, user_id=None, persistent=False,
                            trace_headers={SCHEMA_HEADER: "2"})  # fmt: skip
    assert message.headers == {SCHEMA_HEADER: 1}


# What is wrong with a message -> the reason given, on both sides.
REFUSED: dict[str, tuple[Message, str]] = {
    "wrong content type": (
        framed(content_type="text/xml"),
        "content_type must be application/json, got 'text/xml'",
    ),
    "a boolean schema header": (
        framed(headers={SCHEMA_HEADER: True}),
        "unsupported x-recallq-schema True; this {side} speaks 1",
    ),
    "schema version 2": (
        framed(headers={SCHEMA_HEADER: 2}),
        "unsupported x-recallq-schema 2; this {side} speaks 1",
    ),
    "the version as text": (
        framed(headers={SCHEMA_HEADER: "1"}),
        "unsupported x-recallq-schema '1'; this {side} speaks 1",
    ),
    "not UTF-8": (framed(b"\xff\xfe" + BODY), "body is not UTF-8: invalid start byte at byte 0"),
    "over the size limit": (
        framed(b" " * (MAX_BYTES + 1)),
        "body is 1025 bytes, over the 1024 limit",
    ),
    "invalid JSON": (framed(b'{"request_id": "r-1", "query": '), "body: Invalid JSON: EOF"),
    "not a JSON object": (framed(b"[1, 2]"), "body: Input should be an object"),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_a_request_that_is_not_the_contract_s_is_refused_with_the_reason(case: str) -> None:
    message, reason = REFUSED[case]
    with pytest.raises(WireError) as refused:
        read_request(message, MAX_BYTES)
    assert str(refused.value).startswith(reason.format(side="worker")), refused.value
    assert isinstance(refused.value, ValueError)


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_a_reply_that_is_not_the_contract_s_is_refused_with_the_reason(case: str) -> None:
    message, reason = REFUSED[case]
    with pytest.raises(WireError) as refused:
        read_reply(message, MAX_BYTES)
    assert str(refused.value).startswith(reason.format(side="client")), refused.value


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_the_worker_gives_the_same_reasons(case: str) -> None:
    """Until consume.decode is read_request plus its reply_to check, the two must agree."""
    message, _ = REFUSED[case]
    with pytest.raises(WireError) as wire:
        read_request(message, MAX_BYTES)
    with pytest.raises(InvalidMessage) as worker:
        decode(message, MAX_BYTES)  # type: ignore[arg-type]  # reads only the message's fields
    assert str(wire.value) == str(worker.value)


def test_a_request_that_breaks_the_model_names_the_field() -> None:
    body = json.dumps({**json.loads(BODY), "memory_id": {"$ne": None}}).encode()
    with pytest.raises(WireError, match=r"^memory_id: Input should be a valid string"):
        read_request(framed(body), MAX_BYTES)


def test_a_reply_that_breaks_the_model_names_the_field() -> None:
    body = json.dumps({"request_id": "r-1", "status": "maybe"}).encode()
    with pytest.raises(WireError, match=r"^status: Input should be 'ok' or 'error'"):
        read_reply(framed(body))


def test_a_request_may_leave_out_content_type_and_schema_header() -> None:
    """Producers in other languages have always been read so: as this version."""
    assert read_request(framed(content_type=None, headers=None), MAX_BYTES) == REQUEST
    assert read_request(framed(content_type="", headers={}), MAX_BYTES) == REQUEST


def test_a_reply_without_content_type_or_schema_header_is_refused() -> None:
    """Only a recallq worker replies, and it stamps both."""
    body = RESPONSE.model_dump_json().encode()
    with pytest.raises(WireError, match="content_type must be application/json, got None"):
        read_reply(framed(body, content_type=None))
    with pytest.raises(WireError, match="unsupported x-recallq-schema None; this client speaks"):
        read_reply(framed(body, headers={}))


def test_a_reply_has_no_size_limit_unless_asked() -> None:
    body = RESPONSE.model_dump_json().encode()
    assert read_reply(framed(body)) == RESPONSE
    with pytest.raises(WireError, match="over the 10 limit"):
        read_reply(framed(body), max_bytes=10)


def test_a_copied_request_is_framed_as_its_sender_framed_it() -> None:
    sent = framed(
        b"not even JSON",  # copied unread: the dead-letter requeue does not judge it
        correlation_id="r-9", user_id="alice", delivery_mode=DeliveryMode.PERSISTENT,
        headers={SCHEMA_HEADER: 1, "traceparent": PARENT, "x-death": [{"count": 1}]},
        expiration=1.0,
    )  # fmt: skip
    copy = copy_request(sent, drop_headers={"x-death"})
    assert copy.body == sent.body and copy.headers == {SCHEMA_HEADER: 1, "traceparent": PARENT}
    assert (copy.content_type, copy.correlation_id, copy.reply_to, copy.user_id) == (
        CONTENT_TYPE, "r-9", "replies", "alice",
    )  # fmt: skip
    assert copy.delivery_mode == DeliveryMode.PERSISTENT and copy.expiration is None


def test_only_a_lost_connection_or_channel_is_transient() -> None:
    assert isinstance(ConnectionClosed(320, "shutdown"), TRANSIENT_AMQP_ERRORS)
    assert isinstance(ConnectionResetError(), TRANSIENT_AMQP_ERRORS)
    assert isinstance(ChannelInvalidStateError("closed"), TRANSIENT_AMQP_ERRORS)
    refusals = [DeliveryError(None, Basic.Nack()), ChannelAccessRefused(403, "ACCESS_REFUSED")]
    assert not any(isinstance(refusal, TRANSIENT_AMQP_ERRORS) for refusal in refusals)


def test_a_producer_tells_a_full_queue_a_lost_connection_and_a_refusal_apart() -> None:
    nacked = DeliveryError(None, Basic.Nack())  # reject-publish: the queue is full
    assert isinstance(publish_failure(nacked), RetrievalOverloaded)
    assert isinstance(publish_failure(ConnectionClosed(320, "shutdown")), RetrievalUnavailable)
    refused = publish_failure(ChannelAccessRefused(403, "ACCESS_REFUSED"))
    assert isinstance(refused, RetrievalRefused) and not refused.retryable
    assert publish_failure(ValueError("a bug")) is None
