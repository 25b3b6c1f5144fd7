"""Reading a stored row's time, importance and text, whatever wrote it.

recallq writes `timestamp` (epoch seconds), `importance` (0..1) and `content`.
memorizz writes, depending on the collection: `timestamp` (ISO string with an
offset) on conversation turns; `created_at`/`updated_at` (ISO) on knowledge
base, entity and workflow rows; `created_at`, `period_start`, `period_end`
(epoch seconds) on summaries; `importance` or `importance_score`, on 0..1 or
1..10; entities and workflows have no `content` at all. A row without any time
gets no recency penalty (as memorizz scores it), never a 1970 date.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeGuard

TIME_FIELDS = ("timestamp", "created_at", "updated_at", "period_end")
ACCESS_FIELDS = ("last_accessed_at", "last_accessed", "last_recalled_at")
IMPORTANCE_FIELDS = ("importance", "importance_score")
TEXT_FIELDS = ("name", "entity_type", "attributes", "description")


def read_time(row: Mapping[str, Any]) -> float | None:
    """Epoch seconds from the first time field that holds a time, else None."""
    return _first_time(row, TIME_FIELDS)


def read_last_accessed(row: Mapping[str, Any]) -> float | None:
    """When memorizz last recalled the row (its recency anchor), if recorded."""
    return _first_time(row, ACCESS_FIELDS)


def _first_time(row: Mapping[str, Any], fields: tuple[str, ...]) -> float | None:
    for field in fields:
        moment = epoch_seconds(row.get(field))
        if moment is not None:
            return moment
    return None


def epoch_seconds(value: Any) -> float | None:
    """A BSON date, an ISO 8601 string (no offset = UTC) or epoch seconds; None else."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    if _number(value):
        return float(value)
    return None


def read_importance(row: Mapping[str, Any]) -> float | None:
    """0..1 from `importance`, else `importance_score` (a 1..10 rating is rescaled)."""
    metadata = row.get("metadata")
    holders = [row, metadata] if isinstance(metadata, Mapping) else [row]
    for holder in holders:
        for field in IMPORTANCE_FIELDS:
            value = holder.get(field)
            if _number(value):
                scaled = value / 10.0 if 1.0 < value <= 10.0 else float(value)
                return min(1.0, max(0.0, scaled))
    return None


def read_content(row: Mapping[str, Any]) -> str:
    """`content` (a string, or a turn's nested content), else a text built from the row:
    an entity's name, type and attributes, a workflow's name and description."""
    content = row.get("content")
    if isinstance(content, Mapping):
        content = content.get("content") or content.get("text")
    if isinstance(content, str) and content:
        return content
    name, kind = row.get("name"), row.get("entity_type")
    parts = [f"{name} ({kind})" if name and kind else str(name or "")]
    attributes = row.get("attributes")
    if isinstance(attributes, Mapping) and attributes:
        parts.append("; ".join(f"{key}: {value}" for key, value in attributes.items()))
    elif isinstance(attributes, list) and attributes:  # memorizz: [{name, value, ...}]
        parts.append("; ".join(map(_attribute, attributes)))
    description = row.get("description")
    if isinstance(description, str) and description:
        parts.append(description)
    return ": ".join(part for part in parts if part)


def _number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _attribute(item: Any) -> str:
    if isinstance(item, Mapping) and "name" in item and "value" in item:
        return f"{item['name']}: {item['value']}"
    return str(item)
