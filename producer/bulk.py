"""Background bulk re-retrieval: thousands of requests, results to a JSONL file.

A job publishes to the bulk queue with `reply_to` its own durable results queue
(`<prefix>.job.<job id>`, kept 24 h), so results wait there while the job's
client is away. Each result is written as one line and flushed before its
message is acked, so an interruption at any point loses nothing and a rerun of
the same job never writes a request twice: it publishes only what the output
file lacks and collects what arrived in between.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

import structlog
from aio_pika import Message
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)
from aio_pika.exceptions import AMQPError, DeliveryError
from tqdm import tqdm

from producer.client import RetrievalRefused, connect_client
from producer.jobfiles import Plan, read_plan, write_bad_lines, written_request_ids
from schemas.backoff import delays
from schemas.messages import RetrievalRequest, RetrievalResponse
from schemas.settings import BrokerSettings
from schemas.wire import TRANSIENT_AMQP_ERRORS, WireError, read_reply, request_message

log = structlog.get_logger(__name__)
# An ack fails when its channel was lost or closed by the broker: either way unacked.
ACK_LOST: tuple[type[Exception], ...] = (*TRANSIENT_AMQP_ERRORS, AMQPError)


def default_job_id(input_path: Path, output_path: Path) -> str:
    """The same command (same input, same output) resumes the same job."""
    key = f"{input_path.resolve()}\0{output_path.resolve()}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass
class BulkSummary:
    job_id: str
    total: int  # valid requests in the input
    already_done: int  # results found in the output file at start
    written: int = 0  # results written by this run
    duplicates_dropped: int = 0
    untrusted_dropped: int = 0  # results not sent by a trusted worker identity
    unreadable_dropped: int = 0  # not a result of this contract (frame or body)
    bad_lines: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return self.already_done + self.written == self.total

    @property
    def rate(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        """For `--json`: every count, the statuses, and whether the job is complete."""
        fields = {**asdict(self), "by_status": dict(self.by_status)}
        return {**fields, "complete": self.complete, "rate": round(self.rate, 1)}


@dataclass
class BulkJob:
    input_path: Path
    output_path: Path
    settings: BrokerSettings = field(default_factory=BrokerSettings)
    job_id: str = ""
    concurrency: int = 64  # publishes awaiting their confirm at once
    window: int = 2048  # requests published and not yet answered
    progress: bool = True
    on_result: Callable[[RetrievalResponse], None] | None = None
    connect_wait_s: float | None = None  # for a broker not up yet; RECALLQ_CLIENT_CONNECT_WAIT_S

    def __post_init__(self) -> None:
        self.job_id = self.job_id or default_job_id(self.input_path, self.output_path)
        self.errors_path = self.output_path.with_name(self.output_path.name + ".errors.jsonl")

    async def run(self) -> BulkSummary:
        plan = read_plan(self.input_path)
        write_bad_lines(self.errors_path, plan.bad_lines)
        done = written_request_ids(self.output_path) & {r.request_id for r in plan.requests}
        todo = [r for r in plan.requests if r.request_id not in done]
        summary = BulkSummary(self.job_id, len(plan.requests), len(done))
        summary.bad_lines = len(plan.bad_lines)
        started = time.monotonic()
        try:
            if todo:
                await self._run(plan, todo, summary)
        finally:
            summary.seconds = time.monotonic() - started
        return summary

    async def _run(self, plan: Plan, todo: list[RetrievalRequest], summary: BulkSummary) -> None:
        topology = self.settings.topology
        connection = await connect_client(
            self.settings, self.connect_wait_s, f"recallq-bulk {self.job_id}"
        )
        async with connection:
            channel = await connection.channel(on_return_raises=True)
            await channel.set_qos(prefetch_count=min(self.window, 1024))
            await topology.prepare_client(channel)
            results = await topology.declare_private(channel, topology.job(self.job_id))
            collector = _Collector(
                {r.request_id for r in todo},
                summary,
                self.window,
                self.on_result,
                self.settings.trusts_reply,
            )
            with (
                self.output_path.open("a", encoding="utf-8") as output,
                tqdm(
                    total=summary.total,
                    initial=summary.already_done,
                    unit="req",
                    desc=f"job {self.job_id}",
                    disable=not self.progress,
                ) as bar,
            ):
                collector.attach(output, bar)
                tag = await results.consume(collector.on_message)
                pending = iter(todo)
                publishers = [
                    self._publish_all(channel, pending, results, collector)
                    for _ in range(self.concurrency)
                ]
                await asyncio.gather(*publishers)
                await collector.finished.wait()
                await results.cancel(tag)
            await channel.queue_delete(results.name)

    async def _publish_all(
        self,
        channel: AbstractChannel,
        pending: Iterator[RetrievalRequest],
        results: AbstractQueue,
        collector: _Collector,
    ) -> None:
        """One of `concurrency` publishers; they share the iterator, so each request goes once."""
        bulk_queue = self.settings.topology.bulk.name
        exchange = await self.settings.topology.request_exchange(channel)
        for request in pending:
            await collector.window.acquire()
            if request.request_id not in collector.awaited:
                continue  # its result from an earlier run arrived meanwhile
            message = request_message(
                request, reply_to=results.name, user_id=self.settings.amqp_user
            )
            await publish_until_accepted(exchange, message, bulk_queue)


async def publish_until_accepted(exchange: AbstractExchange, message: Message, queue: str) -> None:
    """A full bulk queue nacks the publish, a lost connection fails it: back off and offer
    it again. A request that did get in before the connection went is then queued twice;
    its second result is dropped as a duplicate, so the output still has it once. A
    broker's refusal (no permission, no such exchange) ends the job: RetrievalRefused."""
    for delay in delays(0.1, 5.0):
        try:
            await exchange.publish(message, queue, mandatory=True)
            return
        except DeliveryError:
            log.info("bulk queue full; backing off", delay_s=delay)
        except TRANSIENT_AMQP_ERRORS as exc:
            log.info("publish failed; retrying after reconnect", delay_s=delay, error=repr(exc))
        except AMQPError as exc:
            raise RetrievalRefused(f"the broker refused the request: {exc!r}") from None
        await asyncio.sleep(delay)


