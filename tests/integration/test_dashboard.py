"""The Grafana dashboard asks only for metrics that exist: every metric its queries
name is exported by a live worker's /metrics or by RabbitMQ's own Prometheus plugin
(scraped from a node of the test's own with the plugin on), or is Prometheus's `up`.
And Prometheus scrapes the plugin where the dashboard expects it."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections.abc import Iterator

import pytest
import yaml

from benchmarks.rabbit_nodes import LocalNode, can_run_nodes, local_nodes
from producer.client import RetrievalClient
from tests.conftest import ROOT
from tests.integration.conftest import running_worker
from worker.embedding.embedder import Embedder
from worker.settings import WorkerSettings
from worker.store import SQLiteStore

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "recallq.json"
PROMQL_WORDS = {
    "sum", "avg", "min", "max", "count", "rate", "irate", "increase", "histogram_quantile",
    "by", "without", "on", "ignoring", "and", "or", "unless", "bool", "offset",
}  # fmt: skip
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total", "", "_created"),
            "summary": ("_sum", "_count", ""), "gauge": ("",), "untyped": ("",)}  # fmt: skip


def queried_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression: label matchers, grouping clauses, ranges,
    strings, numbers and the language's own words left out."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {name for name in names if name not in PROMQL_WORDS}


def exported(text: str) -> set[str]:
    """Every sample name a /metrics page can carry, from its `# TYPE` lines."""
    names = set()
    for family, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        names.update(family + suffix for suffix in SUFFIXES[kind])
    return names


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


@pytest.fixture(scope="module")
def plugin_node() -> Iterator[LocalNode]:
    if not can_run_nodes():
        pytest.skip("starting a RabbitMQ node of our own needs its scripts and root")
    with local_nodes(1, first_port=5699, prometheus=True) as nodes:
        yield nodes[0]


def test_the_query_parser_finds_names_and_only_names() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, lane) (rate(recallq_request_seconds_bucket'
            '{queue=~"$p\\\\.(a|b)"}[5m]))) / count(up{job="w"} == 1)')  # fmt: skip
    assert queried_metrics(expr) == {"recallq_request_seconds_bucket", "up"}


async def test_every_metric_the_dashboard_queries_is_exported(
    settings: WorkerSettings, embedder: Embedder, demo_store: SQLiteStore, plugin_node: LocalNode
) -> None:
    async with (
        running_worker(settings, embedder, demo_store) as worker,
        RetrievalClient(settings, timeout=30) as client,
    ):
        assert worker.health is not None
        reply = await client.retrieve("knee pain", "health-coach:sam", {"long_term_memory": 1})
        assert reply.status == "ok"
        page = await asyncio.to_thread(fetch, f"http://127.0.0.1:{worker.health.port}/metrics")
    plugin = await asyncio.to_thread(
        fetch, f"http://127.0.0.1:{plugin_node.prometheus_port}/metrics/detailed"
        "?family=queue_coarse_metrics&family=queue_consumer_count",
    )  # fmt: skip
    worker_names, plugin_names = exported(page), exported(plugin)
    assert "recallq_request_seconds_bucket" in worker_names  # the parsers see real pages
    assert "rabbitmq_detailed_queue_messages_ready" in plugin_names
    queries = dashboard_queries()
    wanted = set().union(*map(queried_metrics, queries))
    unknown = wanted - worker_names - plugin_names - {"up"}
    assert not unknown, f"the dashboard queries metrics nobody exports: {sorted(unknown)}"
    assert {n for n in wanted if n.startswith("rabbitmq_")}, "no queue depths on the dashboard"


def test_prometheus_scrapes_the_plugin_families_the_dashboard_reads() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    rabbit = jobs["rabbitmq"]
    assert rabbit["metrics_path"] == "/metrics/detailed"
    assert set(rabbit["params"]["family"]) == {"queue_coarse_metrics", "queue_consumer_count"}
    assert all(
        'job="recallq-worker"' not in q or "recallq-worker" in jobs for q in dashboard_queries()
    )
