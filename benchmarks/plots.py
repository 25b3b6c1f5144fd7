"""p50 and p99 against offered rate, one colour per system: a PNG per workload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.curves import SLO_P99_MS

COLOURS = {
    "naive": "tab:gray",
    "celery": "tab:orange",
    "recallq": "tab:blue",
    "recallq_cache_2gib": "tab:green",
}


def latency_plot(run: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name, colour in COLOURS.items():
        if name not in run["systems"]:
            continue
        curve = run["systems"][name]["curve"]
        rates = [point["offered_rps"] for point in curve]
        axes.plot(rates, [p["p99"] for p in curve], "-o", color=colour, label=f"{name} p99")
        axes.plot(rates, [p["p50"] for p in curve], "--", color=colour, label=f"{name} p50")
    axes.axhline(SLO_P99_MS, color="tab:red", linewidth=0.8, label="SLO: p99 100 ms")
    axes.set_yscale("log")
    axes.set_xlabel("offered load (requests/s)")
    axes.set_ylabel("latency (ms)")
    workload = run["workload"]
    axes.set_title(f"{workload['tenants']} tenants, {workload['memories']:,} memories")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
