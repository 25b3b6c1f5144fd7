"""Failures that say what to do: with no broker, `recallq ask`, `recallq bulk` and
`recallq worker run` each end with one line on stderr and exit 2, no traceback; a
worker started before its broker waits for it (logging each retry), then serves. A
malformed RECALLQ_AMQP_URL or a broker host that does not exist fails at once (no
wait), a broker port that never answers within the wait's deadline, and a store
path that cannot be made names RECALLQ_STORE_URL, never the broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.rabbit_nodes import LocalNode, can_run_nodes, local_nodes
from producer.client import RetrievalClient
from schemas.settings import BrokerSettings
from tests.conftest import DEMO_MEMORIES

RECALLQ = str(Path(sys.executable).parent / "recallq")


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An embedded store holding one memory: `worker run` serves no missing store, so
    its broker failures come only after a store that opens."""
    folder = tmp_path_factory.mktemp("store")
    source = folder / "one.jsonl"
    source.write_text(DEMO_MEMORIES.read_text().splitlines()[0] + "\n")
    url = f"sqlite:///{folder / 'memories.db'}"
    subprocess.run([RECALLQ, "worker", "ingest", str(source)],
                   env={**os.environ, "RECALLQ_STORE_URL": url}, check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    return url


WAITS = ("RECALLQ_CONNECT_WAIT_S", "RECALLQ_CLIENT_CONNECT_WAIT_S")  # worker, ask and bulk


def environment(store_url: str, amqp_url: str, wait_s: float | None = None) -> dict[str, str]:
    """The environment of a recallq command; the broker waits their defaults (a worker's
    60 s, ask's and bulk's 3 s) where `wait_s` is None."""
    env = {**os.environ, "RECALLQ_AMQP_URL": amqp_url, "RECALLQ_STORE_URL": store_url,
           "RECALLQ_METRICS_PORT": "-1", "RECALLQ_LOG_FORMAT": "json",
           "RECALLQ_QUEUE_PREFIX": f"recallq-cli-{uuid.uuid4().hex[:8]}"}  # fmt: skip
    for name in WAITS:
        env.pop(name, None)
    return env if wait_s is None else {**env, **dict.fromkeys(WAITS, str(wait_s))}


def wait_setting(command: list[str]) -> str:
    """The setting a command's broker wait names."""
    return WAITS[0] if command[0] == "worker" else WAITS[1]


async def run_recallq(
    args: list[str], env: dict[str, str], timeout: float
) -> tuple[int | None, str, float]:
    """Exit status, stdout and stderr together, and seconds taken; a failure if it
    runs past `timeout` (it is killed)."""
    status, out, err, seconds = await run_apart(args, env, timeout)
    return status, err + out, seconds


async def run_apart(
    args: list[str], env: dict[str, str], timeout: float, stderr: int = asyncio.subprocess.PIPE
) -> tuple[int | None, str, str, float]:
    """Exit status, stdout, stderr (unless `stderr` sends it elsewhere) and seconds
    taken; a failure if it runs past `timeout` (it is killed)."""
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        RECALLQ, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=stderr
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"recallq {' '.join(args)} still running after {timeout} s")
    seconds = time.monotonic() - started
    return process.returncode, out.decode(), (err or b"").decode(), seconds


COMMANDS = [
    ["ask", "where do I live?", "--memory-id", "m"],
    ["bulk", "IN", "--output", "OUT"],
    ["worker", "run"],
]
COMMAND_IDS = ["ask", "bulk", "worker run"]


def with_files(command: list[str], tmp_path: Path) -> list[str]:
    """`command` with IN and OUT replaced by a bulk job's input (one request) and output."""
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"query": "q", "memory_id": "m", "limits": {"summaries": 1}}))
    return [str(source) if a == "IN" else str(tmp_path / "out") if a == "OUT" else a
            for a in command]  # fmt: skip


def named(command: list[str]) -> str:
    return "recallq " + (" ".join(command[:2]) if command[0] == "worker" else command[0])


