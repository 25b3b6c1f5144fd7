"""A small MongoDB query matcher, written by hand for the tests' oracles: what a find()
with a filter document selects, for the operators recallq and memorizz use ($eq, $in,
$exists, $or, $and and implicit equality), with MongoDB's rules for null (missing or null) and
arrays (an array matches when one of its elements does)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MISSING = object()


def matches(document: Mapping[str, Any], query: Mapping[str, Any]) -> bool:
    """Whether `document` is selected by `query` (every clause holds)."""
    for key, condition in query.items():
        if key == "$or":
            if not any(matches(document, part) for part in condition):
                return False
        elif key == "$and":
            if not all(matches(document, part) for part in condition):
                return False
        elif not _holds(document.get(key, MISSING), condition):
            return False
    return True


def _holds(value: Any, condition: Any) -> bool:
    if isinstance(condition, Mapping) and condition and all(k.startswith("$") for k in condition):
        for operator, operand in condition.items():
            if operator == "$eq" and not _equals(value, operand):
                return False
            if operator == "$in" and not any(_equals(value, item) for item in operand):
                return False
            if operator == "$exists" and (value is not MISSING) != bool(operand):
                return False
            if operator not in ("$eq", "$in", "$exists"):
                raise NotImplementedError(operator)
        return True
    return _equals(value, condition)


def _equals(value: Any, wanted: Any) -> bool:
    """MongoDB equality: null matches a missing field too; an array matches an element."""
    if wanted is None:
        return value is MISSING or value is None
    if value is MISSING:
        return False
    if isinstance(value, list) and not isinstance(wanted, list):
        return wanted in value
    return bool(value == wanted)
