"""Nothing lost: killed and stopped workers, poison requests, full queues, locked files."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from benchmarks.processes import WorkerProcess
from producer.client import Query, RetrievalClient, RetrievalOverloaded, RetrievalTimeout
from schemas.messages import ErrorCode, MemoryType, RetrievalResponse
from tests.integration.conftest import running_worker
from tests.integration.test_invalid_messages import next_message
from tests.stores import WrappedStore
from worker.embedding.embedder import Embedder
from worker.errors import StoreUnavailable
from worker.settings import WorkerSettings
from worker.store import GroupResult, Memory, SearchGroup, SQLiteStore

LIMITS = {"long_term_memory": 2, "procedural_memory": 2}


def many_queries(questions: list[dict[str, str]], count: int) -> list[Query]:
    return [
        Query(f"{q['query']} (attempt {i})", q["memory_id"], LIMITS)
        for i, q in zip(range(count), questions * (count // len(questions) + 1), strict=False)
    ]


async def when_answered(futures: Sequence[asyncio.Future[RetrievalResponse]], count: int) -> None:
    """Bounded wait until `count` of the futures have their reply."""
    reached = asyncio.Event()
    done = 0

    def one_more(_: object) -> None:
        nonlocal done
        done += 1
        if done >= count:
            reached.set()

    for future in futures:
        future.add_done_callback(one_more)
    await asyncio.wait_for(reached.wait(), timeout=120)


@pytest.mark.parametrize("stop_signal", [signal.SIGKILL, signal.SIGTERM])
async def test_a_worker_stopped_mid_load_loses_nothing(
    stop_signal: signal.Signals,
    settings: WorkerSettings,
    demo_store: SQLiteStore,
    demo_questions: list[dict[str, str]],
    tmp_path: Path,
) -> None:
    first = WorkerProcess(settings, demo_store.path, tmp_path / "first.log")
    second = WorkerProcess(settings, demo_store.path, tmp_path / "second.log")
    queries = many_queries(demo_questions, 1500)
    await first.start()
    try:
        async with RetrievalClient(settings, timeout=240) as client:
            futures = await asyncio.gather(
                *(client.submit(q, request_id=f"r{i}", timeout=240) for i, q in enumerate(queries))
            )
            await when_answered(futures, 150)
            exit_code = await first.signal(stop_signal)
            unanswered = sum(not f.done() for f in futures)
            assert unanswered > 0, "the worker finished everything before it was stopped"
            await second.start()
            responses = await asyncio.gather(*(client.wait(f, 240) for f in futures))
        assert [r.request_id for r in responses] == [f"r{i}" for i in range(1500)]
        assert all(r.status == "ok" for r in responses)
        if stop_signal == signal.SIGTERM:
            assert exit_code == 0
            assert first.log_lines("worker stopped") == 1
        else:
            assert second.log_lines("redelivered request") > 0  # the dead worker's unacked
    finally:
        await first.stop()
        await second.stop()


class PoisonedStore(WrappedStore):
    """The real store, except that searching one tenant raises, as a bug would."""

    async def search(self, groups: Sequence[SearchGroup]) -> list[GroupResult]:
        if any(group.owner == "poison:tenant" for group in groups):
            raise RuntimeError("a bug that only this request triggers")
        return await self.store.search(groups)


async def test_a_poison_request_is_isolated_retried_and_dead_lettered(
    settings: WorkerSettings,
    embedder: Embedder,
    demo_store: SQLiteStore,
    demo_questions: list[dict[str, str]],
) -> None:
    good = many_queries(demo_questions, 12)
    poison = Query("anything at all", "poison:tenant", LIMITS)
    async with RetrievalClient(settings, timeout=120) as client:
        # Queued before the worker starts, so the poison shares a batch with the rest.
        futures = [await client.submit(q, request_id=f"good{i}") for i, q in enumerate(good)]
        poisoned = await client.submit(poison, request_id="poison")
        poisoned_store = PoisonedStore(demo_store)
        async with running_worker(settings, embedder, poisoned_store) as worker:  # type: ignore[arg-type]
            answers = await asyncio.gather(*(client.wait(f, 120) for f in futures))
            verdict = await client.wait(poisoned, 120)
    assert all(a.status == "ok" for a in answers)
    assert verdict.status == "error" and verdict.error is not None
    assert verdict.error.code == ErrorCode.INTERNAL and not verdict.error.retryable
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        dead = await settings.topology.dead.declare(channel)
        async with dead.iterator() as messages:
            letter = await asyncio.wait_for(anext(messages), timeout=30)
            await letter.ack()
    assert letter.correlation_id == "poison"
    assert worker.stats.redeliveries >= 4  # retried up to the delivery limit, then given up


async def test_a_full_request_queue_refuses_new_requests_at_once(settings: WorkerSettings) -> None:
    small = settings.model_copy(update={"max_queued": 5})
    accepted = 0
    async with RetrievalClient(small, timeout=30) as client:
        with pytest.raises(RetrievalOverloaded) as refused:
            for i in range(20):
                started = time.monotonic()
                await client.submit(Query("q", "m", LIMITS), request_id=f"r{i}")
                accepted += 1
    assert time.monotonic() - started < 5
    # A quorum queue flips to refusing once its length exceeds the limit: 5 or 6 fit.
    assert accepted in (5, 6)
    assert refused.value.retryable and refused.value.code == ErrorCode.OVERLOADED


async def test_a_locked_sqlite_file_fails_writes_retryably_and_never_blocks_reads(
    settings: WorkerSettings, embedder: Embedder, tmp_path: Path
) -> None:
    store = SQLiteStore(tmp_path / "locked.db", writable=True, busy_timeout_s=0.2)
    memory = Memory("m1", "tenant", MemoryType.LONG_TERM, "likes tea", 1_700_000_000.0)
    await store.upsert([memory], (await embedder.embed([memory.content])))
    locker = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with pytest.raises(StoreUnavailable, match="locked"):
            await store.upsert([memory], (await embedder.embed([memory.content])))
        async with (
            running_worker(settings, embedder, store),
            RetrievalClient(settings, timeout=30) as client,
        ):
            reply = await client.retrieve("tea", "tenant", {"long_term_memory": 1})
        assert reply.status == "ok"  # WAL: readers never wait for the writer
        assert [hit.id for hit in reply.results[MemoryType.LONG_TERM]] == ["m1"]
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    await store.upsert([memory], (await embedder.embed([memory.content])))  # recovered
    await store.close()


async def test_requests_that_expire_in_the_queue_never_reach_the_model(
    settings: WorkerSettings,
    embedder: Embedder,
    demo_store: SQLiteStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    embedded: list[str] = []
    embed = embedder.embed

    async def recording(texts: Sequence[str], deadline: float | None = None) -> Any:
        embedded.extend(texts)
        return await embed(texts, deadline)

    monkeypatch.setattr(embedder, "embed", recording)
    probes = [Query(f"expired probe {i}", "travel-concierge:maya", LIMITS) for i in range(20)]
    async with RetrievalClient(settings, timeout=30) as client:
        futures = [await client.submit(probe, timeout=0.3) for probe in probes]
        for future in futures:  # no worker yet: every caller gives up first
            with pytest.raises(RetrievalTimeout):
                await client.wait(future, 0.3)
        async with running_worker(settings, embedder, demo_store) as worker:
            fresh = await client.retrieve("Which seat?", "travel-concierge:maya", LIMITS)
    assert fresh.status == "ok"
    assert not [text for text in embedded if text.startswith("expired probe")]
    assert worker.stats.requests == 1
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        dead = await settings.topology.dead.declare(await connection.channel())
        letters = [await next_message(dead) for _ in probes]  # dropped by the broker
    assert {(m.headers or {}).get("x-first-death-reason") for m in letters} == {"expired"}


async def test_an_oversized_reply_is_one_clear_error_settled_once(
    settings: WorkerSettings, embedder: Embedder, demo_store: SQLiteStore
) -> None:
    tight = settings.model_copy(update={"max_reply_bytes": 4_000})
    big = Query("Anything at all?", "travel-concierge:maya", {t: 20 for t in MemoryType})
    small = Query("Which seat?", "travel-concierge:maya", {"long_term_memory": 1})
    async with (
        running_worker(tight, embedder, demo_store) as worker,
        RetrievalClient(settings, timeout=30) as client,
    ):
        too_big, *others = await client.retrieve_many([big, small, small, small])
        after = await client.retrieve("Which seat?", "travel-concierge:maya", LIMITS)
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        queue = await (await connection.channel()).declare_queue(
            settings.topology.requests.name, passive=True
        )
        dead = await settings.topology.dead.declare(await connection.channel())
    assert too_big.status == "error" and too_big.error is not None
    assert too_big.error.code == ErrorCode.INVALID_REQUEST and not too_big.error.retryable
    assert "RECALLQ_MAX_REPLY_BYTES" in too_big.error.message
    assert all(reply.status == "ok" for reply in [*others, after])
    assert worker.stats.redeliveries == 0 and client.dropped_replies == 0
    assert queue.declaration_result.message_count == 0  # acked, not bounced back
    assert dead.declaration_result.message_count == 0
