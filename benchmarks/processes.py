"""Workers as real processes, for tests and the chaos run that kill, stop or restart them."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from producer.workers import count_workers, wait_for_workers
from worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[1]


class WorkerProcess:
    def __init__(
        self, settings: WorkerSettings, db: Path, log: Path, metrics_port: int = 0
    ) -> None:
        self.settings = settings
        self.db = db
        self.log = log
        self.metrics_port = metrics_port  # 0: any free port (several workers on one host)
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        consumers_before = await count_workers(self.settings)
        env = {
            **os.environ,
            "RECALLQ_AMQP_URL": self.settings.amqp_url,
            "RECALLQ_QUEUE_PREFIX": self.settings.queue_prefix,
            "RECALLQ_MAX_QUEUED": str(self.settings.max_queued),
            "RECALLQ_STORE_URL": f"sqlite:///{self.db}",
            "RECALLQ_LOG_FORMAT": "json",
            "RECALLQ_METRICS_PORT": str(self.metrics_port),
        }
        with self.log.open("a") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "worker", "run", env=env, cwd=ROOT, stderr=log
            )
        assert self.process is not None
        process = self.process
        await wait_for_workers(
            self.settings,
            consumers_before + 1,
            timeout=120,
            alive=lambda: process.returncode is None,
        )

    async def signal(self, sig: signal.Signals) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return await asyncio.wait_for(self.process.wait(), timeout=90)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            await self.signal(signal.SIGTERM)

    def log_lines(self, event: str) -> int:
        return sum(f'"event": "{event}"' in line for line in self.log.read_text().splitlines())
