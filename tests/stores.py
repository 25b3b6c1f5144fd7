"""A real store with one behaviour changed: the base of the tests' faulty stores."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from worker.store import GroupResult, Memory, MemoryStore, SearchGroup, Vectors
from worker.store.base import SearchPaths
from worker.store.group_cache import GroupCacheStats


class WrappedStore:
    """Delegates everything to `store`; subclasses override `search` to misbehave."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    async def search(self, groups: Sequence[SearchGroup]) -> list[GroupResult]:
        return await self.store.search(groups)

    @property
    def usable(self) -> bool:
        return self.store.usable

    @property
    def on_skipped(self) -> Callable[[str, int], None]:
        return self.store.on_skipped

    @on_skipped.setter
    def on_skipped(self, count: Callable[[str, int], None]) -> None:
        self.store.on_skipped = count  # the wrapped store is the one that skips

    def cache_stats(self) -> GroupCacheStats | None:
        return self.store.cache_stats()

    def search_paths(self) -> SearchPaths:
        return self.store.search_paths()

    async def connect(self) -> None:
        await self.store.connect()

    async def check(self) -> None:
        await self.store.check()

    async def ensure_indexes(self) -> None:
        await self.store.ensure_indexes()

    async def upsert(self, memories: Sequence[Memory], embeddings: Vectors) -> None:
        await self.store.upsert(memories, embeddings)

    def describe(self) -> dict[str, Any]:
        return self.store.describe()

    async def close(self) -> None:
        """The wrapped store belongs to the fixture that made it."""
