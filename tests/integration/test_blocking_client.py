"""The synchronous façade: one connection reused by every thread, one round trip for
many requests, and every wait bounded (no worker, no broker, a closed client)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import producer.blocking
from producer.blocking import BlockingClient
from producer.client import Query, RetrievalClient, RetrievalTimeout, RetrievalUnavailable
from producer.memorizz import RecallqProvider
from schemas.messages import RetrievalResponse
from tests.integration.conftest import declare_topology, running_worker
from worker.embedding.embedder import Embedder
from worker.settings import WorkerSettings
from worker.store import SQLiteStore

QUESTION = Query("my knee hurts after hills", "health-coach:sam", {"long_term_memory": 2})


class Counted(RetrievalClient):
    made = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        Counted.made += 1
        super().__init__(*args, **kwargs)


async def test_threads_share_one_connection_and_many_requests_make_one_round_trip(
    settings: WorkerSettings,
    embedder: Embedder,
    demo_store: SQLiteStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(producer.blocking, "RetrievalClient", Counted)
    Counted.made = 0
    client = BlockingClient(settings, timeout=30)
    async with running_worker(settings, embedder, demo_store) as worker:

        def ask(_: int) -> RetrievalResponse:
            return client.retrieve(QUESTION)

        with ThreadPoolExecutor(8) as pool:  # the calls block: off this test's loop
            replies = await asyncio.to_thread(lambda: list(pool.map(ask, range(24))))
        many = await asyncio.to_thread(client.retrieve_many, [QUESTION] * 10)
        answered = worker.stats.requests
    await asyncio.to_thread(client.close)
    assert all(r.status == "ok" and r.results["long_term_memory"] for r in replies)
    assert all(isinstance(r, RetrievalResponse) and r.status == "ok" for r in many)
    assert Counted.made == 1 and answered == 34
    assert not client.connected


async def test_no_reply_in_time_raises_within_the_timeout(settings: WorkerSettings) -> None:
    await declare_topology(settings)  # the queues exist; no worker consumes them
    client = BlockingClient(settings, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(RetrievalTimeout):
        await asyncio.to_thread(client.retrieve, QUESTION)
    assert time.monotonic() - started < 0.5 + producer.blocking.MARGIN_S + 5  # + the connect
    await asyncio.to_thread(client.close)


class OwnAnswers:
    """A memorizz provider stand-in: answers every search itself."""

    def retrieve_by_query(self, query: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return [{"_id": "own"}]

    def close(self) -> None:
        pass


async def test_an_unreachable_broker_fails_over_at_once_after_the_first_bounded_wait(
    settings: WorkerSettings,
) -> None:
    nowhere = settings.model_copy(update={"amqp_url": "amqp://guest:guest@127.0.0.1:1/"})
    provider = RecallqProvider(OwnAnswers(), broker=nowhere, timeout_s=1, connect_wait_s=0.5)
    ask = {"memory_type": "conversation_memory", "memory_id": "m", "limit": 2, "user_id": "u"}
    timings = []
    for _ in range(3):
        started = time.monotonic()
        found = await asyncio.to_thread(provider.retrieve_by_query, "knee", **ask)
        timings.append(time.monotonic() - started)
        assert found == [{"_id": "own"}]
    assert provider.recallq_stats.fallbacks == 3 and provider.recallq_stats.requests == 0
    assert timings[0] < 0.5 + 5 + producer.blocking.MARGIN_S + 5  # connect wait + one attempt
    assert max(timings[1:]) < 0.5  # not connecting again within retry_connect_s
    await asyncio.to_thread(provider.close)
    with pytest.raises(RetrievalUnavailable):  # and the façade says why, when asked directly
        await asyncio.to_thread(provider.recallq.retrieve, QUESTION)
