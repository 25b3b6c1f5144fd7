"""A worker started on anything but a recallq store says so in one line and exits 2;
SIGTERM during a start-up wait ends it at once."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from worker.store import SQLiteStore


def random_bytes(path: Path) -> Path:
    path.write_bytes(os.urandom(100_000))
    return path


def foreign_database(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE foo (bar TEXT)")
    conn.commit()
    conn.close()
    return path


def missing(path: Path) -> Path:
    return path.parent / "typo" / path.name


def under_a_file(path: Path) -> Path:
    (path.parent / "a-file").write_text("not a directory")
    return path.parent / "a-file" / path.name


CASES = {
    "random-bytes": (random_bytes, "is not a SQLite database"),
    "foreign-sqlite": (foreign_database, "is a SQLite database that is not a recallq store"),
    "missing": (missing, "is missing (no directory {parent}): create it with `recallq worker"),
    "under-a-file": (under_a_file, "is missing ({parent} is not a directory)"),
}


def listing(directory: Path) -> list[tuple[str, int]]:
    return sorted((str(path), path.stat().st_size) for path in directory.rglob("*"))


def worker_env(store: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "RECALLQ_STORE_URL": f"sqlite:///{store}",
            "RECALLQ_METRICS_PORT": "-1", "RECALLQ_LOG_FORMAT": "json", **extra}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
async def test_a_worker_started_on_anything_but_a_store_exits_with_one_clear_line(
    tmp_path: Path, case: str
) -> None:
    make, says = CASES[case]
    store = make(tmp_path / "bad.db")
    before = listing(tmp_path)
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "run", cwd=ROOT, env=worker_env(store),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(worker.communicate(), timeout=120)
    assert worker.returncode == 2
    lines = [line for line in err.decode().splitlines() if not line.startswith("{")]  # not logs
    assert len(lines) == 1, err.decode()
    assert lines[0].startswith(f"python -m worker run: store sqlite:///{store}: sqlite {store} ")
    assert says.format(parent=store.parent) in lines[0]
    assert lines[0].endswith("; check RECALLQ_STORE_URL")
    assert "Traceback" not in (out + err).decode()
    assert listing(tmp_path) == before  # nothing created, nothing written


async def test_sigterm_while_waiting_for_the_broker_ends_the_worker_at_once(
    demo_store: SQLiteStore,
) -> None:
    env = worker_env(
        demo_store.path,
        RECALLQ_AMQP_URL="amqp://guest:guest@127.0.0.1:1/",  # nothing listens there
        RECALLQ_CONNECT_WAIT_S="300",
    )
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "run", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert worker.stdout is not None
    try:
        async with asyncio.timeout(120):
            while b"broker not reachable yet" not in await worker.stdout.readline():
                pass
        worker.send_signal(signal.SIGTERM)
        await asyncio.wait_for(worker.wait(), timeout=5)
    finally:
        if worker.returncode is None:
            worker.kill()
    assert worker.returncode == 0
    assert b"stopped while waiting for the broker" in await worker.stdout.read()
