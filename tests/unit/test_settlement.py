"""Settlement is total: whatever raises, in any stage or in settling itself, every
delivery ends acked, rejected or nacked exactly once.

The consumer, the batcher, `process` (the real model, the real SQLite store) and
the settle function run as in the worker; the broker's side is a recording stand-in
(a message that counts its settle calls, a channel whose publish can fail), so that
each call can be made to raise. The same messages go through a real broker in
tests/integration/test_hostile_input.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiormq
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.messages import SCHEMA_HEADER, ErrorCode, MemoryHit, RetrievalResponse
from schemas.topology import DELIVERY_LIMIT, Topology
from tests.stores import WrappedStore
from worker.batch import Batcher
from worker.consume import Consumer
from worker.delivery import Delivery, Envelope, QueueLane
from worker.embedding.embedder import Embedder
from worker.errors import EmbeddingRefused, EmbeddingUnavailable, StoreMismatch, StoreUnavailable
from worker.metrics import Metrics
from worker.outcomes import Answered
from worker.pipeline import Dependencies
from worker.reply import Settler
from worker.service import process_and_settle
from worker.store import GroupResult, SearchGroup, SQLiteStore
from worker.unsettled import Unsettled

ERRORS: list[Callable[[], Exception]] = [
    lambda: RuntimeError("a bug"),
    lambda: ValueError("bad value"),
    lambda: TypeError("cannot encode"),
    lambda: RecursionError("too deep"),
    lambda: KeyError("missing"),
    lambda: ConnectionError("reset by peer"),
    lambda: aiormq.exceptions.ChannelInvalidStateError("channel closed"),
    lambda: StoreUnavailable("store down"),
    lambda: EmbeddingUnavailable("the provider gave no vectors in time"),
    lambda: EmbeddingRefused("401: check RECALLQ_EMBED_API_KEY"),
    lambda: StoreMismatch("dimensions differ"),
    lambda: TimeoutError(),
]
Faults = dict[int, Callable[[], Exception]]  # call number -> what that call raises
faults = st.dictionaries(st.integers(0, 15), st.sampled_from(ERRORS), max_size=4)


class Calls:
    """Numbers the calls to one stage and raises where the plan says."""

    def __init__(self, plan: Faults) -> None:
        self.plan = plan
        self.count = 0

    def next(self) -> None:
        number = self.count
        self.count += 1
        if number in self.plan:
            raise self.plan[number]()


@dataclass
class RecordingMessage:
    """What the consumer and the settle function read of an aio-pika delivery."""

    body: bytes
    correlation_id: str | None
    reply_to: str | None = "reply-queue"
    headers: dict[str, Any] = field(default_factory=dict)
    content_type: str | None = "application/json"
    redelivered: bool = False
    settled: list[str] = field(default_factory=list)
    fail: Calls | None = None

    async def ack(self) -> None:
        await self._settle("ack")

    async def reject(self, requeue: bool = False) -> None:
        await self._settle("reject+requeue" if requeue else "reject")

    async def nack(self, requeue: bool = True) -> None:
        await self._settle("nack+requeue" if requeue else "nack")

    async def _settle(self, how: str) -> None:
        self.settled.append(how)  # the call was made, whatever happens next
        if self.fail is not None:
            self.fail.next()

    __hash__ = object.__hash__  # identity, as aio-pika's messages


class FaultyChannel:
    def __init__(self, fail: Calls) -> None:
        self.default_exchange = self
        self.published: list[Any] = []
        self._fail = fail

    async def publish(self, message: Any, routing_key: str, mandatory: bool = False) -> None:
        self._fail.next()
        if len((message.correlation_id or "").encode()) > 255:
            raise ValueError("correlation_id is over 255 bytes")  # as the AMQP encoder
        self.published.append(message)


class FaultyStore(WrappedStore):
    def __init__(self, store: SQLiteStore, fail: Calls) -> None:
        super().__init__(store)
        self._fail = fail

    async def search(self, groups: Sequence[SearchGroup]) -> list[GroupResult]:
        self._fail.next()
        return await self.store.search(groups)


def request(request_id: str, **extra: Any) -> bytes:
    body = {"request_id": request_id, "query": "knee pain", "memory_id": "health-coach:sam"}
    return json.dumps({**body, "limits": {"long_term_memory": 2}, **extra}).encode()


DEEP = b"[" * 30_000 + b"]" * 30_000  # 60 KB, under the size limit: a parser must refuse it
KINDS: dict[str, Callable[[int], RecordingMessage]] = {
    "good": lambda n: RecordingMessage(request(f"good-{n}"), f"good-{n}"),
    "expired": lambda n: RecordingMessage(request(f"late-{n}", deadline_ms=1000), f"late-{n}"),
    "emoji id": lambda n: RecordingMessage(request("🙂" * 128), None),
    "deep": lambda n: RecordingMessage(DEEP, None),
    "not json": lambda n: RecordingMessage(b"\xff{", f"bad-{n}"),
    "schema true": lambda n: RecordingMessage(
        request(f"t-{n}"), f"t-{n}", headers={SCHEMA_HEADER: True}
    ),
    "huge deadline": lambda n: RecordingMessage(request(f"h-{n}", deadline_ms=10**400), f"h-{n}"),
    "no reply_to": lambda n: RecordingMessage(request(f"n-{n}"), f"n-{n}", reply_to=None),
}  # fmt: skip


@dataclass
class Plan:
    kinds: list[str]
    deliveries: list[int]
    lanes: list[QueueLane]
    tokens: Faults
    embed: Faults
    search: Faults
    publish: Faults
    settle: Faults


plans = st.integers(1, 12).flatmap(
    lambda n: st.builds(
        Plan,
        kinds=st.lists(st.sampled_from(sorted(KINDS)), min_size=n, max_size=n),
        deliveries=st.lists(st.integers(0, DELIVERY_LIMIT), min_size=n, max_size=n),
        lanes=st.lists(st.sampled_from(list(QueueLane)), min_size=n, max_size=n),
        tokens=faults,
        embed=faults,
        search=faults,
        publish=faults,
        settle=faults,
    )
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(plan=plans)
async def test_every_delivery_is_settled_exactly_once_whatever_raises(
    plan: Plan, embedder: Embedder, demo_store: SQLiteStore
) -> None:
    settle_fail = Calls(plan.settle)
    messages = [KINDS[kind](n) for n, kind in enumerate(plan.kinds)]
    for message, count in zip(messages, plan.deliveries, strict=True):
        message.headers["x-delivery-count"] = count
        message.redelivered = count > 0
        message.fail = settle_fail
    metrics, unsettled = Metrics(), Unsettled(60)
    channel = FaultyChannel(Calls(plan.publish))
    settler = Settler(channel=channel, worker_id="w-test", metrics=metrics, unsettled=unsettled)  # type: ignore[arg-type]
    batcher: Batcher[Delivery] = Batcher()
    tokens, embed_fail = Calls(plan.tokens), Calls(plan.embed)

    def count_tokens(text: str) -> int:
        tokens.next()
        return embedder.count_tokens(text)

    async def embed(texts: Sequence[str], deadline: float | None = None) -> np.ndarray:
        embed_fail.next()
        return await embedder.embed(texts, deadline)

    consumer = Consumer(
        channels={}, topology=Topology("t"), batcher=batcher, count_tokens=count_tokens,
        settle=settler.settle, unsettled=unsettled, max_message_bytes=65536, worker_id="w-test",
        metrics=metrics,
    )  # fmt: skip
    store = FaultyStore(demo_store, Calls(plan.search))
    deps = Dependencies(embed=embed, store=store, store_retry_s=0.2)  # type: ignore[arg-type]

    for message, lane in zip(messages, plan.lanes, strict=True):
        await consumer.receive(message, lane)  # type: ignore[arg-type]
    while len(batcher):
        await process_and_settle(await batcher.next_batch(), deps, settler.settle)

    for message in messages:
        assert len(message.settled) == 1, (message.body[:60], message.settled)
    assert len(unsettled) == 0
    for message in channel.published:
        assert len((message.correlation_id or "").encode()) <= 255
    if not any((plan.tokens, plan.embed, plan.search, plan.publish, plan.settle)):
        for kind, message in zip(plan.kinds, messages, strict=True):
            acked = kind in ("good", "expired")  # an expired request is answered, not dead
            assert message.settled == (["ack"] if acked else ["reject"]), kind


async def test_a_reply_over_the_size_limit_is_one_clear_error_and_one_ack() -> None:
    channel = FaultyChannel(Calls({}))
    unsettled = Unsettled(60)
    settler = Settler(
        channel=channel, worker_id="w", metrics=Metrics(), unsettled=unsettled, max_reply_bytes=4096
    )  # type: ignore[arg-type]
    message = RecordingMessage(request("big"), "big")
    hits = [
        MemoryHit(
            id=f"m{i}",
            memory_type="long_term_memory",
            content="x" * 500,
            timestamp=0.0,
            score=0.5,
            signal=0.5,
        )
        for i in range(20)
    ]
    big = RetrievalResponse(request_id="big", status="ok", results={"long_term_memory": hits})
    envelope = Envelope(message, QueueLane.INTERACTIVE, 0.0, "big")  # type: ignore[arg-type]
    unsettled.opened(message, "big")
    await settler.settle(envelope, Answered(big))
    assert message.settled == ["ack"]
    [reply] = channel.published
    sent = RetrievalResponse.model_validate_json(reply.body)
    assert sent.status == "error" and sent.error is not None
    assert sent.error.code == ErrorCode.INVALID_REQUEST
    assert "RECALLQ_MAX_REPLY_BYTES" in sent.error.message
    assert len(reply.body) < 4096
