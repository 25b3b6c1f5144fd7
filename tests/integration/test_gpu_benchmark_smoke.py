"""`python -m benchmarks gpu` runs end to end on CPU (no broker, the real model, a few
seconds a size). Speed is recorded, never asserted."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from benchmarks import gpu
from benchmarks.__main__ import batch_sizes


def test_the_gpu_benchmark_measures_each_batch_size_on_cpu(tmp_path: Path) -> None:
    code = gpu.main(device="cpu", sizes=(4, 1), seconds=0.3, results_dir=tmp_path, quick=True)

    assert code == 0
    [written] = tmp_path.glob("*-gpu-cpu-quick.json")
    results = json.loads(written.read_text())
    assert {"benchmark", "date", "plan", "model", "model_load_s", "seed", "sizes", "environment",
            "wall_s"} <= set(results)  # fmt: skip
    assert results["wall_s"] > 0
    assert results["seed"]["memories"] == 4 * 60 and results["seed"]["embed_texts_per_s"] > 0
    environment = results["environment"]
    assert environment["device"] == "cpu" and environment["dtype"] == "float32"
    assert environment["backend"] == "torch/cpu" and environment["torch"]
    assert [size["batch"] for size in results["sizes"]] == [1, 4]
    for size in results["sizes"]:
        embed, processed = size["embed"], size["process"]
        assert embed["calls"] >= 1 and embed["texts_per_s"] > 0
        assert processed["batches"] >= 1 and processed["requests_per_s"] > 0
        assert 0 < processed["p50_ms"] <= processed["p99_ms"]
        assert processed["hits_per_request"] == 15  # 3 memory types x 5 hits, all found


def test_a_missing_model_directory_is_named_and_nothing_runs(tmp_path: Path) -> None:
    assert gpu.main(device="cpu", model=tmp_path / "absent", results_dir=tmp_path) == 2
    assert not list(tmp_path.glob("*.json"))


def test_batch_sizes_are_positive_integers() -> None:
    assert batch_sizes("1,2,4,256") == (1, 2, 4, 256)
    for bad in ("", "0,1", "a,2", "-4"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"integers"):
            batch_sizes(bad)
