"""`python -m benchmarks scale` runs end to end at small sizes (no broker, no model):
one size served from the cache, one from its vector file and HNSW index. Speed is
recorded, never asserted; what is asserted is that each mode took the path it names
and found what numpy finds."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import scale


def test_the_scale_benchmark_measures_each_size_and_mode(tmp_path: Path) -> None:
    plan = scale.Plan(index_min_rows=20_000, throughput_s=0.2, workdir=tmp_path)
    assert scale.main(sizes=(1000, 25_000), plan=plan, results_dir=tmp_path) == 0

    [written] = tmp_path.glob("*-scale.json")
    results = json.loads(written.read_text())
    assert written.with_suffix(".png").stat().st_size > 0
    assert results["data"]["kind"] == "clustered" and results["data"]["queries"] == 200
    small, large = results["sizes"]
    assert (small["memories"], large["memories"]) == (1000, 25_000)
    assert not small["indexed"] and small["index_bytes"] == 0
    assert large["indexed"] and large["index_bytes"] > 0 and large["build_s"] > 0
    assert {"vectors.npy", "hnsw.usearch"} <= set(large["index_files"])
    for mode in ("exact", "auto"):
        assert set(small["modes"][mode]["paths"]) <= {"load", "cache"}
        for size in (small, large):
            run = size["modes"][mode]
            assert 0 < run["p50_ms"] <= run["p99_ms"] and run["qps_batch32"] > 0
            assert run["max_cosine_error"] < 1e-4
    assert set(large["modes"]["exact"]["paths"]) == {"vector_file"}
    assert set(large["modes"]["auto"]["paths"]) == {"approximate"}
    assert large["modes"]["exact"]["recall_at_10"] == 1.0
    assert large["modes"]["auto"]["recall_at_10"] >= 0.9
    rss = large["worker_rss"]
    assert rss["auto"]["paths"] == {"approximate": 200}
    assert rss["exact"]["paths"] == {"vector_file": 200}
    assert rss["auto"]["after_searches"]["VmRSS"] >= rss["auto"]["after_imports"]["VmRSS"] > 0
