"""The query-vector cache both embedders share: recent texts' vectors, least recently
used dropped first.

Agents repeat queries (the same turn retried, the same question asked of several
memory types or by several replicas of one agent): a hit costs no model pass, and
for a remote provider no call, no tokens and no place in its rate limit. Keys say
which vector space a vector belongs to (a model description; a provider, model and
size), so one cache never answers a text with another model's vector.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from typing import Generic, TypeVar

from worker.embedding.base import CacheStats
from worker.vectors import Vectors

K = TypeVar("K", bound=Hashable)


class VectorCache(Generic[K]):
    """A bounded LRU of vectors; thread-safe (the local model's lanes run on their own
    threads). `size` 0 keeps nothing."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.stats = CacheStats()
        self._vectors: OrderedDict[K, Vectors] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._vectors)

    def lookup(self, keys: Iterable[K]) -> dict[K, Vectors]:
        """The vectors held for `keys` (distinct keys: each counts as one lookup)."""
        found: dict[K, Vectors] = {}
        with self._lock:
            for key in keys:
                self.stats.lookups += 1
                vector = self._vectors.get(key)
                if vector is not None:
                    self._vectors.move_to_end(key)
                    found[key] = vector
            self.stats.hits += len(found)
        return found

    def remember(self, keys: Sequence[K], vectors: Vectors) -> None:
        """Keep row i of `vectors` under keys[i], dropping the least recently used."""
        if self.size <= 0:
            return
        with self._lock:
            for key, vector in zip(keys, vectors, strict=True):
                self._vectors[key] = vector.copy()  # a row view would pin its whole batch
                self._vectors.move_to_end(key)
            while len(self._vectors) > self.size:
                self._vectors.popitem(last=False)
