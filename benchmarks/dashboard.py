"""The Grafana dashboard's queries on a live two-worker fleet, drawn as a picture.

No Grafana here, so this runs what Grafana would ask: a RabbitMQ node of our own
with its Prometheus plugin, two `recallq worker run` processes, a real Prometheus
(Debian's package) scraping them as deploy/prometheus.yml does, and a load in
phases (steady RPC at fixed offered rates, then a bulk job beside it). Each panel's
PromQL from deploy/grafana/dashboards/recallq.json is then asked of Prometheus's HTTP
API over the run and drawn in the dashboard's grid: the README's picture, and proof
that every query parses and returns data.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks.common import ROOT, ingest_demo
from benchmarks.load import open_loop
from benchmarks.processes import WorkerProcess
from benchmarks.rabbit_nodes import local_nodes
from producer.bulk import BulkJob
from producer.client import RetrievalClient
from worker.settings import WorkerSettings

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "recallq.json"
PICTURE = ROOT / "deploy" / "grafana" / "dashboard.png"
PROMETHEUS_PORT = 9399
METRICS_PORTS = (9471, 9472)
PHASES = ((10.0, 40.0), (60.0, 40.0), (60.0, 50.0))  # (req/s, seconds); bulk in the last


def prometheus_config(plugin_port: int) -> str:
    """deploy/prometheus.yml's jobs, with static targets instead of Docker's DNS."""
    workers = ", ".join(f'"127.0.0.1:{port}"' for port in METRICS_PORTS)
    return f"""global:
  scrape_interval: 2s
scrape_configs:
  - job_name: recallq-worker
    static_configs: [{{targets: [{workers}]}}]
  - job_name: rabbitmq
    metrics_path: /metrics/detailed
    params: {{family: [queue_coarse_metrics, queue_consumer_count]}}
    static_configs: [{{targets: ["127.0.0.1:{plugin_port}"]}}]
"""


def query_range(expr: str, start: float, end: float) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode(
        {"query": expr.replace("$prefix", "recallq"), "start": start, "end": end, "step": 4}
    )
    url = f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/query_range?{params}"
    with urllib.request.urlopen(url, timeout=30) as response:
        body = json.loads(response.read())
    if body["status"] != "success":
        raise RuntimeError(f"{expr}: {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{(\w+)\}\}", lambda m: labels.get(m.group(1), ""), template) or "value"


def draw(start: float, end: float) -> dict[str, int]:
    """The dashboard's panels in its grid; returns the series each panel got."""
    panels = [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]
    rows = sorted({p["gridPos"]["y"] for p in panels})
    figure = plt.figure(figsize=(24, 4.2 * len(rows)))
    grid = figure.add_gridspec(len(rows), 24, hspace=0.45, wspace=4, top=0.95)
    series: dict[str, int] = {}
    for panel in panels:
        pos = panel["gridPos"]
        axes = figure.add_subplot(grid[rows.index(pos["y"]), pos["x"] : pos["x"] + pos["w"]])
        axes.set_title(panel["title"], fontsize=11, loc="left")
        count = 0
        for target in panel["targets"]:
            for line in query_range(target["expr"], start, end):
                points = [(float(t) - start, float(v)) for t, v in line["values"]]
                axes.plot(*zip(*points, strict=True), label=legend(target["legendFormat"],
                                                                   line["metric"]))  # fmt: skip
                count += 1
        series[panel["title"]] = count
        axes.set_xlabel("seconds into the run (unit: " + panel["fieldConfig"]["defaults"]["unit"]
                        + ")", fontsize=8)  # fmt: skip
        axes.tick_params(labelsize=8)
        if count:
            axes.legend(fontsize=7, loc="upper left")
    figure.suptitle("recallq fleet: 2 workers, RPC at 10 then 60 req/s (1 in 40 invalid), then a "
                    "bulk job beside it (the dashboard's queries on a live Prometheus)",
                    fontsize=14, y=0.98)  # fmt: skip
    figure.savefig(PICTURE, dpi=60, bbox_inches="tight")
    return series


async def drive(settings: WorkerSettings, workdir: Path) -> None:
    questions = json.loads((ROOT / "data" / "demo" / "questions.json").read_text())
    cycle = itertools.cycle([(q["query"], q["memory_id"]) for q in questions])
    async with RetrievalClient(settings, timeout=30) as client:
        sent = itertools.count()

        async def call(query: str, memory_id: str) -> None:
            # one request in 40 names a memory type the deployment does not serve: the
            # errors and rejected panels then show what a misbehaving caller looks like
            wrong = next(sent) % 40 == 39
            limits = {"recipes" if wrong else "long_term_memory": 3, "conversation_memory": 3}
            await client.retrieve(query, memory_id, limits)

        for rate, seconds in PHASES[:-1]:
            await open_loop(call, cycle, rate, seconds)
        source = workdir / "bulk.jsonl"
        source.write_text("".join(
            json.dumps({"query": q, "memory_id": m, "limits": {"long_term_memory": 5}}) + "\n"
            for q, m in itertools.islice(cycle, 4000)
        ))  # fmt: skip
        bulk = BulkJob(source, workdir / "bulk.out", settings=settings, progress=False)
        rate, seconds = PHASES[-1]
        await asyncio.gather(bulk.run(), open_loop(call, cycle, rate, seconds))


async def run() -> dict[str, int]:
    if shutil.which("prometheus") is None:
        raise SystemExit("needs Prometheus: apt-get install prometheus")
    workdir = Path(tempfile.mkdtemp(prefix="recallq-dashboard-"))
    with local_nodes(1, first_port=5701, prometheus=True) as [node]:
        (workdir / "prometheus.yml").write_text(prometheus_config(node.prometheus_port))
        prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        db = workdir / "memories.db"
        await ingest_demo(db)
        settings = WorkerSettings(amqp_url=node.url)
        workers = [WorkerProcess(settings, db, workdir / f"worker{i}.log", port)
                   for i, port in enumerate(METRICS_PORTS)]  # fmt: skip
        try:
            for worker in workers:
                await worker.start()
            start = time.time()
            await drive(settings, workdir)
            await asyncio.sleep(8)  # the last scrapes: Prometheus samples every 2 s
            end = time.time()
        finally:
            for worker in workers:
                await worker.stop()
        try:
            return draw(start, end)
        finally:
            prometheus.terminate()
            prometheus.wait(timeout=30)
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    series = asyncio.run(run())
    print(json.dumps(series, indent=2))
    print(f"wrote {PICTURE}")
    empty = [title for title, count in series.items() if count == 0]
    if empty:
        print(f"panels without data: {empty}")
    return 0
