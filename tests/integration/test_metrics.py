"""A running worker's /metrics, /healthz and /readyz, scraped over HTTP."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

from producer.client import Query, RetrievalClient
from tests.integration.conftest import running_worker
from tests.stores import WrappedStore
from worker.embedding.embedder import Embedder
from worker.settings import WorkerSettings
from worker.store import GroupResult, SearchGroup, SQLiteStore


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            match = re.match(rf"{re.escape(name)}(\{{[^}}]*\}})? (\S+)", line)
            if match:
                return float(match.group(2))
    return 0.0


async def test_metrics_move_and_health_answers(
    settings: WorkerSettings, embedder: Embedder, demo_store: SQLiteStore
) -> None:
    async with (
        running_worker(settings, embedder, demo_store) as worker,
        RetrievalClient(settings, timeout=30) as client,
    ):
        assert worker.health is not None
        port = worker.health.port
        before = (await asyncio.to_thread(get, port, "/metrics"))[1]
        for _ in range(2):  # the second is an embedding-cache hit
            ok = await client.retrieve("knee pain", "health-coach:sam", {"long_term_memory": 2})
            assert ok.status == "ok"
        # A deadline already past when the worker sees it: answered `expired`.
        late = await client.submit(Query("x", "m", {"summaries": 1}), timeout=0.001)
        assert (await client.wait(late, 30)).status == "error"
        await asyncio.wait_for(worker.unsettled.wait_empty(), 30)  # the last ack follows its reply
        status, after = await asyncio.to_thread(get, port, "/metrics")
        assert status == 200
        assert await asyncio.to_thread(get, port, "/healthz") == (200, "alive\n")
        assert await asyncio.to_thread(get, port, "/readyz") == (200, "ready\n")

    ok_before = sample(before, "recallq_requests_total", status="ok")
    assert sample(after, "recallq_requests_total", status="ok") == ok_before + 2
    assert sample(after, "recallq_requests_total", status="error", code="expired") >= 1
    assert sample(after, "recallq_batch_size_count") >= 2
    assert sample(after, "recallq_embed_seconds_count") >= 2
    assert sample(after, "recallq_batch_padded_tokens_count") >= 2
    assert sample(after, "recallq_queue_wait_seconds_count") >= 2
    assert sample(after, "recallq_search_seconds_count", store_mode="exact") >= 2
    assert sample(after, "recallq_store_cache_lookups_total") >= 2
    assert sample(after, "recallq_store_cache_bytes") > 0
    assert sample(after, "recallq_request_seconds_count", lane="interactive", status="ok") >= 2
    assert sample(after, "recallq_in_flight") == 0
    assert sample(after, "recallq_embed_cache_hit_ratio") > 0


class StuckStore(WrappedStore):
    """The real store, except that searching one tenant hangs until released."""

    def __init__(self, store: SQLiteStore) -> None:
        super().__init__(store)
        self.release = asyncio.Event()

    async def search(self, groups: Sequence[SearchGroup]) -> list[GroupResult]:
        if any(group.owner == "stuck:tenant" for group in groups):
            await self.release.wait()
        return await self.store.search(groups)


async def until(check: Callable[[], bool], timeout: float = 30) -> None:
    """A bounded wait for something observable from outside (an HTTP status)."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_a_delivery_left_unsettled_turns_readyz_503_until_it_is_settled(
    settings: WorkerSettings, embedder: Embedder, demo_store: SQLiteStore
) -> None:
    watched = settings.model_copy(update={"unsettled_limit_s": 0.3})
    store = StuckStore(demo_store)
    async with (
        running_worker(watched, embedder, store) as worker,  # type: ignore[arg-type]
        RetrievalClient(settings, timeout=60) as client,
    ):
        assert worker.health is not None
        port = worker.health.port
        assert get(port, "/readyz")[0] == 200
        stuck = await client.submit(Query("anything", "stuck:tenant", {"summaries": 1}))
        await until(lambda: get(port, "/readyz")[0] == 503)
        served = await client.retrieve("knee pain", "health-coach:sam", {"summaries": 1})
        assert served.status == "ok"  # the rest of the worker is not stuck
        stuck_count = worker.metrics.registry.get_sample_value("recallq_unsettled_too_long_total")
        store.release.set()
        assert (await client.wait(stuck, 30)).status == "ok"
        await until(lambda: get(port, "/readyz")[0] == 200)
    assert stuck_count == 1
