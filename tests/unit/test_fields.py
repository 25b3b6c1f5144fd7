"""Reading time, importance and text from rows as recallq and memorizz write them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from worker.rank import DEFAULT_WEIGHTS, memory_signal
from worker.store.base import Candidate, Memory
from worker.store.fields import read_content, read_importance, read_time

MOMENT = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
EPOCH = MOMENT.timestamp()


@pytest.mark.parametrize(
    "row",
    [
        {"timestamp": EPOCH},
        {"timestamp": int(EPOCH)},
        {"timestamp": "2026-03-01T12:30:00+00:00"},
        {"timestamp": "2026-03-01T14:30:00+02:00"},
        {"timestamp": "2026-03-01T12:30:00Z"},
        {"timestamp": "2026-03-01T12:30:00"},  # no offset: UTC
        {"timestamp": MOMENT},  # a BSON date, timezone-aware
        {"timestamp": MOMENT.replace(tzinfo=None)},  # a BSON date as PyMongo returns it
        {"created_at": "2026-03-01T12:30:00+00:00", "updated_at": "2027-01-01T00:00:00"},
        {"updated_at": MOMENT.astimezone(timezone(timedelta(hours=-5))).isoformat()},
        {"created_at": None, "period_end": EPOCH, "period_start": EPOCH - 3600},
        {"timestamp": "not a time", "created_at": EPOCH},  # unreadable: the next field
    ],
)
def test_time_is_read_from_every_field_and_form(row: dict[str, Any]) -> None:
    assert read_time(row) == pytest.approx(EPOCH)


@pytest.mark.parametrize("row", [{}, {"timestamp": None}, {"timestamp": True}, {"x": 1.0}])
def test_a_row_without_a_time_has_none(row: dict[str, Any]) -> None:
    assert read_time(row) is None


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"importance": 0.7}, 0.7),
        ({"importance": 7}, 0.7),  # memorizz's 1..10 rating
        ({"importance": 1}, 1.0),
        ({"importance_score": 8}, 0.8),
        ({"importance_score": 0.25}, 0.25),
        ({"metadata": {"importance": 0.4}}, 0.4),
        ({"importance": 42}, 1.0),
        ({"importance": -3}, 0.0),
        ({"importance": True, "importance_score": 0.3}, 0.3),
        ({"importance": float("nan")}, None),
        ({"importance": "high"}, None),
        ({}, None),
    ],
)
def test_importance_is_read_and_rescaled(row: dict[str, Any], expected: float | None) -> None:
    assert read_importance(row) == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"content": "likes tea"}, "likes tea"),
        ({"content": {"role": "user", "content": "hi there"}}, "hi there"),
        (
            {"name": "Maya", "entity_type": "person", "attributes": {"seat": "aisle"}},
            "Maya (person): seat: aisle",
        ),
        ({"name": "deploy", "description": "build, test, ship"}, "deploy: build, test, ship"),
        ({"name": "Lisbon"}, "Lisbon"),
        ({}, ""),
    ],
)
def test_content_is_read_or_built_from_the_row(row: dict[str, Any], expected: str) -> None:
    assert read_content(row) == expected


def test_a_memory_without_a_time_gets_no_recency_penalty() -> None:
    now = EPOCH + 365 * 86400

    def signal(timestamp: float | None) -> float:
        memory = Memory("id", "m", "knowledge_base", "text", timestamp)
        return memory_signal(Candidate(memory, 0.5), now, DEFAULT_WEIGHTS)

    assert signal(None) == pytest.approx(signal(now))
    assert signal(None) > signal(EPOCH)