@pytest.mark.parametrize("command", COMMANDS, ids=COMMAND_IDS)
async def test_no_broker_is_one_line_and_exit_2(
    tmp_path: Path, store_url: str, command: list[str]
) -> None:
    command = with_files(command, tmp_path)
    url = f"amqp://guest:secret@127.0.0.1:{free_port()}/"
    status, output, _ = await run_recallq(command, environment(store_url, url, 1.0), 180)
    assert status == 2, output[-2000:]
    line = the_line(output)  # JSON lines are the retry log; one line for people
    assert line.startswith(f"{named(command)}: cannot reach the broker at amqp://guest:***@")
    assert "check RECALLQ_AMQP_URL" in line and f"waited 1 s: {wait_setting(command)})" in line
    assert "secret" not in output
    retries = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert any(r["event"] == "broker not reachable yet; retrying" for r in retries)


async def test_ask_without_a_broker_gives_up_within_seconds_in_few_lines() -> None:
    """A person waits for `recallq ask`: with no broker it waits its short default
    (RECALLQ_CLIENT_CONNECT_WAIT_S, 3 s), logs the first retry only, and ends in one
    line. Every line on stderr counts, the JSON log lines too."""
    url = f"amqp://guest:secret@127.0.0.1:{free_port()}/"
    env = environment("sqlite:///unused.db", url)  # defaults: no wait set
    status, _, err, seconds = await run_apart(COMMANDS[0], env, 60)
    assert status == 2 and seconds < 10, (seconds, err)
    lines = err.splitlines()
    assert len(lines) <= 3 and "Traceback" not in err, err
    assert lines[-1].startswith("recallq ask: cannot reach the broker at amqp://guest:***@")
    assert lines[-1].endswith("(waited 3 s: RECALLQ_CLIENT_CONNECT_WAIT_S)"), lines[-1]


async def test_on_a_terminal_the_retry_line_is_for_people() -> None:
    """RECALLQ_LOG_FORMAT auto: log lines are JSON for a pipe, readable on a terminal."""
    url = f"amqp://guest:secret@127.0.0.1:{free_port()}/"
    env = environment("sqlite:///unused.db", url, 0.5)
    del env["RECALLQ_LOG_FORMAT"]
    terminal, stderr = os.openpty()
    try:
        status, _, _, _ = await run_apart(COMMANDS[0], env, 60, stderr=stderr)
    finally:
        os.close(stderr)
    lines = read_terminal(terminal).splitlines()
    assert status == 2 and any("broker not reachable yet; retrying" in x for x in lines), lines
    assert not any(line.lstrip().startswith("{") for line in lines), lines
    assert lines[-1].startswith("recallq ask: cannot reach the broker"), lines


def read_terminal(terminal: int) -> str:
    """What was written to a pseudo-terminal whose other end is closed (then EIO)."""
    chunks = []
    with contextlib.suppress(OSError):
        while chunk := os.read(terminal, 4096):
            chunks.append(chunk)
    os.close(terminal)
    return b"".join(chunks).decode(errors="replace")


def names_do_not_exist_here() -> bool:
    """Whether this machine's resolver says at once that a name does not exist (without
    a DNS server it says "try again", which is rightly waited for)."""
    try:
        socket.getaddrinfo("nonexistent-host.invalid", 5672)
    except socket.gaierror as exc:
        return exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME))
    return False


BAD_URLS = {
    "not a URL": ("notaurl", "invalid setting RECALLQ_AMQP_URL: not an AMQP URL"),
    "a port that is no number": (
        "amqp://guest:secret@127.0.0.1:notaport/",
        "invalid setting RECALLQ_AMQP_URL: the port of host '127.0.0.1' is not a number",
    ),
    "a host that does not exist": (
        "amqp://guest:secret@nonexistent-host.invalid:5672/",
        "cannot resolve the broker host 'nonexistent-host.invalid' of amqp://guest:***@",
    ),
}


