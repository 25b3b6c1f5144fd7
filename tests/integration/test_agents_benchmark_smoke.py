"""`python -m benchmarks agents` runs end to end at its smallest: every turn and every
three-type query is accounted for, recallq answers each retrieval (no fallback), and
needs no more round trips than memorizz's own searches. Speed is recorded, never
asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("memorizz")
from benchmarks.agents import THREE_TYPES, Scale, benchmark

SCALE = Scale(
    agents=2, history=6, knowledge=4, entities=1, ns=(1, 2), turns=1, shape_calls=1, samples=2
)
RUN_KEYS = {
    "agents", "turns", "ok", "seconds", "turns_per_s", "context_ms", "context_mean_ms",
    "turn_ms", "retrievals_per_turn", "retrievals_by_store_per_turn", "searches_per_turn",
    "requests_per_turn", "round_trips_per_turn", "local_embeddings_per_turn", "rows_per_turn",
    "ms_per_turn", "after_the_model",
}  # fmt: skip


def test_the_agents_benchmark_accounts_for_every_turn(amqp_url: str, tmp_path: Path) -> None:
    path = benchmark(SCALE, tmp_path, amqp_url=amqp_url, name="agents-smoke")
    results = json.loads(path.read_text())
    assert "SecantusDB" in results["database"] and "not Atlas" in results["database"]
    assert results["scale"]["ns"] == [1, 2] and results["seeding"]["rows"]["toolbox"] == 4
    for part, per_caller in (("runs", SCALE.turns), ("three_types", SCALE.shape_calls)):
        assert set(results[part]) == {"memorizz", "recallq"}
        for system, by_n in results[part].items():
            assert set(by_n) == {"1", "2"}, (part, system)
            for n, run in by_n.items():
                assert set(run) >= RUN_KEYS, (part, system, n)
                expected = int(n) * SCALE.each(per_caller, int(n))
                assert run["turns"] == run["ok"] == expected, (part, system, run)
                assert run["context_ms"]["count"] == expected
                assert_recallq_answered(system, run)
    for n in ("1", "2"):
        own, wrapped = results["runs"]["memorizz"][n], results["runs"]["recallq"][n]
        assert own["retrievals_per_turn"] == wrapped["retrievals_per_turn"] >= len(THREE_TYPES)
        assert 0 < wrapped["round_trips_per_turn"] <= own["searches_per_turn"]
        own, wrapped = results["three_types"]["memorizz"][n], results["three_types"]["recallq"][n]
        assert own["searches_per_turn"] == len(THREE_TYPES) and own["requests_per_turn"] == 0
        assert wrapped["round_trips_per_turn"] == wrapped["requests_per_turn"] == 1
        assert wrapped["rows_per_turn"] == own["rows_per_turn"] > 0  # the same rows found


def assert_recallq_answered(system: str, run: dict[str, object]) -> None:
    """The wrapper served every retrieval through the worker: none fell back, none went
    to the wrapped provider, and the worker answered each request it sent."""
    if system == "memorizz":
        assert run["requests_per_turn"] == 0 and "worker" not in run
        return
    stats, worker = run["recallq_stats"], run["worker"]
    assert isinstance(stats, dict) and isinstance(worker, dict)
    assert stats["fallbacks"] == stats["refused"] == stats["passed_through"] == 0, stats
    assert run["searches_per_turn"] == 0
    assert worker["requests"] == stats["requests"] > 0
    assert worker["batches"] >= 1 and 1 <= worker["mean_batch"] <= worker["max_batch"]
