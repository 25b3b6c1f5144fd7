"""Celery under the same load shapes. Celery's client is blocking and its rpc://
results belong to the thread that asked, so each shape runs on one thread."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC
from pathlib import Path
from typing import Any

from schemas.messages import RetrievalRequest

Query = tuple[str, str]
LIMITS = {"conversation_memory": 5, "long_term_memory": 5, "procedural_memory": 5}


def body(query: str, memory_id: str) -> str:
    request = RetrievalRequest(
        request_id=uuid.uuid4().hex, query=query, memory_id=memory_id, limits=LIMITS
    )
    return request.model_dump_json()


@contextmanager
def celery_worker(db: Path, processes: int) -> Iterator[tuple[Any, int]]:
    """A prefork Celery worker (one process per core) and the task to call."""
    prefix = f"recallq-bench-celery-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "RECALLQ_BENCH_DB": str(db), "RECALLQ_QUEUE_PREFIX": prefix}
    os.environ["RECALLQ_QUEUE_PREFIX"] = prefix  # the client side reads the same queue name
    from benchmarks import celery_app

    celery_app.app.conf.task_default_queue = f"{prefix}.celery"
    command = [
        sys.executable, "-m", "celery", "-A", "benchmarks.celery_app", "worker",
        "-P", "prefork", "-c", str(processes), "--loglevel", "WARNING", "--without-gossip",
        "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield celery_app.retrieve, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        with celery_app.app.connection_for_write() as connection:
            connection.default_channel.queue_delete(f"{prefix}.celery")


def one_at_a_time(task: Any, queries: Iterator[Query], count: int) -> list[float]:
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        task.apply_async((body(*next(queries)),)).get(timeout=300)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def saturated(task: Any, queries: Iterator[Query], in_flight: int, seconds: float) -> float:
    started = time.perf_counter()
    stop_at = started + seconds
    pending = deque(task.apply_async((body(*next(queries)),)) for _ in range(in_flight))
    done = 0
    while pending:
        pending.popleft().get(timeout=300)
        done += 1
        if time.perf_counter() < stop_at:
            pending.append(task.apply_async((body(*next(queries)),)))
    return done / (time.perf_counter() - started)


def open_loop(
    task: Any, queries: Iterator[Query], rate: float, seconds: float
) -> tuple[list[float], float]:
    """Send on schedule; latency = the worker's completion time less the send time."""
    sent = []
    start = time.perf_counter()
    for i in range(max(1, int(rate * seconds))):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)  # the schedule itself, not synchronisation
        sent.append((time.time(), task.apply_async((body(*next(queries)),))))
    latencies, last = [], 0.0
    for sent_at, result in sent:
        result.get(timeout=300)
        done = result.date_done.replace(tzinfo=UTC).timestamp()
        latencies.append((done - sent_at) * 1000)
        last = max(last, done)
    return latencies, last - sent[0][0]
