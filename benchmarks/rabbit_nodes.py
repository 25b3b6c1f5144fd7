"""RabbitMQ nodes of our own on other ports, for tests and runs that stop, kill or
cluster a broker; the machine's own node is never touched.

Each node gets its own name, ports, data and log directories under one temporary
directory (owned by the `rabbitmq` OS user, as the packaged scripts run nodes as
that user) and its own config file; `cluster(3)` joins three of them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


class NodeError(RuntimeError):
    """A node did not start, stop or join in time."""


def can_run_nodes() -> bool:
    """Whether this machine can start nodes of its own: the server scripts, and rights
    to hand a directory to the `rabbitmq` OS user."""
    return bool(shutil.which("rabbitmq-server") and shutil.which("rabbitmqctl")) and (
        os.geteuid() == 0
    )


@dataclass
class LocalNode:
    name: str  # Erlang short name; the node is name@localhost
    port: int
    base: Path
    prometheus_port: int = 0  # > 0: the rabbitmq_prometheus plugin, serving on this port

    @property
    def node(self) -> str:
        return f"{self.name}@localhost"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def start(self, timeout: float = 120) -> None:
        """Start the node in the background and wait until it accepts clients."""
        self.base.mkdir(parents=True, exist_ok=True)
        config = self.base / "rabbitmq.conf"
        lines = [f"listeners.tcp.default = 127.0.0.1:{self.port}"]
        plugins = self.base / "enabled_plugins"
        plugins.write_text("[rabbitmq_prometheus].\n" if self.prometheus_port else "[].\n")
        if self.prometheus_port:
            lines += [
                "prometheus.tcp.ip = 127.0.0.1",
                f"prometheus.tcp.port = {self.prometheus_port}",
            ]
        config.write_text("\n".join(lines) + "\n")
        for path in (self.base, config, plugins):
            shutil.chown(path, "rabbitmq", "rabbitmq")
        env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.port + 20_000),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_CONFIG_FILE": str(config),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
        }
        subprocess.run(["rabbitmq-server", "-detached"], env=env, check=True, timeout=60)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.ctl_ok("await_startup", "--timeout", "5") is False:
            if time.monotonic() > deadline:
                raise NodeError(f"{self.node} did not start within {timeout:.0f} s")
            time.sleep(0.5)  # the node registers with epmd a moment after -detached returns

    def ctl(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(
            ["rabbitmqctl", "-n", self.node, *args], capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
        if done.returncode != 0:
            raise NodeError(f"rabbitmqctl -n {self.node} {args[0]}: {done.stderr.strip()[-400:]}")
        return done.stdout

    def ctl_ok(self, *args: str) -> bool:
        try:
            self.ctl(*args, timeout=30)
        except (NodeError, subprocess.TimeoutExpired):
            return False
        return True

    def os_pid(self) -> int:
        return int(self.ctl("eval", "list_to_integer(os:getpid()).").strip())

    def stop(self) -> None:
        """Stop the whole node (the Erlang VM), gracefully."""
        self.ctl("stop")

    def kill(self) -> None:
        """SIGKILL the node's VM: a crash, no goodbye to the cluster."""
        pid = self.os_pid()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists():
            if time.monotonic() > deadline:
                raise NodeError(f"{self.node} (pid {pid}) survived SIGKILL")
            time.sleep(0.05)

    def join(self, seed: LocalNode) -> None:
        self.ctl("stop_app")
        self.ctl("join_cluster", seed.node)
        self.ctl("start_app")


@contextmanager
def local_nodes(
    count: int, first_port: int = 5681, *, start: bool = True, prometheus: bool = False
) -> Iterator[list[LocalNode]]:
    """`count` nodes, clustered when more than one (`start=False`: set up, left for the
    caller to start; `prometheus`: the plugin on port + 10,000); stopped and deleted
    afterwards."""
    base = Path(tempfile.mkdtemp(prefix="recallq-rabbit-"))
    shutil.chown(base, "rabbitmq", "rabbitmq")
    tag = uuid.uuid4().hex[:6]
    nodes = [
        LocalNode(f"recallq-{tag}-{i}", first_port + i, base / str(i),
                  first_port + i + 10_000 if prometheus else 0)
        for i in range(count)
    ]  # fmt: skip
    try:
        for node in nodes if start else ():
            node.start()
        for node in nodes[1:] if start else ():
            node.join(nodes[0])
        yield nodes
    finally:
        for node in nodes:
            node.ctl_ok("stop")
        shutil.rmtree(base, ignore_errors=True)
