"""The ratios the targets are stated in, and the Markdown table the README shows."""

from __future__ import annotations

from typing import Any


def _ratio(ours: float, theirs: float) -> float | None:
    return round(ours / theirs, 2) if theirs else None


def ratios(systems: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    ours, naive, celery = systems["recallq"], systems["naive"], systems["celery"]
    return {
        "recallq_vs_naive_throughput": _ratio(ours["saturated_rps"], naive["saturated_rps"]),
        "recallq_vs_celery_throughput": _ratio(ours["saturated_rps"], celery["saturated_rps"]),
        "recallq_vs_naive_slo_capacity": _ratio(
            ours["slo_capacity_rps"], naive["slo_capacity_rps"]
        ),
        "recallq_vs_celery_slo_capacity": _ratio(
            ours["slo_capacity_rps"], celery["slo_capacity_rps"]
        ),
        "recallq_vs_naive_idle_p50": _ratio(ours["idle_ms"]["p50"], naive["idle_ms"]["p50"]),
        "recallq_vs_embed_ceiling": _ratio(
            ours["saturated_rps"], systems["embed_ceiling"]["saturated_rps"]
        ),
    }


def render(run: dict[str, Any]) -> str:
    """One workload: a row per system, then its latency curve, then the ratios."""
    systems = run["systems"]
    lines = [
        f"**{run['workload']['tenants']} tenants** ({run['workload']['memories']:,} memories)",
        "",
        "| system | saturated req/s | SLO capacity (p99 <= 100 ms) | idle p50 / p99 ms "
        "| p50 / p99 ms at each offered req/s | peak RSS MiB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    ceiling = systems["embed_ceiling"]
    lines.append(f"| embed ceiling ({ceiling['backend']}) | {ceiling['saturated_rps']} | | | | |")
    for name in [n for n in systems if n != "embed_ceiling"]:
        r = systems[name]
        curve = ", ".join(
            f"{p['offered_rps']}: {p['p50']:.0f} / {p['p99']:.0f}" for p in r["curve"]
        )
        lines.append(
            f"| {name} | {r['saturated_rps']} | {r['slo_capacity_rps']:.0f} "
            f"| {r['idle_ms']['p50']} / {r['idle_ms']['p99']} | {curve} | {r['peak_rss_mb']} |"
        )
    lines.append("")
    lines.extend(f"- {key}: {value}" for key, value in run["ratios"].items())
    return "\n".join(lines)
