"""Failures that say what to do: with no broker, `recallq ask`, `recallq bulk` and
`recallq worker run` each end with one line on stderr and exit 2, no traceback; a
worker started before its broker waits for it (logging each retry), then serves."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.rabbit_nodes import LocalNode, can_run_nodes, local_nodes
from producer.client import RetrievalClient
from schemas.settings import BrokerSettings

RECALLQ = str(Path(sys.executable).parent / "recallq")


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def environment(tmp_path: Path, amqp_url: str, wait_s: float) -> dict[str, str]:
    return {**os.environ, "RECALLQ_AMQP_URL": amqp_url, "RECALLQ_CONNECT_WAIT_S": str(wait_s),
            "RECALLQ_STORE_URL": f"sqlite:///{tmp_path / 'memories.db'}",
            "RECALLQ_METRICS_PORT": "-1", "RECALLQ_LOG_FORMAT": "json",
            "RECALLQ_QUEUE_PREFIX": f"recallq-cli-{uuid.uuid4().hex[:8]}"}  # fmt: skip


@pytest.mark.parametrize(
    "command",
    [
        ["ask", "where do I live?", "--memory-id", "m"],
        ["bulk", "IN", "--output", "OUT"],
        ["worker", "run"],
    ],
    ids=["ask", "bulk", "worker run"],
)
async def test_no_broker_is_one_line_and_exit_2(tmp_path: Path, command: list[str]) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"query": "q", "memory_id": "m", "limits": {"summaries": 1}}))
    command = [str(source) if a == "IN" else str(tmp_path / "out") if a == "OUT" else a
               for a in command]  # fmt: skip
    url = f"amqp://guest:secret@127.0.0.1:{free_port()}/"
    process = await asyncio.create_subprocess_exec(
        RECALLQ, *command, env=environment(tmp_path, url, 1.0),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=180)
    assert process.returncode == 2, err.decode()[-2000:]
    lines = [line for line in err.decode().splitlines() if not line.startswith("{")]
    assert len(lines) == 1, lines  # JSON lines are the retry log; one line for people
    name = " ".join(command[:2]) if command[0] == "worker" else command[0]
    assert lines[0].startswith(f"recallq {name}: cannot reach the broker at amqp://guest:***@")
    assert "check RECALLQ_AMQP_URL" in lines[0] and "RECALLQ_CONNECT_WAIT_S" in lines[0]
    assert "secret" not in err.decode() + out.decode()
    assert "Traceback" not in err.decode()
    retries = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    assert any(r["event"] == "broker not reachable yet; retrying" for r in retries)


@pytest.fixture
def late_node() -> Iterator[LocalNode]:
    if not can_run_nodes():
        pytest.skip("starting a RabbitMQ node of our own needs its scripts and root")
    with local_nodes(1, first_port=5697, start=False) as nodes:
        yield nodes[0]


async def test_a_worker_started_before_its_broker_waits_and_then_serves(
    tmp_path: Path, late_node: LocalNode
) -> None:
    env = environment(tmp_path, late_node.url, 300.0)
    worker = await asyncio.create_subprocess_exec(
        RECALLQ, "worker", "run", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert worker.stderr is not None
    try:
        deadline = time.monotonic() + 180
        while b"broker not reachable yet" not in await asyncio.wait_for(
            worker.stderr.readline(), timeout=max(1.0, deadline - time.monotonic())
        ):
            assert worker.returncode is None, "the worker gave up before its broker came"
        await asyncio.to_thread(late_node.start)
        settings = BrokerSettings(amqp_url=late_node.url, queue_prefix=env["RECALLQ_QUEUE_PREFIX"])
        async with RetrievalClient(settings, timeout=120) as client:
            reply = await client.retrieve("where do I live?", "m", {"long_term_memory": 1})
        assert reply.status == "ok", reply.error
        assert reply.results == {"long_term_memory": []}  # an empty store, served
    finally:
        if worker.returncode is None:
            worker.send_signal(signal.SIGTERM)
        await asyncio.wait_for(worker.wait(), timeout=120)


async def run_worker(env: dict[str, str]) -> tuple[int | None, str]:
    process = await asyncio.create_subprocess_exec(
        RECALLQ, "worker", "run", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), timeout=180)
    return process.returncode, err.decode()


def the_line(err: str) -> str:
    lines = [line for line in err.splitlines() if not line.startswith("{")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


async def test_an_unreachable_store_is_one_line_naming_its_setting(
    tmp_path: Path, amqp_url: str
) -> None:
    env = {**environment(tmp_path, amqp_url, 1.0),
           "RECALLQ_STORE_URL": f"mongodb://reader:secret@127.0.0.1:{free_port()}/",
           "RECALLQ_MONGO_SERVER_SELECTION_TIMEOUT_MS": "300"}  # fmt: skip
    status, err = await run_worker(env)
    assert status == 2
    line = the_line(err)
    assert line.startswith("recallq worker run: store mongodb://reader:***@127.0.0.1:")
    assert line.endswith("check RECALLQ_STORE_URL") and "secret" not in err
    assert "Topology Description" not in line  # the driver's reason, not its dump
    assert '"event": "store not reachable yet; retrying"' in err


async def test_a_busy_metrics_port_is_one_line_naming_its_setting(
    tmp_path: Path, amqp_url: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**environment(tmp_path, amqp_url, 1.0), "RECALLQ_METRICS_PORT": str(port)}
        status, err = await run_worker(env)
    assert status == 2
    line = the_line(err)
    assert line.startswith(f"recallq worker run: cannot serve metrics on port {port}")
    assert "RECALLQ_METRICS_PORT" in line
