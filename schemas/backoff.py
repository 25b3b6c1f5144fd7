"""The waits between retries, for every retry loop on both sides: doubling from a first
delay to a cap. One definition, so the broker wait, the store retries and a bulk job's
re-offers back off alike."""

from __future__ import annotations

from collections.abc import Iterator


def delays(first_s: float, most_s: float, factor: float = 2.0) -> Iterator[float]:
    """first_s, first_s * factor, ... capped at most_s, without end: take what you need."""
    delay = first_s
    while True:
        yield delay
        delay = min(delay * factor, most_s)
