"""Bulk jobs over the real RabbitMQ: complete, exact, resumable, and never starving RPC."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from producer.bulk import BulkJob
from producer.client import RetrievalClient
from schemas.messages import MemoryType, RetrievalResponse
from schemas.topology import Layout
from tests.conftest import ROOT
from tests.integration.conftest import running_worker
from tests.oracle import Oracle, assert_hits_match
from worker.embedding.embedder import Embedder
from worker.settings import WorkerSettings
from worker.store import SQLiteStore

LIMITS = {"long_term_memory": 3, "procedural_memory": 2}


# The whole suite runs in both broker topologies (this overrides the `layout` fixture).
pytestmark = pytest.mark.parametrize("layout", list(Layout), ids=str)


def write_input(path: Path, questions: list[dict[str, str]], count: int) -> list[dict[str, object]]:
    lines: list[dict[str, object]] = []
    for i in range(count):
        question = questions[i % len(questions)]
        lines.append(
            {
                "request_id": f"job-{i}",
                "query": f"{question['query']} (take {i // len(questions)})",
                "memory_id": question["memory_id"],
                "limits": LIMITS,
            }
        )
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return lines


def read_results(path: Path) -> list[RetrievalResponse]:
    return [RetrievalResponse.model_validate_json(line) for line in path.read_text().splitlines()]


async def test_a_2000_request_job_writes_one_oracle_exact_line_per_input_line(
    settings: WorkerSettings,
    embedder: Embedder,
    demo_store: SQLiteStore,
    oracle: Oracle,
    demo_questions: list[dict[str, str]],
    tmp_path: Path,
) -> None:
    lines = write_input(tmp_path / "in.jsonl", demo_questions, 2000)
    with (tmp_path / "in.jsonl").open("a") as extra:
        extra.write('{"query": "broken"\n')  # line 2001
    job = BulkJob(tmp_path / "in.jsonl", tmp_path / "out.jsonl", settings, progress=False)
    async with running_worker(settings, embedder, demo_store):
        summary = await asyncio.wait_for(job.run(), timeout=300)
    assert summary.complete and summary.written == 2000 and summary.by_status["ok"] == 2000
    assert summary.bad_lines == 1
    assert json.loads(job.errors_path.read_text())["line"] == 2001

    results = {r.request_id: r for r in read_results(tmp_path / "out.jsonl")}
    assert len(results) == 2000 == len(read_results(tmp_path / "out.jsonl"))
    vectors = oracle.embed_many([str(line["query"]) for line in lines])
    now = time.time()
    for line, vector in zip(lines, vectors, strict=True):
        result = results[str(line["request_id"])]
        for memory_type, limit in LIMITS.items():
            expected = oracle.retrieve(
                str(line["query"]),
                str(line["memory_id"]),
                memory_type,
                limit,
                now=now,
                vector=vector,
            )
            assert_hits_match(result.results[MemoryType(memory_type)], expected)


async def test_an_interrupted_job_resumes_and_writes_every_request_exactly_once(
    settings: WorkerSettings,
    embedder: Embedder,
    demo_store: SQLiteStore,
    demo_questions: list[dict[str, str]],
    tmp_path: Path,
) -> None:
    lines = write_input(tmp_path / "in.jsonl", demo_questions, 1500)
    output = tmp_path / "out.jsonl"
    half_written = asyncio.Event()

    def watch(_: RetrievalResponse) -> None:
        if first.summary_written() >= 700:
            half_written.set()

    first = _CountingJob(tmp_path / "in.jsonl", output, settings, progress=False, on_result=watch)
    async with running_worker(settings, embedder, demo_store):
        task = asyncio.create_task(first.run())
        await asyncio.wait_for(half_written.wait(), timeout=120)
        task.cancel()  # what Ctrl-C does to asyncio.run
        await asyncio.gather(task, return_exceptions=True)
        written_before = len(read_results(output))  # the file is valid JSONL
        assert 700 <= written_before < 1500

        resumed = BulkJob(tmp_path / "in.jsonl", output, settings, progress=False)
        summary = await asyncio.wait_for(resumed.run(), timeout=300)
    assert summary.complete
    assert summary.already_done == written_before
    ids = [r.request_id for r in read_results(output)]
    assert sorted(ids) == sorted(str(line["request_id"]) for line in lines)


async def test_a_killed_client_process_resumes_exactly_once(
    settings: WorkerSettings,
    embedder: Embedder,
    demo_store: SQLiteStore,
    demo_questions: list[dict[str, str]],
    tmp_path: Path,
) -> None:
    lines = write_input(tmp_path / "in.jsonl", demo_questions, 1200)
    output = tmp_path / "out.jsonl"
    env = {**os.environ, "RECALLQ_AMQP_URL": settings.amqp_url}
    env["RECALLQ_QUEUE_PREFIX"] = settings.queue_prefix
    env["RECALLQ_BROKER_TOPOLOGY"] = settings.broker_topology.value
    command = [sys.executable, "-m", "producer", "bulk", str(tmp_path / "in.jsonl")]
    async with running_worker(settings, embedder, demo_store):
        client = await asyncio.create_subprocess_exec(
            *command, "--output", str(output), env=env, cwd=ROOT, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 120
        while not output.exists() or output.read_text().count("\n") < 300:
            assert client.returncode is None, "the job ended before it could be killed"
            assert time.monotonic() < deadline, "the job wrote too little within 120 s"
            await asyncio.sleep(0.05)
        client.send_signal(signal.SIGKILL)
        await asyncio.wait_for(client.wait(), timeout=30)
        summary = await BulkJob(tmp_path / "in.jsonl", output, settings, progress=False).run()
    assert summary.complete and summary.already_done >= 300
    ids = [r.request_id for r in read_results(output)]
    assert sorted(ids) == sorted(str(line["request_id"]) for line in lines)


async def test_interactive_calls_are_answered_while_a_bulk_job_runs(
    settings: WorkerSettings,
    embedder: Embedder,
    demo_store: SQLiteStore,
    demo_questions: list[dict[str, str]],
    tmp_path: Path,
) -> None:
    total = 3000
    write_input(tmp_path / "in.jsonl", demo_questions, total)
    job = _CountingJob(tmp_path / "in.jsonl", tmp_path / "out.jsonl", settings, progress=False)
    async with running_worker(settings, embedder, demo_store), RetrievalClient(settings) as client:
        running = asyncio.create_task(job.run())
        while job.summary_written() < 100:  # the bulk backlog is being served
            await asyncio.wait_for(job.progressed.wait(), timeout=120)
            job.progressed.clear()
        bulk_done_at_reply = []
        for question in demo_questions * 2:
            response = await client.retrieve(question["query"], question["memory_id"], LIMITS)
            assert response.status == "ok"
            bulk_done_at_reply.append(job.summary_written())
        summary = await asyncio.wait_for(running, timeout=300)
    assert summary.complete
    # Every interactive reply came while the bulk backlog was still being drained.
    assert max(bulk_done_at_reply) < total


class _CountingJob(BulkJob):
    """A BulkJob that tells a test how many results it has written so far."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._written = 0
        self.progressed = asyncio.Event()
        user_callback = self.on_result

        def count(response: RetrievalResponse) -> None:
            self._written += 1
            self.progressed.set()
            if user_callback is not None:
                user_callback(response)

        self.on_result = count

    def summary_written(self) -> int:
        return self._written
