"""Starting up: turn what stops a start into one line a person can act on (what
failed, the setting to check).

A failure without such a line is a bug: the CLI shows its traceback.
"""

from __future__ import annotations

import structlog
from pydantic import ValidationError

from schemas.connect import StartupError, explain, masked
from schemas.settings import settings_error_line
from worker.errors import ConfigError, RecallqError, StoreMismatch, StoreUnavailable

log = structlog.get_logger(__name__)


def failure_line(exc: BaseException, amqp_url: str, store_url: str) -> str | None:
    """One line for a failure a person must fix, or None for a bug."""
    if isinstance(exc, StartupError | ConfigError):
        return str(exc)
    if isinstance(exc, StoreUnavailable | StoreMismatch):
        return f"store {masked(store_url)}: {exc}; check RECALLQ_STORE_URL"
    if isinstance(exc, RecallqError):
        return str(exc)
    if isinstance(exc, ValidationError):
        return settings_error_line(exc)
    return explain(exc, amqp_url)