@pytest.mark.parametrize("bad", BAD_URLS, ids=list(BAD_URLS))
@pytest.mark.parametrize("command", COMMANDS, ids=COMMAND_IDS)
async def test_a_bad_broker_url_is_one_line_at_once(
    tmp_path: Path, store_url: str, command: list[str], bad: str
) -> None:
    """Not retried for RECALLQ_CONNECT_WAIT_S (its default, 60 s): a malformed URL or a
    name that does not exist will not mend."""
    url, says = BAD_URLS[bad]
    if "nonexistent" in url and not names_do_not_exist_here():
        pytest.skip("this machine's resolver cannot say that a name does not exist")
    command = with_files(command, tmp_path)
    status, output, seconds = await run_recallq(command, environment(store_url, url), 10)
    assert status == 2 and seconds < 10, output[-2000:]
    line = the_line(output)
    assert line.startswith(f"{named(command)}: {says}"), line
    assert "RECALLQ_AMQP_URL" in line and "secret" not in output
    assert "not reachable yet" not in output  # no retry


async def test_a_broker_port_that_never_answers_is_given_up_on(
    tmp_path: Path, store_url: str
) -> None:
    """A connect that hangs (a port that accepts and never speaks AMQP) ends at the
    wait's deadline: RECALLQ_CONNECT_WAIT_S plus a margin for one attempt (5 s)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"amqp://guest:secret@127.0.0.1:{silent.getsockname()[1]}/"
        command = with_files(["bulk", "IN", "--output", "OUT"], tmp_path)
        status, output, seconds = await run_recallq(command, environment(store_url, url, 1), 30)
    assert status == 2 and seconds < 15, output[-2000:]
    line = the_line(output)
    assert line.startswith("recallq bulk: the broker at amqp://guest:***@127.0.0.1:")
    assert "did not answer within 6 s" in line and "RECALLQ_CLIENT_CONNECT_WAIT_S" in line
    assert "secret" not in output


async def test_a_store_path_under_a_file_names_the_store_not_the_broker(
    tmp_path: Path,
) -> None:
    (tmp_path / "a-file").write_text("not a directory\n")
    store = f"sqlite:///{tmp_path / 'a-file' / 'store.db'}"
    source = tmp_path / "one.jsonl"
    source.write_text(DEMO_MEMORIES.read_text().splitlines()[0] + "\n")
    broker = f"amqp://guest:secret@127.0.0.1:{free_port()}/"
    status, output, _ = await run_recallq(
        ["worker", "ingest", str(source)], environment(store, broker, 1.0), 180
    )
    assert status == 2, output[-2000:]
    progress = re.compile(r"^(ingest:.*|\s*)$")  # tqdm's bar, redrawn after '\r'
    line = the_line("\n".join(x for x in output.splitlines() if not progress.match(x)))
    assert line.startswith(f"recallq worker ingest: store {store}: "), line
    assert str(tmp_path / "a-file") in line and line.endswith("check RECALLQ_STORE_URL")
    assert "broker" not in line and "RECALLQ_AMQP_URL" not in line


@pytest.fixture
def late_node() -> Iterator[LocalNode]:
    if not can_run_nodes():
        pytest.skip("starting a RabbitMQ node of our own needs its scripts and root")
    with local_nodes(1, first_port=5697, start=False) as nodes:
        yield nodes[0]


async def test_a_worker_started_before_its_broker_waits_and_then_serves(
    store_url: str, late_node: LocalNode
) -> None:
    env = environment(store_url, late_node.url, 300.0)
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
    status, output, _ = await run_recallq(["worker", "run"], env, 180)
    return status, output


def the_line(err: str) -> str:
    lines = [line for line in err.splitlines() if not line.startswith("{")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


async def test_an_unreachable_store_is_one_line_naming_its_setting(
    store_url: str, amqp_url: str
) -> None:
    env = {**environment(store_url, amqp_url, 1.0),
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
    store_url: str, amqp_url: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**environment(store_url, amqp_url, 1.0), "RECALLQ_METRICS_PORT": str(port)}
        status, err = await run_worker(env)
    assert status == 2
    line = the_line(err)
    assert line.startswith(f"recallq worker run: cannot serve metrics on port {port}")
    assert "RECALLQ_METRICS_PORT" in line