class _Collector:
    """Writes each awaited result once, flushed before its message is acked."""

    def __init__(
        self,
        awaited: set[str],
        summary: BulkSummary,
        window: int,
        on_result: Callable[[RetrievalResponse], None] | None,
        trusts: Callable[[str | None], bool] = lambda user_id: True,
    ) -> None:
        self.awaited = awaited
        self._trusts = trusts
        self.summary = summary
        self.window = asyncio.Semaphore(window)
        self.finished = asyncio.Event()
        self._on_result = on_result
        self._output: IO[str] | None = None
        self._bar: tqdm | None = None

    def attach(self, output: IO[str], bar: tqdm) -> None:
        self._output, self._bar = output, bar

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        if not self._trusts(message.user_id):
            self.summary.untrusted_dropped += 1
            log.warning("result from an untrusted user dropped", user_id=message.user_id)
            await _ack(message)
            return
        try:
            response = read_reply(message)
        except WireError as exc:
            self.summary.unreadable_dropped += 1
            log.warning("unreadable result dropped", error=str(exc),
                        correlation_id=message.correlation_id)  # fmt: skip
            await _ack(message)
            return
        if response.request_id not in self.awaited:
            self.summary.duplicates_dropped += 1
            await _ack(message)
            return
        assert self._output is not None and self._bar is not None
        self._output.write(response.model_dump_json() + "\n")
        self._output.flush()
        # Written: from here on a redelivery of this result is a duplicate, even if
        # the ack below is lost with the connection (the broker then redelivers it).
        self.awaited.discard(response.request_id)
        self.window.release()
        self._count(response)
        if not self.awaited:
            self.finished.set()
        await _ack(message)

    def _count(self, response: RetrievalResponse) -> None:
        assert self._bar is not None
        status = response.error.code.value if response.error else response.status
        self.summary.written += 1
        self.summary.by_status[status] += 1
        errors = self.summary.written - self.summary.by_status["ok"]
        self._bar.update(1)
        if errors:
            self._bar.set_postfix(errors=errors, refresh=False)
        if self._on_result is not None:
            self._on_result(response)


async def _ack(message: AbstractIncomingMessage) -> None:
    """Ack, or leave it to the broker: an ack lost with its channel (lost, or closed by
    the broker) means a redelivery, which the collector drops as a duplicate."""
    try:
        await message.ack()
    except ACK_LOST as exc:
        log.info("ack lost with the connection; the result will be redelivered", error=repr(exc))
