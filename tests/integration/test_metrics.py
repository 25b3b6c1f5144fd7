"""A running worker's /metrics, /healthz and /readyz, scraped over HTTP."""

from __future__ import annotations

import asyncio
import re
import urllib.error
import urllib.request

from producer.client import Query, RetrievalClient
from tests.integration.conftest import running_worker
from worker.embed import Embedder
from worker.settings import WorkerSettings
from worker.store import SQLiteStore


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
    assert sample(after, "recallq_search_seconds_count", memory_type="long_term_memory",
                  store_mode="exact") >= 2  # fmt: skip
    assert sample(after, "recallq_request_seconds_count", lane="interactive", status="ok") >= 2
    assert sample(after, "recallq_in_flight") == 0
    assert sample(after, "recallq_embed_cache_hit_ratio") > 0
