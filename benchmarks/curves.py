"""Latency at fixed offered rates, and the headline figure drawn from it: SLO capacity.

Every system gets the same offered rates, lowest first; a system's rate stops
rising once its p99 passes GIVE_UP_P99_MS (it is past saturation, and the next
rate would only queue longer). SLO capacity is the highest offered rate at which
p99 stays at or under SLO_P99_MS, with every lower rate meeting it too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from benchmarks.common import percentiles

RATES = (25, 50, 75, 100, 150, 200, 250, 300, 400)
SLO_P99_MS = 100.0
GIVE_UP_P99_MS = 2000.0

AtRate = Callable[[float], Awaitable[tuple[list[float], float]]]  # (latencies ms, seconds)


async def latency_curve(at_rate: AtRate, rates: Sequence[float]) -> list[dict[str, Any]]:
    """p50/p95/p99 and the rate achieved at each offered rate, until p99 passes 2 s."""
    points = []
    for rate in rates:
        latencies, seconds = await at_rate(rate)
        point = {"offered_rps": rate, "achieved_rps": round(len(latencies) / seconds, 1)}
        points.append({**point, **percentiles(latencies)})
        if points[-1]["p99"] > GIVE_UP_P99_MS:
            break
    return points


def slo_capacity(points: Sequence[dict[str, Any]], p99_ms: float = SLO_P99_MS) -> float:
    capacity = 0.0
    for point in points:
        if point["p99"] > p99_ms:
            break
        capacity = float(point["offered_rps"])
    return capacity
