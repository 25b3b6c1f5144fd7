"""The worker's few exceptions; each maps to one reply error code."""

from __future__ import annotations

from schemas.messages import ErrorCode, describe_validation_error

__all__ = [
    "ConfigError",
    "EmbeddingRefused",
    "EmbeddingUnavailable",
    "Forbidden",
    "ForeignReplyTo",
    "InvalidMessage",
    "RecallqError",
    "StoreMismatch",
    "StoreUnavailable",
    "describe_validation_error",
]


class RecallqError(Exception):
    code: ErrorCode = ErrorCode.INTERNAL
    retryable: bool = False


class InvalidMessage(RecallqError):
    """The delivery cannot be turned into a valid request."""

    code = ErrorCode.INVALID_REQUEST


class Forbidden(RecallqError):
    """The broker-validated user may not read the memory_id the request names."""

    code = ErrorCode.FORBIDDEN


class ForeignReplyTo(Forbidden):
    """reply_to names a queue that is not the sender's: refused without a reply."""


class StoreUnavailable(RecallqError):
    """The memory store did not answer; the caller may retry."""

    code = ErrorCode.STORE_UNAVAILABLE
    retryable = True


class EmbeddingUnavailable(RecallqError):
    """The embedding provider gave no vectors in time (timeouts, 429s, 5xx, connection
    errors past the request's deadline); the caller may retry."""

    code = ErrorCode.EMBEDDING_UNAVAILABLE
    retryable = True


class EmbeddingRefused(EmbeddingUnavailable):
    """The provider refused the worker's configuration (400/401/403/404, wrong vector
    size): retrying cannot help until a setting is fixed; the message names it."""

    retryable = False


class StoreMismatch(RecallqError):
    """The store's data does not fit the model (dimensions differ): retrying cannot help."""


class ConfigError(RecallqError):
    """A setting is wrong; raised at start, before any message is taken."""
