"""Files renamed in and out under a live worker: it never writes into any of them.

The worker serves `store.db` read-only. Whatever is renamed to that path (a
SQLite file of another program, a truncated file, nothing at all) is answered
`store_unavailable` and left byte for byte as it was; the good store renamed
back is served at the next request, its rows unchanged on disk. The README's
swap procedure (ingest into a new file, then rename it over the store) runs
under load without a single failed request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from producer.client import Query, RetrievalClient
from schemas.messages import ErrorCode, RankWeights, RetrievalResponse
from tests.conftest import DEMO_MEMORIES
from tests.integration.conftest import running_worker
from tests.oracle import Oracle
from worker.admin.ingest import ingest_file
from worker.embedding.embedder import Embedder
from worker.service import Worker
from worker.settings import WorkerSettings
from worker.store import SQLiteStore

TENANT = "health-coach:sam"
LIMITS = {"long_term_memory": 3}
QUESTION = "my knee hurts after running hills"
BY_RELEVANCE = RankWeights(recency=0.0, importance=0.0)  # ranked as the oracle ranks: by cosine


async def build_store(path: Path, embedder: Embedder, memories: Path = DEMO_MEMORIES) -> None:
    """A store as `recallq worker ingest` makes one (a writable store, closed after)."""
    writer = SQLiteStore(path, writable=True)
    report = await ingest_file(memories, writer, embedder, progress=False)
    assert report.stored > 0 and not report.bad_lines
    await writer.close()


def rows_digest(path: Path) -> str:
    """A hash of every row, read through SQLite read-only (as the data, not the bytes)."""
    conn = sqlite3.connect(path.absolute().as_uri() + "?mode=ro", uri=True)
    try:
        digest = hashlib.sha256()
        for row in conn.execute("SELECT * FROM memories ORDER BY memory_type, id"):
            digest.update(repr(row).encode())
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        digest.update(repr(sorted(tables)).encode())
        return digest.hexdigest()
    finally:
        conn.close()


def wal_bytes(database: Path) -> int:
    """Bytes in the database's write-ahead log (none at all: 0)."""
    wal = Path(f"{database}-wal")
    return wal.stat().st_size if wal.exists() else 0


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def foreign_database(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE foo (bar TEXT)")
    conn.execute("INSERT INTO foo VALUES ('not yours')")
    conn.commit()
    conn.close()


def readiness(worker: Worker) -> int:
    assert worker.health is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.health.port}/readyz") as answer:
            return int(answer.status)
    except urllib.error.HTTPError as refused:
        return refused.code


async def readiness_becomes(worker: Worker, status: int, timeout: float = 10) -> None:
    """Bounded wait: the worker looks at its store every second, with no request coming."""
    deadline = time.monotonic() + timeout
    while (now := await asyncio.to_thread(readiness, worker)) != status:
        assert time.monotonic() < deadline, f"/readyz stayed {now}, expected {status}"
        await asyncio.sleep(0.1)


def hit_ids(reply: RetrievalResponse) -> list[str]:
    assert reply.status == "ok", reply.error
    return [hit.id for hit in reply.results["long_term_memory"]]


async def test_foreign_truncated_and_missing_files_under_a_live_worker_change_nothing(
    settings: WorkerSettings, embedder: Embedder, oracle: Oracle, tmp_path: Path
) -> None:
    live, parked = tmp_path / "store.db", tmp_path / "good.db"
    await build_store(live, embedder)
    good_rows = rows_digest(live)
    foreign, empty = tmp_path / "foreign.db", tmp_path / "empty.db"
    foreign_database(foreign)
    empty.touch()
    foreign_bytes = file_digest(foreign)
    expected = [e.id for e in oracle.nearest(QUESTION, TENANT, "long_term_memory", 3)]

    store = SQLiteStore(live)  # read-only, as `recallq worker run` opens it
    async with (
        running_worker(settings, embedder, store) as worker,
        RetrievalClient(settings, timeout=30) as client,
    ):

        async def ask(timeout: float = 30) -> RetrievalResponse:
            """Store errors are retried until shortly before the deadline: keep it short
            where the store is known to be away."""
            return await client.retrieve(
                QUESTION, TENANT, LIMITS, weights=BY_RELEVANCE, timeout=timeout, search="vector"
            )

        assert hit_ids(await ask()) == expected
        for stranger in (foreign, empty, None):  # None: nothing at the path at all
            live.rename(parked)
            if stranger is not None:
                stranger.rename(live)
            unavailable = await ask(timeout=2)
            assert unavailable.status == "error" and unavailable.error is not None
            assert unavailable.error.code == ErrorCode.STORE_UNAVAILABLE
            assert unavailable.error.retryable
            await readiness_becomes(worker, 503)
            if stranger is not None:
                live.rename(stranger)
            else:
                assert not live.exists()  # the worker created nothing there
            parked.rename(live)
            assert hit_ids(await ask()) == expected  # served again at the next request
            await readiness_becomes(worker, 200)
    await store.close()

    assert file_digest(foreign) == foreign_bytes
    assert empty.stat().st_size == 0
    assert rows_digest(live) == good_rows
    assert wal_bytes(foreign) == wal_bytes(empty) == 0


def changed_memories(tmp_path: Path) -> Path:
    """The demo memories with new content: a re-ingest whose answers differ."""
    lines = []
    for line in DEMO_MEMORIES.read_text().splitlines():
        record: dict[str, Any] = json.loads(line)
        record["content"] = "v2 " + record["content"]
        lines.append(json.dumps(record))
    path = tmp_path / "v2.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_the_readme_swap_procedure_under_load_fails_no_request(
    settings: WorkerSettings, embedder: Embedder, tmp_path: Path
) -> None:
    live, staged = tmp_path / "store.db", tmp_path / "store.db.new"
    await build_store(live, embedder)
    old_rows = rows_digest(live)
    store = SQLiteStore(live)
    replies: list[RetrievalResponse] = []
    swapped = asyncio.Event()
    after_swap: list[RetrievalResponse] = []

    async with (
        running_worker(settings, embedder, store),
        RetrievalClient(settings, timeout=30) as client,
    ):

        async def caller(number: int) -> None:
            queries = [Query(QUESTION, TENANT, LIMITS)] * 4
            while len(after_swap) < 40:
                done = swapped.is_set()
                batch = await client.retrieve_many(queries, timeout=30)
                replies.extend(batch)
                if done:
                    after_swap.extend(batch)

        load = [asyncio.create_task(caller(n)) for n in range(4)]
        # 1. ingest into a new file beside the store (the command exits: its WAL is empty)
        await build_store(staged, embedder, changed_memories(tmp_path))
        new_rows = rows_digest(staged)
        assert wal_bytes(staged) == 0
        # 2. rename it over the store, while requests keep coming
        staged.rename(live)
        swapped.set()
        await asyncio.wait_for(asyncio.gather(*load), timeout=120)

    await store.close()
    failed = [r for r in replies if r.status != "ok"]
    assert not failed, failed[:3]
    assert len(replies) >= 40 + 16
    for reply in after_swap:  # asked after the rename: the new memories only
        assert all(hit.content.startswith("v2 ") for hit in reply.results["long_term_memory"])
    assert rows_digest(live) == new_rows != old_rows  # served, never written
