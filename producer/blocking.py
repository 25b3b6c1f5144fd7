"""A synchronous façade over the async RPC client, for synchronous callers (memorizz).

Synchronous code cannot await, and an event loop per call would mean a broker
connection per call. So each process runs one event loop on a daemon thread, and each
`BlockingClient` keeps one `RetrievalClient` (one connection, one reply queue) on it,
opened on first use and reused by every thread. Every wait is bounded: the connect
(`connect_wait_s`), each call (its timeout) and the close. After a failed connect the
client fails fast for `retry_connect_s` instead of waiting again on every call.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
import time
import weakref
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import structlog

from producer.client import (
    Query,
    RetrievalClient,
    RetrievalError,
    RetrievalTimeout,
    RetrievalUnavailable,
)
from schemas.messages import RetrievalResponse
from schemas.settings import BrokerSettings

log = structlog.get_logger(__name__)
T = TypeVar("T")
MARGIN_S = 1.0  # beyond a call's own timeout, for the hop between threads
CLOSE_WAIT_S = 5.0


class _LoopThread:
    """The process's event loop, run by a daemon thread; started on first use."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="recallq-loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, work: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if threading.current_thread() is self.thread:
            work.close()
            raise RuntimeError("a blocking recallq call from the recallq loop would deadlock")
        return asyncio.run_coroutine_threadsafe(work, self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(CLOSE_WAIT_S)


_loop: _LoopThread | None = None
_loop_lock = threading.Lock()
_open: weakref.WeakSet[BlockingClient] = weakref.WeakSet()


def loop_thread() -> _LoopThread:
    """The one loop thread of this process (started now if not yet)."""
    global _loop
    with _loop_lock:
        if _loop is None or not _loop.thread.is_alive():
            _loop = _LoopThread()
        return _loop


@atexit.register
def _close_all() -> None:
    for client in list(_open):
        client.close()
    with _loop_lock:
        if _loop is not None:
            _loop.stop()


class BlockingClient:
    """Blocking `retrieve` and `retrieve_many` over one reused broker connection;
    thread-safe. Raises the async client's errors (RetrievalTimeout, RetrievalOverloaded,
    RetrievalUnavailable, RetrievalRefused), never waits unbounded."""

    def __init__(
        self,
        settings: BrokerSettings | None = None,
        *,
        timeout: float = 5.0,
        connect_wait_s: float = 2.0,
        retry_connect_s: float = 5.0,
        client_id: str | None = None,
    ) -> None:
        self.settings = settings or BrokerSettings()
        self.timeout = timeout
        self.connect_wait_s = connect_wait_s
        self.retry_connect_s = retry_connect_s
        self.client_id = client_id
        self._client: RetrievalClient | None = None
        self._lock = threading.Lock()
        self._down_until = 0.0  # monotonic: no connect attempt before it
        _open.add(self)

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    def retrieve(self, query: Query, *, timeout: float | None = None) -> RetrievalResponse:
        """One request and its reply, or a RetrievalError within `timeout` (+ the connect
        wait on first use)."""
        wait = self.timeout if timeout is None else timeout
        client = self._ensure_connected()
        return self._run(_call(client, query, wait), wait)

    def retrieve_many(
        self, queries: Sequence[Query], *, timeout: float | None = None
    ) -> list[RetrievalResponse | RetrievalError]:
        """All requests at once (one round trip together); each reply, or the error of
        that request, in order."""
        wait = self.timeout if timeout is None else timeout
        client = self._ensure_connected()
        return self._run(_call_many(client, queries, wait), wait)

    def close(self) -> None:
        """Close the connection (bounded); a later call reconnects."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                loop_thread().submit(client.close()).result(CLOSE_WAIT_S)
            except Exception as exc:  # closing must not raise into atexit or a caller
                log.warning("recallq client close failed", error=repr(exc))

    def _ensure_connected(self) -> RetrievalClient:
        with self._lock:
            if self._client is not None:
                return self._client
            if time.monotonic() < self._down_until:
                raise RetrievalUnavailable("recallq broker unreachable (recently); not retried yet")
            try:
                self._client = self._connect()
            except RetrievalError:
                self._down_until = time.monotonic() + self.retry_connect_s
                raise
            return self._client

    def _connect(self) -> RetrievalClient:
        client = RetrievalClient(
            self.settings, client_id=self.client_id, timeout=self.timeout,
            connect_wait_s=self.connect_wait_s,
        )  # fmt: skip
        future = loop_thread().submit(client.connect())
        try:
            future.result(self.connect_wait_s + MARGIN_S + 5.0)  # + one attempt's margin
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise RetrievalUnavailable("recallq broker: no connection in time") from None
        except RetrievalError:
            raise
        except Exception as exc:
            raise RetrievalUnavailable(f"recallq broker unreachable: {exc}") from exc
        return client

    def _run(self, work: Coroutine[Any, Any, T], wait: float) -> T:
        future = loop_thread().submit(work)
        try:
            return future.result(wait + MARGIN_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise RetrievalTimeout(f"no reply within {wait:.1f}s") from None


async def _call(client: RetrievalClient, query: Query, wait: float) -> RetrievalResponse:
    """Publish (the broker's confirm bounded too) and await the reply within `wait`."""
    if not client.connected:
        raise RetrievalUnavailable("the recallq broker connection is down; it reconnects")
    started = time.monotonic()
    try:
        future = await asyncio.wait_for(client.submit(query, timeout=wait), wait)
    except TimeoutError:
        raise RetrievalTimeout(f"the broker did not confirm within {wait:.1f}s") from None
    return await client.wait(future, max(wait - (time.monotonic() - started), 0.001))


async def _call_many(
    client: RetrievalClient, queries: Sequence[Query], wait: float
) -> list[RetrievalResponse | RetrievalError]:
    async def one(query: Query) -> RetrievalResponse | RetrievalError:
        try:
            return await _call(client, query, wait)
        except RetrievalError as exc:
            return exc

    return list(await asyncio.gather(*(one(query) for query in queries)))
