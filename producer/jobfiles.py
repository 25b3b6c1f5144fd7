"""The files of a bulk job: the input plan, the results written so far, the bad lines."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from schemas.messages import RetrievalRequest, describe_validation_error


@dataclass
class Plan:
    """The valid requests of an input file, in order, and its bad lines by number."""

    requests: list[RetrievalRequest] = field(default_factory=list)
    bad_lines: list[tuple[int, str]] = field(default_factory=list)


def derive_request_id(number: int, line: str) -> str:
    """Stable across runs: the same line at the same place gets the same id."""
    return hashlib.sha256(f"{number}\0{line.strip()}".encode()).hexdigest()[:32]


def read_plan(path: Path) -> Plan:
    """Parse every line; a bad line is reported with its number and skipped."""
    plan = Plan()
    first_line_of: dict[str, int] = {}
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                request = _parse(number, line)
            except ValueError as exc:
                plan.bad_lines.append((number, str(exc)))
                continue
            if request.request_id in first_line_of:
                first = first_line_of[request.request_id]
                plan.bad_lines.append((number, f"duplicate request_id, first on line {first}"))
                continue
            first_line_of[request.request_id] = number
            plan.requests.append(request)
    return plan


def _parse(number: int, line: str) -> RetrievalRequest:
    try:
        body = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    body.setdefault("request_id", derive_request_id(number, line))
    if "deadline_ms" in body:
        raise ValueError("deadline_ms: not allowed in a bulk job (results wait for the job)")
    try:
        return RetrievalRequest.model_validate_json(json.dumps(body))
    except ValidationError as exc:
        raise ValueError(describe_validation_error(exc)) from None


def written_request_ids(path: Path) -> set[str]:
    """Request ids already in the output; a torn last line (a crash mid-write) is cut off."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with path.open("r+b") as output:
            output.truncate(len(complete))
    ids = set()
    for line in complete.splitlines():
        if line.strip():
            ids.add(json.loads(line)["request_id"])
    return ids


def write_bad_lines(path: Path, bad_lines: list[tuple[int, str]]) -> None:
    with path.open("w", encoding="utf-8") as errors:
        for number, problem in bad_lines:
            errors.write(json.dumps({"line": number, "error": problem}) + "\n")
