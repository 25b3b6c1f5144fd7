"""`make demo`: seed the demo memories, start a worker, ask over RPC, print, stop.

Everything runs against a fresh SQLite file under .demo/ and its own queue
prefix, so the demo never touches another deployment's queues or data.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aio_pika

from producer.bulk import BulkJob
from producer.cli import DEFAULT_LIMITS, render, render_summary
from producer.client import Query, RetrievalClient
from producer.workers import NoWorkers, wait_for_workers
from schemas.settings import BrokerSettings

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / ".demo"
MEMORIES = ROOT / "data" / "demo" / "memories.jsonl"
QUESTIONS = ROOT / "data" / "demo" / "questions.json"


def main() -> int:
    DEMO_DIR.mkdir(exist_ok=True)
    db = DEMO_DIR / "recallq.db"
    for path in DEMO_DIR.glob("recallq.db*"):
        path.unlink()
    env = {
        **os.environ,
        "RECALLQ_STORE_URL": f"sqlite:///{db}",
        "RECALLQ_QUEUE_PREFIX": os.environ.get("RECALLQ_QUEUE_PREFIX", "recallq-demo"),
        "RECALLQ_LOG_FORMAT": "json",
        "RECALLQ_METRICS_PORT": os.environ.get("RECALLQ_METRICS_PORT", "0"),
    }
    print(f"== 1. ingest {MEMORIES.relative_to(ROOT)} into {db.relative_to(ROOT)}", flush=True)
    subprocess.run([sys.executable, "-m", "worker", "ingest", str(MEMORIES)], env=env, check=True)

    settings = BrokerSettings(queue_prefix=env["RECALLQ_QUEUE_PREFIX"])
    asyncio.run(delete_demo_queues(settings))  # the demo's own; a fresh start every time
    log_path = DEMO_DIR / "worker.log"
    print(f"== 2. start a worker (logs: {log_path.relative_to(ROOT)})", flush=True)
    with log_path.open("w") as log:
        worker = subprocess.Popen([sys.executable, "-m", "worker", "run"], env=env, stderr=log)
        answered = False
        try:
            asyncio.run(ask_questions(settings, worker))
            answered = True
        except NoWorkers as exc:
            print(f"demo failed: {exc} ({log_path.relative_to(ROOT)})", file=sys.stderr)
        finally:
            print("== 6. stop the worker with SIGTERM", flush=True)
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(timeout=60)
            print(f"worker exited with code {code}")
    return 0 if answered and code == 0 else 1


async def delete_demo_queues(settings: BrokerSettings) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        await settings.topology.delete_shared(await connection.channel())


def write_bulk_input(questions: list[dict[str, str]], count: int) -> Path:
    """A bulk job's input: the demo questions, reworded `count` times in all."""
    path = DEMO_DIR / "bulk-input.jsonl"
    with path.open("w") as lines:
        for i in range(count):
            q = questions[i % len(questions)]
            line = {
                "query": f"{q['query']} (run {i // len(questions)})",
                "memory_id": q["memory_id"],
            }
            lines.write(json.dumps({**line, "limits": DEFAULT_LIMITS}) + "\n")
    return path


async def run_bulk_job(settings: BrokerSettings, questions: list[dict[str, str]]) -> None:
    job_input = write_bulk_input(questions, 1400)
    output = DEMO_DIR / "bulk-results.jsonl"
    output.unlink(missing_ok=True)
    print(f"== 5. a bulk job: {job_input.relative_to(ROOT)} -> {output.relative_to(ROOT)}")
    print("   (the same as: recallq bulk INPUT --output RESULTS)", flush=True)
    summary = await BulkJob(job_input, output, settings, job_id="demo").run()
    print(render_summary(summary), flush=True)


async def ask_questions(settings: BrokerSettings, worker: subprocess.Popen[bytes]) -> None:
    questions = json.loads(QUESTIONS.read_text())
    async with RetrievalClient(settings, timeout=60) as client:
        await wait_for_workers(settings, alive=lambda: worker.poll() is None)
        print("== 3. ask the demo questions one at a time\n", flush=True)
        for item in questions:
            started = time.perf_counter()
            response = await client.retrieve(item["query"], item["memory_id"], DEFAULT_LIMITS)
            elapsed = (time.perf_counter() - started) * 1000
            print(f"[{item['memory_id']}]")
            print(render(item["query"], response, elapsed), end="\n\n", flush=True)

        burst = [Query(q["query"], q["memory_id"], DEFAULT_LIMITS) for q in questions] * 30
        print(f"== 4. the same questions {len(burst)} times, all in flight at once", flush=True)
        started = time.perf_counter()
        responses = await client.retrieve_many(burst, concurrency=len(burst))
        elapsed = time.perf_counter() - started
        ok = sum(r.status == "ok" for r in responses)
        sizes = sorted({r.batch_size for r in responses}, reverse=True)
        print(
            f"{ok}/{len(burst)} ok in {elapsed:.2f} s ({len(burst) / elapsed:.0f} requests/s); "
            f"batch sizes seen: {sizes[:8]}",
            flush=True,
        )
    await run_bulk_job(settings, questions)


if __name__ == "__main__":
    sys.exit(main())
