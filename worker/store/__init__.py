"""Memory stores behind one protocol, chosen by RECALLQ_STORE_URL."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from worker.errors import ConfigError
from worker.store.base import Candidate, GroupResult, Memory, MemoryStore, SearchGroup, Vectors
from worker.store.sqlite import SQLiteStore

__all__ = [
    "Candidate",
    "GroupResult",
    "Memory",
    "MemoryStore",
    "SQLiteStore",
    "SearchGroup",
    "Vectors",
    "open_store",
]


def open_store(store_url: str) -> MemoryStore:
    """sqlite:///relative/path, sqlite:////absolute/path; MongoDB comes with its own store."""
    scheme = urlparse(store_url).scheme
    if scheme == "sqlite":
        path = store_url.removeprefix("sqlite:///")
        if not path:
            raise ConfigError("sqlite store URL needs a path: sqlite:///./recallq.db")
        return SQLiteStore(Path(path))
    raise ConfigError(f"unsupported store URL scheme {scheme!r}: use sqlite:///PATH")
