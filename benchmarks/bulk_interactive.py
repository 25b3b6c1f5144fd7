"""Interactive RPC latency while a bulk job runs, against the same call at idle.

The interactive lane fills every batch first, so a caller behind a bulk backlog
should wait about one batch, not the backlog.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import DEMO_QUESTIONS, percentiles, worker_process, write_results
from producer.bulk import BulkJob, BulkSummary
from producer.client import RetrievalClient

LIMITS = {"conversation_memory": 3, "long_term_memory": 3, "procedural_memory": 3}


async def interactive_latencies(
    client: RetrievalClient,
    questions: list[dict[str, str]],
    *,
    count: int,
    tag: str,
    while_running: asyncio.Task[BulkSummary] | None = None,
) -> list[float]:
    """Serial RPC calls with unique texts; with `while_running`, only while that task runs."""
    samples = []
    for i in range(count):
        if while_running is not None and while_running.done():
            break
        question = questions[i % len(questions)]
        text = f"{question['query']} {tag}{i}"
        started = time.perf_counter()
        response = await client.retrieve(text, question["memory_id"], LIMITS)
        samples.append((time.perf_counter() - started) * 1000)
        assert response.status == "ok", response.error
    return samples


def write_job_input(path: Path, questions: list[dict[str, str]], count: int) -> None:
    with path.open("w") as lines:
        for i in range(count):
            q = questions[i % len(questions)]
            line = {"query": f"{q['query']} (bulk {i})", "memory_id": q["memory_id"]}
            lines.write(json.dumps({**line, "limits": LIMITS}) + "\n")


async def measure(bulk_requests: int, interactive_calls: int) -> dict[str, Any]:
    questions = json.loads(DEMO_QUESTIONS.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        write_job_input(workdir / "bulk.jsonl", questions, bulk_requests)
        async with (
            worker_process(workdir) as settings,
            RetrievalClient(settings, timeout=60) as client,
        ):
            await interactive_latencies(client, questions, count=10, tag="warm")
            idle = await interactive_latencies(client, questions, count=interactive_calls, tag="i")
            job = BulkJob(workdir / "bulk.jsonl", workdir / "out.jsonl", settings, progress=False)
            running = asyncio.create_task(job.run())
            during = await interactive_latencies(
                client, questions, count=10**6, tag="b", while_running=running
            )
            summary = await running
    return {
        "bulk_requests": bulk_requests,
        "bulk_requests_per_s": round(summary.rate, 1),
        "bulk_seconds": round(summary.seconds, 2),
        "interactive_idle_ms": percentiles(idle),
        "interactive_during_bulk_ms": percentiles(during),
        "settings": {"limits": LIMITS, "max_batch": 64, "interactive_calls": "serial"},
    }


def main(quick: bool = False) -> None:
    bulk, calls = (1000, 30) if quick else (5000, 100)
    results = asyncio.run(measure(bulk, calls))
    path = write_results("bulk-interactive-quick" if quick else "bulk-interactive", results)
    print(f"bulk job: {bulk} requests at {results['bulk_requests_per_s']} requests/s")
    for label, key in (
        ("at idle", "interactive_idle_ms"),
        ("during bulk", "interactive_during_bulk_ms"),
    ):
        p = results[key]
        print(
            f"interactive {label:12} n={p['count']:4}  p50 {p['p50']} ms  p95 {p['p95']} ms  "
            f"p99 {p['p99']} ms  max {p['max']} ms"
        )
    print(f"written to {path}")
