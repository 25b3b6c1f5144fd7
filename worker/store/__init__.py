"""Memory stores behind one protocol, chosen by RECALLQ_STORE_URL."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from worker.errors import ConfigError
from worker.settings import WorkerSettings
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


def open_store(settings: WorkerSettings, dimensions: int, *, writable: bool = False) -> MemoryStore:
    """The store RECALLQ_STORE_URL names: sqlite:///relative/path, sqlite:////absolute/path,
    mongodb://... or mongodb+srv://...; `dimensions` is the embedder's. Only ingest and
    init ask for a `writable` one: a serving worker never writes into its store."""
    scheme = urlparse(settings.store_url).scheme
    if scheme == "sqlite":
        path = settings.store_url.removeprefix("sqlite:///")
        if not path:
            raise ConfigError("sqlite store URL needs a path: sqlite:///./recallq.db")
        cache_bytes = int(settings.sqlite_cache_mb * 2**20)
        return SQLiteStore(Path(path), writable=writable, cache_bytes=cache_bytes)
    if scheme in ("mongodb", "mongodb+srv"):
        from worker.store.mongo import MongoStore

        return MongoStore(settings, dimensions)
    raise ConfigError(
        f"unsupported store URL scheme {scheme!r}: use sqlite:///PATH or mongodb://..."
    )
