"""Burst mode: a worker drains what is queued, then exits 0 by itself (arq's burst)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from producer.client import Query, RetrievalClient
from tests.conftest import ROOT
from worker.settings import WorkerSettings
from worker.store import SQLiteStore

LIMITS = {"long_term_memory": 2, "summaries": 1}


async def test_a_burst_worker_answers_what_was_queued_and_exits_0(
    settings: WorkerSettings,
    demo_store: SQLiteStore,
    demo_questions: list[dict[str, str]],
    tmp_path: Path,
) -> None:
    queries = [
        Query(f"{q['query']} ({i})", q["memory_id"], LIMITS)
        for i, q in enumerate(demo_questions * 29)
    ][:200]
    env = {
        **os.environ,
        "RECALLQ_AMQP_URL": settings.amqp_url,
        "RECALLQ_QUEUE_PREFIX": settings.queue_prefix,
        "RECALLQ_STORE_URL": f"sqlite:///{demo_store.path}",
        "RECALLQ_METRICS_PORT": "0",
        "RECALLQ_LOG_FORMAT": "json",
    }
    async with RetrievalClient(settings, timeout=240) as client:
        futures = [
            await client.submit(q, request_id=f"r{i}", timeout=240) for i, q in enumerate(queries)
        ]
        with (tmp_path / "worker.log").open("w") as log:
            worker = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "worker", "run", "--burst", env=env, cwd=ROOT, stderr=log
            )
        exit_code = await asyncio.wait_for(worker.wait(), timeout=240)
        replies = await asyncio.gather(*(client.wait(f, 30) for f in futures))
    assert exit_code == 0, (tmp_path / "worker.log").read_text()[-2000:]
    assert [r.request_id for r in replies] == [f"r{i}" for i in range(200)]
    assert all(r.status == "ok" for r in replies)
    assert '"burst: the request queues are empty' in (tmp_path / "worker.log").read_text()
