"""What every memory store takes and gives: memories, search groups, candidates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from worker.vectors import Vectors as Vectors  # re-exported: the stores' array type


@dataclass(frozen=True, slots=True)
class Memory:
    """A stored memory, without its embedding."""

    id: str
    memory_id: str  # its owner value (the profile's owner field; memory_id by default)
    memory_type: str  # the collection it is stored in
    content: str
    timestamp: float | None  # epoch seconds; None: the row has no time (no recency penalty)
    summary_content: str | None = None
    role: str | None = None
    situational_tags: tuple[str, ...] | None = None
    importance: float | None = None
    last_accessed: float | None = None  # epoch seconds of the last recall, where recorded


@dataclass(frozen=True, slots=True)
class Candidate:
    memory: Memory
    score: float  # cosine similarity of query and memory


@dataclass(frozen=True)
class SearchGroup:
    """All queries of a batch that search the same (collection, owner, filters).

    Grouping lets an exact store score the whole group with one matrix multiply.
    `ks[i]` is how many candidates query `vectors[i]` wants.
    """

    memory_type: str  # the collection to search (the profile maps request types to it)
    memory_id: str  # the owner value: rows whose `owner_field` equals it
    vectors: Vectors
    ks: tuple[int, ...]
    filters: tuple[tuple[str, str], ...] = ()  # scope equalities, sorted
    owner_field: str = "memory_id"


GroupResult = list[list[Candidate]]  # per query of the group, best first


class MemoryStore(Protocol):
    usable: bool  # false while the store cannot be served (readiness reports it)

    async def connect(self) -> None:
        """Open connections and choose the search mode; called once before serving."""
        ...

    async def check(self) -> None:
        """A cheap look, every second while serving: is the store still servable? Raises
        StoreUnavailable (and `usable` turns false) when it is not."""
        ...

    async def search(self, groups: Sequence[SearchGroup]) -> list[GroupResult]:
        """Top candidates for every query of every group, in the order given."""
        ...

    async def upsert(self, memories: Sequence[Memory], embeddings: Vectors) -> None: ...

    async def ensure_indexes(self) -> None:
        """Create what searching needs (tables, B-tree and vector indexes); idempotent."""
        ...

    def describe(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...
