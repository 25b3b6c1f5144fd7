"""A worker started on a file that is not a SQLite database says so in one line."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.conftest import ROOT


async def test_a_worker_started_on_a_corrupt_file_exits_with_one_clear_line(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(os.urandom(100_000))
    env = {**os.environ, "RECALLQ_STORE_URL": f"sqlite:///{bad}", "RECALLQ_METRICS_PORT": "-1"}
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "run", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(worker.communicate(), timeout=120)
    assert worker.returncode == 2
    text = (out + err).decode()
    assert f"worker run: store sqlite:///{bad}: sqlite {bad}: file is not a database; " in text
    assert "check RECALLQ_STORE_URL" in text
    assert "Traceback" not in text
