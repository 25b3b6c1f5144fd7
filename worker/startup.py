"""Starting up: turn what stops a start into one line a person can act on (what
failed, the setting to check).

A failure without such a line is a bug: the CLI shows its traceback. Each line
blames what failed: the broker's explanation is for what the broker client raised
only, never for a file the store could not make or open.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog
from pydantic import ValidationError

from schemas.connect import StartupError, broker_line, masked
from schemas.settings import settings_error_line
from worker.errors import ConfigError, RecallqError, StoreMismatch, StoreUnavailable
from worker.settings import sqlite_path

log = structlog.get_logger(__name__)


def failure_line(exc: BaseException, amqp_url: str, store_url: str) -> str | None:
    """One line for a failure a person must fix, or None for a bug."""
    if isinstance(exc, StartupError | ConfigError):
        return str(exc)
    if isinstance(exc, StoreUnavailable | StoreMismatch):
        return store_line(store_url, str(exc))
    if isinstance(exc, RecallqError):
        return str(exc)
    if isinstance(exc, ValidationError):
        return settings_error_line(exc)
    if (line := broker_line(exc, amqp_url)) is not None:
        return line
    if isinstance(exc, OSError) and (problem := store_file_problem(exc, store_url)):
        return store_line(store_url, problem)
    return None


def store_line(store_url: str, problem: str) -> str:
    return f"store {masked(store_url)}: {problem}; check RECALLQ_STORE_URL"


def store_file_problem(exc: OSError, store_url: str) -> str | None:
    """What a filesystem error on the embedded store's file (or its -wal, -shm), or on a
    directory above it, says; None when it is about another file."""
    path = sqlite_path(store_url)
    if not path or not isinstance(exc.filename, str):
        return None
    store = Path(os.path.abspath(path))
    failed = Path(os.path.abspath(exc.filename))
    reason = exc.strerror or type(exc).__name__
    if failed in store.parents:  # creating the directories on the way
        if isinstance(exc, FileExistsError | NotADirectoryError):
            reason = "Not a directory"
        return f"cannot create {exc.filename} ({reason})"
    if failed.parent == store.parent and failed.name.startswith(store.name):
        return f"cannot open {exc.filename} ({reason})"
    return None
