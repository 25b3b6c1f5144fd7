"""An LRU of loaded (memory type, memory_id) groups, bounded in bytes, not in entries.

Any client can name new memory_ids, so a bound by count lets the cache grow with
the size of whatever groups it meets; a bound by bytes holds whatever they are.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


@dataclass
class GroupCacheStats:
    lookups: int = 0
    hits: int = 0
    evictions: int = 0
    bytes: int = 0
    groups: int = 0
    oversize: int = 0  # puts larger than the whole bound: served by the caller, not kept


class GroupCache(Generic[V]):
    """Not thread-safe: the store touches it from its one database thread."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self.stats = GroupCacheStats()

    def get(self, key: Hashable) -> V | None:
        self.stats.lookups += 1
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        self.stats.hits += 1
        return entry[0]

    def put(self, key: Hashable, value: V, size: int) -> None:
        """Keep `value` (about `size` bytes), dropping the least recently used to fit.

        A group larger than the whole bound is served but not kept.
        """
        self._drop(key)
        if size > self.max_bytes:
            self.stats.oversize += 1
            return
        self._entries[key] = (value, size)
        self.stats.bytes += size
        while self.stats.bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            self.stats.evictions += 1
        self.stats.groups = len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self.stats.bytes = self.stats.groups = 0

    def _drop(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.stats.bytes -= entry[1]
            self.stats.groups = len(self._entries)
