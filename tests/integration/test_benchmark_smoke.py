"""`python -m benchmarks run --quick` runs end to end. Speed is recorded, never asserted."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from tests.conftest import ROOT


async def test_the_quick_benchmark_run_measures_every_system(amqp_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "RECALLQ_AMQP_URL": amqp_url}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks", "run", "--quick", "--results", str(tmp_path),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), timeout=600)
    assert process.returncode == 0, output.decode()[-3000:]
    results = read_the_one_result(tmp_path)
    [run] = results["workloads"]
    systems = run["systems"]
    assert set(systems) == {"embed_ceiling", "naive", "celery", "recallq"}
    assert systems["embed_ceiling"]["backend"].startswith("onnx/cpu/fp32")
    for name in ("naive", "celery", "recallq"):
        assert systems[name]["saturated_rps"] > 0
        assert systems[name]["idle_ms"]["count"] == 10
        assert systems[name]["peak_rss_mb"] > 0
        assert systems[name]["curve"][0]["offered_rps"] == 25
        assert systems[name]["curve"][0]["count"] == 50  # 25 req/s for 2 s, all answered
    assert set(run["ratios"]) >= {"recallq_vs_naive_slo_capacity", "recallq_vs_embed_ceiling"}
    assert 0.8 <= results["int8"]["recall_at_5"] <= 1.0
    assert len(pictures(tmp_path)) == 1
    assert "| recallq |" in output.decode()


def read_the_one_result(directory: Path) -> dict[str, Any]:
    [result_file] = directory.glob("*-quick.json")
    results: dict[str, Any] = json.loads(result_file.read_text())
    return results


def pictures(directory: Path) -> list[Path]:
    return list(directory.glob("*-quick.*.png"))
