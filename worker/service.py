"""The worker's lifecycle: connect, consume, loop, drain, cancel, close.

The loop takes the next batch, runs `process` on it and settles each outcome.
Batch N+1 is formed and embeds while batch N searches and settles: the loop
waits only until the model is done with a batch. In burst mode the worker
stops by itself once both request queues are empty and nothing is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from schemas.connect import connect_waiting
from worker.access.profiles import Profile
from worker.access.tenants import TenantPolicy
from worker.batch import Batcher, BatchLimits
from worker.consume import Consumer, Settle
from worker.delivery import Delivery, QueueLane
from worker.embedding.base import TextEmbedder
from worker.embedding.remote import RemoteEmbedder
from worker.errors import ConfigError, StoreUnavailable
from worker.metrics import HealthServer, Metrics
from worker.outcomes import Answered, NotNow, Outcome
from worker.pipeline import Dependencies, process_isolated
from worker.reply import Settler
from worker.settings import WorkerSettings
from worker.store.base import MemoryStore
from worker.unsettled import Unsettled

log = structlog.get_logger(__name__)

BURST_CHECK_S = 0.1  # burst mode: how often to look for empty queues
STORE_CHECK_S = 1.0  # how often an idle worker looks at its store
T = TypeVar("T")


@dataclass
class WorkerStats:
    batches: int = 0
    requests: int = 0  # answered `ok`
    largest_batch: int = 0
    redeliveries: int = 0


async def process_and_settle(
    batch: Sequence[Delivery],
    deps: Dependencies,
    settle: Settle,
    embedded: asyncio.Event | None = None,
    observe: Callable[[list[Outcome]], None] = lambda outcomes: None,
) -> list[Outcome]:
    """Process a batch and settle every delivery in it with its outcome (`observe` sees
    the outcomes first); if cancelled (shutdown past its grace period), every delivery
    goes back to the queue."""
    try:
        outcomes = await process_isolated(batch, deps, embedded)
    except asyncio.CancelledError:
        await settle_each(settle, batch, [NotNow("shutdown: cancelled after the grace period")])
        raise
    observe(outcomes)
    await settle_each(settle, batch, outcomes)
    return outcomes


async def settle_each(
    settle: Settle, batch: Sequence[Delivery], outcomes: Sequence[Outcome]
) -> None:
    """Settle every delivery with its outcome, concurrently (one outcome: the same for all)."""
    if len(outcomes) == 1:
        outcomes = list(outcomes) * len(batch)
    await asyncio.gather(*(settle(d.envelope, o) for d, o in zip(batch, outcomes, strict=True)))


class Worker:
    def __init__(
        self,
        *,
        settings: WorkerSettings,
        deps: Dependencies,
        batcher: Batcher[Delivery],
        unsettled: Unsettled,
        count_tokens: Callable[[str], int],
        model_lanes: int,
        policy: TenantPolicy | None,
        profile: Profile,
        embedder_usable: Callable[[], bool] = lambda: True,
    ) -> None:
        """The parts, built: `Worker.from_settings` builds them from settings."""
        self.settings = settings
        self.deps = deps
        self.metrics = deps.metrics
        self.unsettled = unsettled
        self._batcher = batcher
        self._count_tokens = count_tokens
        self._model_lanes_free = asyncio.Semaphore(model_lanes)
        self._policy = policy
        self._profile = profile
        self._embedder_usable = embedder_usable
        self.health: HealthServer | None = None
        self.stats = WorkerStats()
        self.ready = asyncio.Event()
        self._batch_ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._settler: Settler | None = None

    @classmethod
    def from_settings(
        cls,
        settings: WorkerSettings,
        embedder: TextEmbedder,
        store: MemoryStore,
        metrics: Metrics | None = None,
    ) -> Worker:
        """A worker over a loaded model and a connected store, wired as settings say:
        its metrics watch the caches and the ledger of unsettled deliveries."""
        metrics = metrics or Metrics()
        metrics.watch_cache(lambda: (embedder.cache_stats.lookups, embedder.cache_stats.hits))
        metrics.watch_store_cache(store.cache_stats)
        metrics.watch_store_searches(getattr(store, "search_paths", None))  # not every store counts
        count = metrics.rows_without_embedding
        store.on_skipped = lambda name, rows: count.labels(collection=name).inc(rows)
        if isinstance(embedder, RemoteEmbedder):  # its calls, retries and rate limiting
            embedder.observer = metrics.embed_calls
            metrics.embed_calls.watch_allowed(lambda: embedder.allowed_concurrency)
        unsettled = Unsettled(settings.unsettled_limit_s, metrics.unsettled_too_long.inc)
        metrics.in_flight.set_function(lambda: len(unsettled))
        profile = settings.profile()
        deps = Dependencies(
            embed=embedder.embed,
            store=store,
            worker_id=settings.worker_id,
            candidate_factor=settings.candidate_factor,
            search=settings.search,
            store_retry_s=settings.store_retry_s,
            embed_retry_s=settings.embed_retry_s,
            metrics=metrics,
            store_mode=str(store.describe().get("mode", "")),  # chosen when it connected
            profile=profile,
        )
        return cls(
            settings=settings,
            deps=deps,
            batcher=Batcher(_batch_limits(settings, embedder)),
            unsettled=unsettled,
            count_tokens=embedder.count_tokens,
            model_lanes=embedder.lanes,
            policy=_tenant_policy(settings),
            profile=profile,
            embedder_usable=lambda: embedder.usable,
        )

    async def run(
        self,
        stop: asyncio.Event | None = None,
        *,
        handle_signals: bool = False,
        burst: bool = False,
    ) -> None:
        """Serve until `stop` is set (or SIGTERM/SIGINT with handle_signals, or, with
        `burst`, until the queues are empty), then drain and close."""
        stop = stop or asyncio.Event()
        if handle_signals:
            stop_on_signals(stop)
        connection = await unless_stopped(
            connect_waiting(
                self.settings.amqp_url,
                self.settings.connect_wait_s,
                f"recallq-worker {self.settings.worker_id}",
            ),
            stop,
        )
        if connection is None:
            log.info("stopped while waiting for the broker")
            return
        try:
            async with connection:  # closed on the way out, whatever fails (a busy port too)
                self._start_health_server(connection)
                consumer = await self._start_consuming(connection)
                self.ready.set()
                helpers = [
                    self._close_batcher_on(stop),
                    self.unsettled.watch(),
                    self._watch_store(),
                ]
                if burst:
                    helpers.append(self._stop_when_idle(consumer, stop))
                running = [asyncio.create_task(helper) for helper in helpers]
                try:
                    await self._serve()
                finally:
                    for task in running:
                        task.cancel()
                    await self._shutdown(consumer)
        finally:
            if self.health is not None:
                self.health.stop()

    async def _serve(self) -> None:
        """Next batch -> process -> settle, until the batcher closes.

        A batch is taken only when a model lane is free, so requests that arrive while
        every lane is busy join the next batch instead of queueing behind it.
        """
        while True:
            await self._model_lanes_free.acquire()
            batch = await self._batcher.next_batch()
            if not batch:
                self._model_lanes_free.release()
                return
            self._spawn(self._process_and_settle(batch))

    async def _process_and_settle(self, batch: list[Delivery]) -> None:
        structlog.contextvars.bind_contextvars(batch_id=next(self._batch_ids))
        self._observe_batch(batch)
        assert self._settler is not None
        embedded = asyncio.Event()
        lane_done = asyncio.ensure_future(embedded.wait())
        lane_done.add_done_callback(lambda _: self._model_lanes_free.release())  # exactly once
        try:
            await process_and_settle(batch, self.deps, self._settler.settle, embedded, self._count)
        finally:
            lane_done.cancel()

    async def _shutdown(self, consumer: Consumer) -> None:
        """Stop consuming, requeue what is only prefetched, let in-flight batches finish
        for the grace period, then cancel them (their deliveries go back to the queue)."""
        await consumer.stop()
        self._batcher.close()
        assert self._settler is not None
        drained = self._batcher.drain()
        await settle_each(self._settler.settle, drained, [NotNow("shutdown: only prefetched")])
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=self.settings.shutdown_grace_s)
            for task in late:
                task.cancel()
            if late:
                log.warning("in-flight batches cancelled after the grace period", batches=len(late))
                await asyncio.wait(late)
        self.stats.redeliveries = consumer.redeliveries
        log.info("worker stopped", unsettled=len(self.unsettled), **vars(self.stats))

    async def _stop_when_idle(self, consumer: Consumer, stop: asyncio.Event) -> None:
        """Burst mode: stop once nothing is queued or in flight on two checks in a row
        (the second catches a delivery that was on its way during the first)."""
        quiet = 0
        while quiet < 2:
            await asyncio.sleep(BURST_CHECK_S)
            quiet = quiet + 1 if await self._idle(consumer) else 0
        log.info("burst: the request queues are empty and nothing is in flight; stopping")
        stop.set()

    async def _idle(self, consumer: Consumer) -> bool:
        if len(self._batcher) or len(self.unsettled) or self._tasks:
            return False
        try:
            return await consumer.ready_messages() == 0
        except Exception as exc:  # the broker is away: not idle, look again
            log.warning("burst: cannot read the queue depths", error=repr(exc))
            return False

    def _start_health_server(self, connection: AbstractRobustConnection) -> None:
        """Ready = consuming, broker connected, model loaded (a provider not refusing the
        configuration), nothing stuck, and the store's last call (or look, every
        STORE_CHECK_S) worked."""
        if self.settings.metrics_port < 0:
            return

        def ready() -> bool:
            connected = connection.connected.is_set()
            usable = self.deps.store.usable and self._embedder_usable()
            return self.ready.is_set() and connected and self.unsettled.late == 0 and usable

        try:
            self.health = HealthServer(self.metrics, ready, self.settings.metrics_port)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on port {self.settings.metrics_port} ({exc.strerror}): "
                "set RECALLQ_METRICS_PORT to a free port, 0 for any, -1 for none"
            ) from None
        self.health.start()
        log.info("metrics and health", port=self.health.port)

    async def _start_consuming(self, connection: AbstractRobustConnection) -> Consumer:
        """A channel per lane (each with its prefetch) and one for replies, with confirms."""
        prefetch = {
            QueueLane.INTERACTIVE: self.settings.prefetch,
            QueueLane.BULK: self.settings.bulk_prefetch,
        }
        channels: dict[QueueLane, AbstractChannel] = {}
        for lane, count in prefetch.items():
            channels[lane] = await connection.channel()
            await channels[lane].set_qos(prefetch_count=count)
        reply_channel = await connection.channel(on_return_raises=True)
        self._settler = Settler(
            channel=reply_channel,
            worker_id=self.settings.worker_id,
            metrics=self.metrics,
            unsettled=self.unsettled,
            user_id=self.settings.amqp_user,
            max_reply_bytes=self.settings.max_reply_bytes,
            topology=self.settings.topology,
        )
        consumer = Consumer(
            channels=channels,
            topology=self.settings.topology,
            batcher=self._batcher,
            count_tokens=self._count_tokens,
            settle=self._settler.settle,
            unsettled=self.unsettled,
            max_message_bytes=self.settings.max_message_bytes,
            worker_id=self.settings.worker_id,
            metrics=self.metrics,
            policy=self._policy,
            profile=self._profile,
        )
        await consumer.start()
        return consumer

    async def _watch_store(self) -> None:
        """Look at the store every STORE_CHECK_S, so a file replaced or broken while no
        request comes turns /readyz 503 (and a good one back 200) without waiting for one."""
        while True:
            await asyncio.sleep(STORE_CHECK_S)
            with contextlib.suppress(StoreUnavailable):  # the store logs what it found
                await self.deps.store.check()

    async def _close_batcher_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        log.info("stopping: no new batches")
        self._batcher.close()

    def _observe_batch(self, batch: Sequence[Delivery]) -> None:
        self.metrics.batch_size.observe(len(batch))
        self.metrics.batch_tokens.observe(max(d.tokens for d in batch) * len(batch))
        now = time.monotonic()
        for delivery in batch:
            self.metrics.queue_wait_seconds.observe(now - delivery.received)

    def _count(self, outcomes: Sequence[Outcome]) -> None:
        answered = sum(isinstance(o, Answered) and o.response.status == "ok" for o in outcomes)
        self.stats.batches += 1
        self.stats.requests += answered
        self.stats.largest_batch = max(self.stats.largest_batch, len(outcomes))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set `stop`: a worker drains, a start-up wait ends."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def unless_stopped(work: Awaitable[T], stop: asyncio.Event) -> T | None:
    """`work`'s result; or None, `work` cancelled, if `stop` is set first: a start-up
    wait (the broker, the store) yields to SIGTERM instead of outliving it."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


def _batch_limits(settings: WorkerSettings, embedder: TextEmbedder) -> BatchLimits:
    """The settings' batch limits, cut to the provider's per-call limits: one batch, one
    call. (Padded tokens, longest x count, bound the call's sum of tokens from above.)"""
    max_batch = min(settings.max_batch, embedder.max_inputs or settings.max_batch)
    max_tokens = min(
        settings.max_batch_tokens, embedder.max_call_tokens or settings.max_batch_tokens
    )
    return BatchLimits(
        max_batch,
        max_tokens,
        settings.max_wait_ms / 1000,
        settings.bulk_top_up,
        settings.batch_sort_window,
    )


def _tenant_policy(settings: WorkerSettings) -> TenantPolicy | None:
    if not settings.tenant_policy:
        log.warning(
            "no RECALLQ_TENANT_POLICY: tenants are not isolated; any broker user who can "
            "publish a request can read any memory_id"
        )
        return None
    policy = TenantPolicy.load(Path(settings.tenant_policy))
    log.info("tenant policy loaded", path=settings.tenant_policy, users=len(policy.users))
    return policy
