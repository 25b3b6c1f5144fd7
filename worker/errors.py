"""The worker's few exceptions; each maps to one reply error code."""

from __future__ import annotations

from pydantic import ValidationError

from schemas.messages import ErrorCode


def describe_validation_error(exc: ValidationError, most: int = 5) -> str:
    """`field: problem; ...` for the first few errors: short enough for a reply or a log."""
    parts = []
    for error in exc.errors(include_url=False)[:most]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


class RecallqError(Exception):
    code: ErrorCode = ErrorCode.INTERNAL
    retryable: bool = False


class InvalidMessage(RecallqError):
    """The delivery cannot be turned into a valid request."""

    code = ErrorCode.INVALID_REQUEST


class StoreUnavailable(RecallqError):
    """The memory store did not answer; the caller may retry."""

    code = ErrorCode.STORE_UNAVAILABLE
    retryable = True


class StoreMismatch(RecallqError):
    """The store's data does not fit the model (dimensions differ): retrying cannot help."""


class ConfigError(RecallqError):
    """A setting is wrong; raised at start, before any message is taken."""
