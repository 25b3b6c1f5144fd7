"""Bulk job files: the plan, bad lines by number, resuming from a torn output."""

from __future__ import annotations

import json
from pathlib import Path

from producer.jobfiles import derive_request_id, read_plan, written_request_ids

GOOD = {"query": "q", "memory_id": "m", "limits": {"long_term_memory": 2}}


def test_plan_keeps_good_lines_and_numbers_the_bad_ones(tmp_path: Path) -> None:
    lines = [
        json.dumps(GOOD),
        "{not json",
        json.dumps({**GOOD, "memory_id": {"$regex": ".*"}}),
        "",
        json.dumps({**GOOD, "request_id": "mine"}),
        json.dumps([GOOD]),
        json.dumps({**GOOD, "request_id": "mine"}),
        json.dumps({**GOOD, "deadline_ms": 5}),
        json.dumps({**GOOD, "limits": {"long_term_memory": 0}}),
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    plan = read_plan(path)
    assert [r.request_id for r in plan.requests] == [derive_request_id(1, lines[0]), "mine"]
    bad = dict(plan.bad_lines)
    assert sorted(bad) == [2, 3, 6, 7, 8, 9]
    assert bad[2].startswith("not JSON")
    assert "memory_id" in bad[3]
    assert bad[6] == "not a JSON object"
    assert bad[7] == "duplicate request_id, first on line 5"
    assert "deadline_ms" in bad[8]
    assert "limits" in bad[9]


def test_derived_ids_are_stable_and_distinguish_repeated_lines() -> None:
    line = json.dumps(GOOD)
    assert derive_request_id(3, line) == derive_request_id(3, line + "\n")
    assert derive_request_id(3, line) != derive_request_id(4, line)


def test_a_torn_last_line_is_cut_off_and_the_rest_counted(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text('{"request_id": "a"}\n{"request_id": "b"}\n{"request_id": "c", "sta')
    assert written_request_ids(path) == {"a", "b"}
    assert path.read_text() == '{"request_id": "a"}\n{"request_id": "b"}\n'
    assert written_request_ids(tmp_path / "missing.jsonl") == set()
