"""The store's search paths and group cache as the registry exposes them: what an alert
on a group that does not fit its cache, or a slow path, reads."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from schemas.messages import MemoryType
from worker.embedding.base import CacheStats
from worker.metrics import Metrics
from worker.service import Worker
from worker.settings import WorkerSettings
from worker.store.base import SLOW_PATHS, Memory, SearchGroup, SearchPaths
from worker.store.group_cache import GroupCacheStats
from worker.store.sqlite import SQLiteStore
from worker.vectors import Vectors

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy/grafana/dashboards/recallq.json"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(metrics: Metrics) -> tuple[dict[str, str], Samples]:
    """The registry's text output, parsed back: family types, and every sample's value
    keyed by (sample name, sorted labels)."""
    text = generate_latest(metrics.registry).decode()
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return types, samples


def by_path(samples: Samples) -> dict[str, float]:
    return {
        dict(labels)["path"]: value
        for (name, labels), value in samples.items()
        if name == "recallq_store_searches_total"
    }


def test_each_path_seen_is_one_sample_and_the_slow_sum_counts_only_slow_paths() -> None:
    paths: SearchPaths = Counter(cache=7, load=3, oversize=2, approximate=5, unindexed=1)
    metrics = Metrics()
    metrics.watch_store_searches(lambda: paths)
    types, samples = scrape(metrics)
    assert types["recallq_store_searches"] == "counter"
    assert types["recallq_store_slow_searches"] == "counter"
    assert by_path(samples) == {"cache": 7, "load": 3, "oversize": 2, "approximate": 5,
                                "unindexed": 1}  # fmt: skip
    assert samples[("recallq_store_slow_searches_total", ())] == 3  # oversize + unindexed


def test_the_counter_is_read_live_at_each_scrape() -> None:
    paths: SearchPaths = Counter(exact=4)
    metrics = Metrics()
    metrics.watch_store_searches(lambda: paths)
    assert by_path(scrape(metrics)[1]) == {"exact": 4}
    paths["too_large"] += 2  # MongoDB refused a group twice since
    paths["exact"] += 1
    _, samples = scrape(metrics)
    assert by_path(samples) == {"exact": 5, "too_large": 2}
    assert samples[("recallq_store_slow_searches_total", ())] == 2


def test_every_slow_path_and_nothing_else_is_slow() -> None:
    fast = ("cache", "load", "vector_file", "approximate", "exact", "vector", "hybrid")
    assert not SLOW_PATHS & set(fast)
    paths: SearchPaths = Counter({path: 1 for path in fast})
    paths.update({path: 10 for path in SLOW_PATHS})
    metrics = Metrics()
    metrics.watch_store_searches(lambda: paths)
    _, samples = scrape(metrics)
    assert samples[("recallq_store_slow_searches_total", ())] == 10 * len(SLOW_PATHS)
    assert sum(by_path(samples).values()) == len(fast) + 10 * len(SLOW_PATHS)


def test_before_any_search_the_families_exist_and_slow_is_zero() -> None:
    """So a dashboard query names a metric that exists, and rate() sees the first one."""
    metrics = Metrics()
    metrics.watch_store_searches(Counter)
    types, samples = scrape(metrics)
    assert "recallq_store_searches" in types and by_path(samples) == {}
    assert samples[("recallq_store_slow_searches_total", ())] == 0


def test_the_cache_oversize_count_is_exposed() -> None:
    metrics = Metrics()
    metrics.watch_store_cache(lambda: GroupCacheStats(lookups=4, hits=1, oversize=3))
    types, samples = scrape(metrics)
    assert types["recallq_store_cache_oversize"] == "counter"
    assert samples[("recallq_store_cache_oversize_total", ())] == 3


class FakeEmbedder:
    description = "fake"
    dimensions = 8
    max_inputs: int | None = None
    max_call_tokens: int | None = None
    lanes = 1
    usable = True

    def __init__(self) -> None:
        self.cache_stats = CacheStats()

    def count_tokens(self, text: str) -> int:
        return len(text)

    async def embed(self, texts: Sequence[str], deadline: float | None = None) -> Vectors:
        raise NotImplementedError

    def close(self) -> None:
        return


class OldStore:
    """A store from before search paths: no `search_paths` at all."""

    def __init__(self) -> None:
        self.on_skipped: Any = None

    def cache_stats(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"mode": "exact"}


class CountingStore(OldStore):
    def __init__(self) -> None:
        super().__init__()
        self.paths: SearchPaths = Counter(exact=2, too_large=1)

    def search_paths(self) -> SearchPaths:
        return self.paths


def test_a_worker_exposes_its_stores_paths_and_nothing_for_a_store_without_them() -> None:
    counting = Worker.from_settings(WorkerSettings(), FakeEmbedder(), CountingStore())  # type: ignore[arg-type]
    _, samples = scrape(counting.metrics)
    assert by_path(samples) == {"exact": 2, "too_large": 1}
    assert samples[("recallq_store_slow_searches_total", ())] == 1
    old = Worker.from_settings(WorkerSettings(), FakeEmbedder(), OldStore())  # type: ignore[arg-type]
    types, _ = scrape(old.metrics)
    assert "recallq_store_searches" not in types
    assert "recallq_store_slow_searches" not in types
    assert "recallq_requests" in types  # the rest is there


async def test_a_group_larger_than_the_cache_shows_as_oversize_and_slow(tmp_path: Path) -> None:
    """The embedded store end to end: its counters, read through the metrics."""
    unit = np.random.default_rng(3).standard_normal((21, 8)).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    rows = [Memory(f"m{i}", "big", MemoryType.LONG_TERM, f"memory {i}", 1.7e9 + i)
            for i in range(20)]  # fmt: skip
    store = SQLiteStore(tmp_path / "tiny.db", writable=True, cache_bytes=100)
    metrics = Metrics()
    metrics.watch_store_cache(store.cache_stats)
    metrics.watch_store_searches(store.search_paths)
    try:
        await store.upsert(rows, unit[:20])
        group = SearchGroup(MemoryType.LONG_TERM, "big", unit[20:], (4,))
        for _ in range(2):
            [[hits]] = await store.search([group])
            assert len(hits) == 4
    finally:
        await store.close()
    _, samples = scrape(metrics)
    assert by_path(samples) == {"oversize": 2}
    assert samples[("recallq_store_slow_searches_total", ())] == 2
    assert samples[("recallq_store_cache_oversize_total", ())] == 2
    assert samples[("recallq_store_cache_groups", ())] == 0


def test_the_dashboard_marks_exactly_the_slow_paths() -> None:
    """Its colours name paths by hand: a path made slow in the store, and not here, would
    be drawn as a fast one."""
    panels = {p["title"]: p for p in json.loads(DASHBOARD.read_text())["panels"]}
    overrides = panels["Store search paths"]["fieldConfig"]["overrides"]
    assert {o["matcher"]["options"] for o in overrides} == SLOW_PATHS
    [slow] = panels["Slow store searches / s"]["targets"]
    assert "recallq_store_slow_searches_total" in slow["expr"]
