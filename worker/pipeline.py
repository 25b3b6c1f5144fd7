"""The worker: consume -> batch -> drop expired -> embed -> search + rank -> reply.

The dispatch loop embeds one batch at a time and hands each embedded batch to
its own task for search and reply, so batch N+1 embeds while batch N searches.
A batch that crashes is split and retried request by request, so one poison
request cannot take its batch-mates down with it.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel

from schemas.messages import ErrorCode, MemoryType, RetrievalResponse, Timings
from worker.batch import Batcher, BatchLimits, Lane
from worker.consume import Consumer, Delivery
from worker.embed import Embedder
from worker.errors import ConfigError, RecallqError
from worker.metrics import HealthServer, Metrics
from worker.reply import Replier
from worker.retry import batch_deadline
from worker.search import search_and_rank
from worker.settings import WorkerSettings
from worker.store.base import MemoryStore, Vectors

log = structlog.get_logger(__name__)

RetryOne = Callable[[list[Delivery]], Awaitable[None]]


@dataclass
class WorkerStats:
    batches: int = 0
    requests: int = 0
    largest_batch: int = 0
    redeliveries: int = 0


class Worker:
    def __init__(
        self,
        settings: WorkerSettings,
        embedder: Embedder,
        store: MemoryStore,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.embedder = embedder
        self.store = store
        self.metrics = metrics or Metrics()
        self.metrics.watch_cache(lambda: (embedder.cache_stats.lookups, embedder.cache_stats.hits))
        self.health: HealthServer | None = None
        self.stats = WorkerStats()
        self.ready = asyncio.Event()
        self._batch_ids = itertools.count(1)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._replier: Replier | None = None
        self._batcher: Batcher[Delivery] = Batcher(
            BatchLimits(
                settings.max_batch,
                settings.max_batch_tokens,
                settings.max_wait_ms / 1000,
                settings.bulk_top_up,
                settings.batch_sort_window,
            )
        )

    async def run(self, stop: asyncio.Event | None = None, *, handle_signals: bool = False) -> None:
        """Serve until `stop` is set (or SIGTERM/SIGINT with handle_signals), then drain."""
        stop = stop or asyncio.Event()
        if handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
        # Read once: the store chose its mode when it connected, before serving.
        self._store_mode = str(self.store.describe().get("mode", ""))
        connection = await aio_pika.connect_robust(
            self.settings.amqp_url,
            client_properties={"connection_name": f"recallq-worker {self.settings.worker_id}"},
        )
        self._start_health_server(connection)
        try:
            async with connection:
                consumer = await self._start_consuming(connection)
                self.ready.set()
                closer = asyncio.create_task(self._close_batcher_on(stop))
                try:
                    while batch := await self._batcher.next_batch():
                        await self._embed_and_hand_off(batch)
                finally:
                    closer.cancel()
                    await self._shutdown(consumer)
        finally:
            if self.health is not None:
                self.health.stop()

    def _start_health_server(self, connection: aio_pika.abc.AbstractRobustConnection) -> None:
        """Ready = consuming, broker connected (robust reconnects clear it), model loaded."""
        if self.settings.metrics_port < 0:
            return

        def ready() -> bool:
            return self.ready.is_set() and connection.connected.is_set()

        try:
            self.health = HealthServer(self.metrics, ready, self.settings.metrics_port)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on port {self.settings.metrics_port} ({exc.strerror}): "
                "set RECALLQ_METRICS_PORT to a free port, 0 for any, -1 for none"
            ) from None
        self.health.start()
        log.info("metrics and health", port=self.health.port)

    async def _start_consuming(self, connection: aio_pika.abc.AbstractConnection) -> Consumer:
        """A channel per lane (each with its prefetch) and one for replies, with confirms."""
        prefetch = {
            Lane.INTERACTIVE: self.settings.prefetch,
            Lane.BULK: self.settings.bulk_prefetch,
        }
        channels: dict[Lane, AbstractChannel] = {}
        for lane, count in prefetch.items():
            channels[lane] = await connection.channel()
            await channels[lane].set_qos(prefetch_count=count)
        reply_channel = await connection.channel(on_return_raises=True)
        self._replier = Replier(reply_channel, self.settings.worker_id, self.metrics)
        consumer = Consumer(
            channels,
            self.settings.topology,
            self._batcher,
            self.embedder.count_tokens,
            self._replier.refuse_invalid,
            self.settings.max_message_bytes,
            self.metrics,
        )
        await consumer.start()
        return consumer

    async def _close_batcher_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        log.info("stopping: no new batches")
        self._batcher.close()

    async def _shutdown(self, consumer: Consumer) -> None:
        """Stop consuming, requeue what is only prefetched, finish what is in flight."""
        await consumer.stop()
        self._batcher.close()
        assert self._replier is not None
        for delivery in self._batcher.drain():
            await self._replier.requeue(delivery.message)
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=self.settings.shutdown_grace_s)
        self.stats.redeliveries = consumer.redeliveries
        log.info("worker stopped", **vars(self.stats))

    async def _embed_and_hand_off(self, batch: list[Delivery]) -> None:
        batch_id = next(self._batch_ids)
        started = time.monotonic()
        for delivery in batch:
            delivery.dispatched = delivery.dispatched or started
        live = [d for d in batch if not self._refuse_if_expired(d)]
        if not live:
            return
        self._observe_batch(live)
        try:
            vectors = await self.embedder.embed([d.request.query for d in live])
        except Exception:
            log.exception("embedding failed", batch_id=batch_id, size=len(live))
            await self._isolate_or_give_up(live, self._embed_and_hand_off)
            return
        embed_ms = (time.monotonic() - started) * 1000
        self.metrics.embed_seconds.observe(embed_ms / 1000)
        self._spawn(self._search_and_reply(batch_id, live, vectors, embed_ms))

    def _observe_batch(self, batch: list[Delivery]) -> None:
        self.metrics.batch_size.observe(len(batch))
        self.metrics.batch_tokens.observe(max(d.tokens for d in batch) * len(batch))
        for delivery in batch:
            self.metrics.queue_wait_seconds.observe(delivery.dispatched - delivery.received)

    def _refuse_if_expired(self, delivery: Delivery) -> bool:
        deadline = delivery.request.deadline_ms
        if deadline is None or deadline > time.time() * 1000:
            return False
        assert self._replier is not None
        response = RetrievalResponse.failure(
            delivery.request.request_id, ErrorCode.EXPIRED, "deadline passed before work began"
        )
        self._spawn(self._replier.refuse(delivery.message, response))
        return True

    async def _search_and_reply(
        self, batch_id: int, batch: list[Delivery], vectors: Vectors, embed_ms: float
    ) -> None:
        started = time.monotonic()
        requests = [d.request for d in batch]
        try:
            results = await search_and_rank(
                self.store,
                requests,
                vectors,
                candidate_factor=self.settings.candidate_factor,
                now=time.time(),
                deadline=batch_deadline(requests, self.settings.store_retry_s),
                observe=self._observe_search,
            )
        except RecallqError as exc:  # store unavailable or mismatched: a final, coded error
            log.warning("search failed", batch_id=batch_id, error=str(exc), code=exc.code)
            failures = [(d, _failure(d, exc)) for d in batch]
            await asyncio.gather(*(self._reply(d, r, len(batch)) for d, r in failures))
            return
        except Exception:
            log.exception("search crashed", batch_id=batch_id, size=len(batch))
            rows = {id(d): row for row, d in enumerate(batch)}

            async def again(one: list[Delivery]) -> None:
                row = rows[id(one[0])]
                await self._search_and_reply(batch_id, one, vectors[row : row + 1], embed_ms)

            await self._isolate_or_give_up(batch, again)
            return
        search_ms = (time.monotonic() - started) * 1000
        self._count(len(batch))
        responses = [
            RetrievalResponse(
                request_id=d.request.request_id,
                status="ok",
                results=hits,
                timings=Timings(embed_ms=embed_ms, search_ms=search_ms),
            )
            for d, hits in zip(batch, results, strict=True)
        ]
        replies = zip(batch, responses, strict=True)
        await asyncio.gather(*(self._reply(d, r, len(batch)) for d, r in replies))
        log.info(
            "batch done",
            batch_id=batch_id,
            size=len(batch),
            embed_ms=round(embed_ms, 2),
            search_ms=round(search_ms, 2),
            total_ms=round((time.monotonic() - batch[0].dispatched) * 1000, 2),
        )

    def _observe_search(self, memory_type: MemoryType, seconds: float) -> None:
        labels = {"memory_type": memory_type.value, "store_mode": self._store_mode}
        self.metrics.search_seconds.labels(**labels).observe(seconds)

    async def _isolate_or_give_up(self, batch: list[Delivery], retry_one: RetryOne) -> None:
        """A batch failed: retry each request alone; a lone request that fails has crashed."""
        assert self._replier is not None
        if len(batch) == 1:
            delivery = batch[0]
            await self._replier.crashed(delivery.message, delivery.request.request_id)
            return
        for delivery in batch:
            await retry_one([delivery])

    async def _reply(
        self, delivery: Delivery, response: RetrievalResponse, batch_size: int
    ) -> None:
        assert self._replier is not None
        response.batch_size = batch_size
        response.timings.queue_ms = (delivery.dispatched - delivery.received) * 1000
        response.timings.total_ms = (time.monotonic() - delivery.received) * 1000
        # Bulk results may wait hours in a job queue, so they survive a broker restart;
        # an RPC caller waits seconds at most, so its reply skips the disk.
        persistent = delivery.lane is Lane.BULK
        await self._replier.answer(delivery.message, response, persistent=persistent)
        self.metrics.request_seconds.labels(
            lane=delivery.lane.value, status=response.status
        ).observe(response.timings.total_ms / 1000)

    def _spawn(self, work: Coroutine[None, None, None]) -> None:
        task = asyncio.create_task(work)
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    def _count(self, size: int) -> None:
        self.stats.batches += 1
        self.stats.requests += size
        self.stats.largest_batch = max(self.stats.largest_batch, size)


def _failure(delivery: Delivery, error: RecallqError) -> RetrievalResponse:
    return RetrievalResponse.failure(
        delivery.request.request_id, error.code, str(error), retryable=error.retryable
    )
