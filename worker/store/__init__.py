"""Memory stores behind one protocol, chosen by RECALLQ_STORE_URL."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from worker.access.profiles import Profile
from worker.errors import ConfigError
from worker.settings import WorkerSettings, sqlite_path
from worker.store.base import Candidate, GroupResult, Memory, MemoryStore, SearchGroup, Vectors
from worker.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from worker.store.mongo import MongoStore

__all__ = [
    "Candidate",
    "GroupResult",
    "Memory",
    "MemoryStore",
    "SQLiteStore",
    "SearchGroup",
    "Vectors",
    "open_mongo",
    "open_store",
]

BUNDLED_MODEL = "the bundled all-MiniLM-L6-v2"  # how errors name the default model


def open_store(
    settings: WorkerSettings,
    dimensions: int,
    *,
    writable: bool = False,
    profile: Profile | None = None,
) -> MemoryStore:
    """The store RECALLQ_STORE_URL names: sqlite:///relative/path, sqlite:////absolute/path,
    mongodb://... or mongodb+srv://...; `dimensions` is the embedder's. Only ingest and
    init ask for a `writable` one: a serving worker never writes into its store.
    `profile`: the settings' store profile where the caller has built it already."""
    if (path := sqlite_path(settings.store_url)) is not None:  # settings checked the URL
        cache_bytes = int(settings.sqlite_cache_mb * 2**20)
        return SQLiteStore(
            Path(path),
            writable=writable,
            cache_bytes=cache_bytes,
            dimensions=dimensions,
            model=model_label(settings),
            index_min_rows=settings.sqlite_index_min_rows,
            search=settings.sqlite_search,
        )
    scheme = urlparse(settings.store_url).scheme
    if scheme in ("mongodb", "mongodb+srv"):
        return open_mongo(settings, dimensions, profile=profile)
    raise ConfigError(
        f"unsupported store URL scheme {scheme!r}: use sqlite:///PATH or mongodb://..."
    )


def model_label(settings: WorkerSettings) -> str:
    """How store errors name the embedder: provider and model, or the local model."""
    return settings.remote_label() or settings.embed_model or BUNDLED_MODEL


def open_mongo(
    settings: WorkerSettings, dimensions: int, *, profile: Profile | None = None
) -> MongoStore:
    """The MongoDB store the settings describe; `profile` is settings.profile() unless
    given. PyMongo is imported here, so a worker on SQLite never loads it."""
    from worker.store.mongo import MongoOptions, MongoStore

    return MongoStore(
        url=settings.store_url,
        database=settings.mongo_database,
        profile=settings.profile() if profile is None else profile,
        dimensions=dimensions,
        options=MongoOptions.from_settings(settings),
        model=model_label(settings),
    )
