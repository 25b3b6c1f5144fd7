"""`python -m benchmarks remote-embed` runs end to end on tiny loads: every request is
accounted for, and past the provider's rate limit recallq makes fewer calls per
request than one call per query. Speed is recorded, never asserted."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.remote_embed import Provider, benchmark

LOADS = (10, 100)  # below the limit (50 calls/s), and twice it: where batching shows
SECONDS = 2.0
RUN_KEYS = {
    "offered_rps", "sent", "sent_rps", "ok", "errors", "achieved_ok_rps", "seconds",
    "latency_ms", "calls", "calls_per_request", "inputs_per_call", "tokens_per_request",
    "http_429", "statuses",
}  # fmt: skip


async def test_the_remote_embed_benchmark_counts_every_request(
    amqp_url: str, tmp_path: Path
) -> None:
    path = await benchmark(
        LOADS, SECONDS, tmp_path, provider=Provider(warmup_s=0.5), amqp_url=amqp_url
    )
    results = json.loads(path.read_text())
    assert results["provider"]["latency_ms_per_call"] == 80
    assert results["provider"]["calls_per_minute"] == 3000
    assert results["loads"] == list(LOADS)
    assert set(results["runs"]) == {"before", "recallq"}
    for system, runs in results["runs"].items():
        assert set(runs) == {str(rate) for rate in LOADS}, system
        for rate in LOADS:
            run = runs[str(rate)]
            assert set(run) >= RUN_KEYS, (system, rate)
            assert run["sent"] == int(rate * SECONDS), (system, rate)
            assert run["ok"] + sum(run["errors"].values()) == run["sent"], (system, run)
            assert run["ok"] == run["latency_ms"].get("count", 0)
    before, recallq = results["runs"]["before"]["100"], results["runs"]["recallq"]["100"]
    assert before["calls_per_request"] >= 1.0
    assert before["inputs_per_call"] == 1.0
    assert recallq["calls_per_request"] < before["calls_per_request"]
    assert results["runs"]["recallq"]["100"]["query_cache_hits"] == 0
    assert path.with_suffix(".png").is_file()
