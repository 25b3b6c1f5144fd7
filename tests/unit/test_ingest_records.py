"""Reading an ingest file: valid lines become memories, bad ones are reported by number."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from schemas.memory import FIELD_NAMES
from schemas.messages import MemoryType
from worker.admin.ingest import IngestReport, MemoryRecord, read_records


def test_bad_lines_are_reported_with_their_numbers(tmp_path: Path) -> None:
    good = {
        "memory_id": "a",
        "memory_type": "long_term_memory",
        "content": "likes tea",
        "timestamp": "2026-11-01T12:00:00",
        "embedding": [0.1, 0.2],
    }
    lines = [
        json.dumps(good),
        "not json",
        "",
        json.dumps({**good, "memory_id": {"$ne": None}}),
        json.dumps([1, 2]),
        json.dumps({**good, "memory_type": "dreams"}),
        json.dumps({**good, "id": "explicit", "importance": 0.9, "situational_tags": ["x"]}),
    ]
    path = tmp_path / "memories.jsonl"
    path.write_text("\n".join(lines) + "\n")
    report = IngestReport()
    memories = list(read_records(path, report))
    assert [number for number, _ in report.bad_lines] == [2, 4, 5, 6]
    assert "memory_id" in report.bad_lines[1][1]
    assert "memory_type" in report.bad_lines[3][1]
    first, second = memories
    assert first.memory_type is MemoryType.LONG_TERM
    assert first.timestamp == datetime(2026, 11, 1, 12, tzinfo=UTC).timestamp()
    assert len(first.id) == 32  # stable id derived from the content
    assert next(read_records(path, IngestReport())).id == first.id
    assert second.id == "explicit" and second.situational_tags == ("x",)


def test_last_accessed_is_read_as_epoch_seconds_or_iso_8601(tmp_path: Path) -> None:
    base = {"memory_id": "a", "memory_type": "long_term_memory", "content": "x", "timestamp": 1}
    lines = [
        {**base, "last_accessed": 1_800_000_000},
        {**base, "last_accessed": "2027-01-15T08:00:00"},  # naive: UTC
        {**base, "last_accessed": "2027-01-15T09:00:00+01:00"},
        {**base, "timestamp": " 2027-01-15T08:00:00Z "},
        base,
        {**base, "last_accessed": "yesterday"},
        {**base, "timestamp": "2027-13-01"},
    ]
    path = tmp_path / "memories.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = IngestReport()
    memories = list(read_records(path, report))
    moment = datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp()
    assert [m.last_accessed for m in memories] == [1_800_000_000.0, moment, moment, None, None]
    assert memories[3].timestamp == moment
    assert [number for number, _ in report.bad_lines] == [6, 7]
    assert "last_accessed" in report.bad_lines[0][1] and "ISO 8601" in report.bad_lines[0][1]
    assert "timestamp" in report.bad_lines[1][1]


def test_the_record_takes_every_field_of_a_memory() -> None:
    assert set(MemoryRecord.model_fields) == set(FIELD_NAMES)
