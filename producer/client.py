"""Publish-and-await RPC over RabbitMQ.

One durable reply queue per client instance (with x-expires, so it is cleaned
up after the client leaves), named by the client's id so it keeps its name
across reconnects. Replies are matched by correlation id; a second reply for the
same request (a redelivery answered twice) is dropped.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import structlog
from aio_pika import Message
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.exceptions import AMQPError, DeliveryError

from schemas.connect import connect_waiting
from schemas.messages import (
    ErrorCode,
    Fusion,
    MemoryType,
    RankWeights,
    RetrievalRequest,
    RetrievalResponse,
    SearchMode,
)
from schemas.settings import BrokerSettings
from schemas.wire import TRANSIENT_AMQP_ERRORS, WireError, read_reply, request_message

log = structlog.get_logger(__name__)

Limits = Mapping[MemoryType, int] | Mapping[str, int]
CLIENT_WAIT = "RECALLQ_CLIENT_CONNECT_WAIT_S"


class RetrievalError(Exception):
    """A call that got no response; `retryable` says whether trying again may succeed."""

    code = ErrorCode.INTERNAL
    retryable = True


class RetrievalTimeout(RetrievalError, TimeoutError):
    """No reply within the call's timeout; the request may still be answered later."""

    code = ErrorCode.EXPIRED


class RetrievalOverloaded(RetrievalError):
    """The broker refused the request: its queue is full (RECALLQ_MAX_QUEUED)."""

    code = ErrorCode.OVERLOADED


class RetrievalUnavailable(RetrievalError):
    """The broker connection failed while publishing; it reconnects by itself."""


class RetrievalRefused(RetrievalError):
    """The broker refused the publish itself (not a full queue): no permission to publish
    there, no such exchange, a message over its size limit. The same again would fail."""

    retryable = False


@dataclass(frozen=True)
class Query:
    """What to retrieve: one query text, one memory_id, a hit limit per memory type, and
    optional scope filters (e.g. {"user_id": "alice"})."""

    query: str
    memory_id: str
    limits: Limits
    min_score: float | None = None
    weights: RankWeights | None = None
    filters: Mapping[str, str] | None = None
    search: SearchMode | None = None  # vector, lexical or hybrid; None: the worker's default
    fusion: Fusion | None = None
    knowledge_base_ids: Sequence[str] | None = None  # memorizz's attached knowledge bases
    ranking: Literal["signal", "memorizz"] | None = None  # None: the worker's default (signal)
    # memorizz's agent-wide rows (no user_id) beside a user_id filter, in the stores where
    # memorizz shares them; sent only where the request schema has the option.
    agent_wide: bool | None = None


async def connect_client(
    settings: BrokerSettings, wait_s: float | None, connection_name: str
) -> AbstractRobustConnection:
    """The broker connection of an RPC client or a bulk job: a person is usually
    waiting, so by default it waits RECALLQ_CLIENT_CONNECT_WAIT_S (seconds, not a
    worker's minute) and logs the first retry only."""
    setting = CLIENT_WAIT if wait_s is None else "the client's connect_wait_s"
    wait = settings.client_connect_wait_s if wait_s is None else wait_s
    return await connect_waiting(
        settings.amqp_url, wait, connection_name, wait_setting=setting, each_retry=False
    )


def optional_fields(query: Query) -> dict[str, Any]:
    """The request fields a query sets only when given, so a request without them reads
    exactly as before (and a worker of an older schema accepts it)."""
    fields: dict[str, Any] = {}
    if query.ranking is not None:
        fields["ranking"] = query.ranking
    if query.agent_wide is not None:
        fields["agent_wide"] = query.agent_wide
    return fields


def publish_failure(exc: Exception) -> RetrievalError | None:
    """What a failed request publish means to a caller: a full queue (the broker nacked
    it), a lost connection (it comes back by itself) or a refusal; None for anything
    that is not the broker's answer."""
    if isinstance(exc, DeliveryError):  # nacked: reject-publish on a full queue
        return RetrievalOverloaded("the request queue is full; retry later")
    if isinstance(exc, TRANSIENT_AMQP_ERRORS):
        return RetrievalUnavailable(f"publish failed: {exc!r}; retry later")
    if isinstance(exc, AMQPError):
        return RetrievalRefused(f"the broker refused the request: {exc!r}")
    return None


class RetrievalClient:
    def __init__(
        self,
        settings: BrokerSettings | None = None,
        *,
        client_id: str | None = None,
        timeout: float = 10.0,
        connect_wait_s: float | None = None,
    ) -> None:
        """`connect_wait_s`: how long to wait for a broker not reachable yet; default
        RECALLQ_CLIENT_CONNECT_WAIT_S."""
        self.settings = settings or BrokerSettings()
        self.client_id = client_id or uuid.uuid4().hex
        self.timeout = timeout
        self.connect_wait_s = connect_wait_s
        self.dropped_replies = 0  # duplicate or late
        self.rejected_replies = 0  # not from a trusted worker identity
        self.unreadable_replies = 0  # not a reply of this contract (frame or body)
        self._topology = self.settings.topology
        self._pending: dict[str, asyncio.Future[RetrievalResponse]] = {}
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._reply_queue: AbstractQueue | None = None  # strong ref for robust reconnects

    async def __aenter__(self) -> RetrievalClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def reply_queue_name(self) -> str:
        return self._topology.reply(self.client_id).name

    @property
    def connected(self) -> bool:
        """Whether the broker connection is up now (it reconnects by itself when lost): a
        caller that cannot wait may fail fast instead of publishing into a reconnect."""
        return self._connection is not None and self._connection.connected.is_set()

    async def connect(self) -> None:
        name = f"recallq-client {self.client_id}"
        self._connection = await connect_client(self.settings, self.connect_wait_s, name)
        try:
            await self._open(self._connection)
        except BaseException:
            await self.close()  # `async with` does not close what its enter raised in
            raise

    async def _open(self, connection: AbstractRobustConnection) -> None:
        """The channel, the topology check and the reply queue's consumer."""
        self._channel = await connection.channel(on_return_raises=True)
        await self._topology.prepare_client(self._channel)
        reply = self._topology.reply(self.client_id)
        self._reply_queue = await self._topology.declare_private(self._channel, reply)
        await self._reply_queue.consume(self._on_reply, no_ack=True)

    async def close(self) -> None:
        for future in list(self._pending.values()):
            future.cancel()
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def submit(
        self,
        query: Query,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
        traceparent: str | None = None,
    ) -> asyncio.Future[RetrievalResponse]:
        """Publish one request (awaiting the broker's confirm); the future gets its reply."""
        if self._channel is None:
            raise RuntimeError("RetrievalClient is not connected: use `async with`")
        timeout = self.timeout if timeout is None else timeout
        request = RetrievalRequest(
            **optional_fields(query),
            request_id=request_id or uuid.uuid4().hex,
            query=query.query,
            memory_id=query.memory_id,
            limits={str(key): value for key, value in query.limits.items()},
            deadline_ms=int((time.time() + timeout) * 1000),
            min_score=query.min_score,
            weights=query.weights,
            filters=dict(query.filters) if query.filters is not None else None,
            search=query.search,
            fusion=query.fusion,
            knowledge_base_ids=(
                list(query.knowledge_base_ids) if query.knowledge_base_ids is not None else None
            ),
        )
        future: asyncio.Future[RetrievalResponse] = asyncio.get_running_loop().create_future()
        self._pending[request.request_id] = future
        future.add_done_callback(lambda _: self._forget(request.request_id, future))
        message = self._message(request, timeout, traceparent)
        try:
            exchange = await self._topology.request_exchange(self._channel)
            await exchange.publish(message, self._topology.requests.name, mandatory=True)
        except Exception as exc:
            future.cancel()
            if (failure := publish_failure(exc)) is None:
                raise
            raise failure from None
        except BaseException:
            future.cancel()
            raise
        return future

    def _message(
        self, request: RetrievalRequest, timeout: float, traceparent: str | None
    ) -> Message:
        # The broker drops the request once its caller has given up: it never reaches
        # the model (quorum queues honour per-message TTL from 3.10).
        return request_message(
            request,
            reply_to=self.reply_queue_name,
            user_id=self.settings.amqp_user,
            expiration=max(timeout, 0.001),
            trace_headers={"traceparent": traceparent} if traceparent else None,
        )

    def _forget(self, request_id: str, future: asyncio.Future[RetrievalResponse]) -> None:
        if self._pending.get(request_id) is future:
            del self._pending[request_id]

    async def retrieve(
        self,
        query: str,
        memory_id: str,
        limits: Limits,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
        min_score: float | None = None,
        weights: RankWeights | None = None,
        filters: Mapping[str, str] | None = None,
        search: SearchMode | None = None,
        fusion: Fusion | None = None,
        knowledge_base_ids: Sequence[str] | None = None,
    ) -> RetrievalResponse:
        """Retrieve and wait for the reply; raises RetrievalTimeout after `timeout` seconds."""
        timeout = self.timeout if timeout is None else timeout
        call = Query(
            query, memory_id, limits, min_score, weights, filters, search, fusion,
            knowledge_base_ids,
        )  # fmt: skip
        future = await self.submit(call, request_id=request_id, timeout=timeout)
        return await self.wait(future, timeout)

    async def wait(
        self, future: asyncio.Future[RetrievalResponse], timeout: float | None = None
    ) -> RetrievalResponse:
        """The reply a `submit` future gets, or RetrievalTimeout."""
        timeout = self.timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise RetrievalTimeout(f"no reply within {timeout:.1f}s") from None

    async def retrieve_many(
        self, queries: Sequence[Query], *, concurrency: int = 64, timeout: float | None = None
    ) -> list[RetrievalResponse]:
        """Retrieve for every query with at most `concurrency` in flight; replies in order."""
        gate = asyncio.Semaphore(concurrency)

        async def one(query: Query) -> RetrievalResponse:
            async with gate:
                future = await self.submit(query, timeout=timeout)
                return await self.wait(future, timeout)

        return list(await asyncio.gather(*(one(query) for query in queries)))

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        if not self.settings.trusts_reply(message.user_id):
            self.rejected_replies += 1
            log.warning("reply from an untrusted user rejected", user_id=message.user_id,
                        request_id=message.correlation_id)  # fmt: skip
            return
        try:
            response = read_reply(message)
        except WireError as exc:
            self.unreadable_replies += 1
            log.warning("unreadable reply dropped", error=str(exc),
                        request_id=message.correlation_id)  # fmt: skip
            return
        future = self._pending.get(response.request_id)
        if future is None or future.done():
            self.dropped_replies += 1
            log.debug("duplicate or late reply dropped", request_id=response.request_id)
            return
        future.set_result(response)
