"""What every memory store takes and gives: memories, search groups, candidates."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from schemas.memory import Memory as Memory  # re-exported: the one definition of a memory
from worker.errors import RecallqError
from worker.store.group_cache import GroupCacheStats
from worker.vectors import Vectors as Vectors  # re-exported: the stores' array type


@dataclass(frozen=True, slots=True)
class Candidate:
    """A memory a search found, with what each list made of it."""

    memory: Memory
    score: float  # cosine similarity of query and memory
    vector_rank: int | None = None  # 1-based place in the vector list; None: not in it
    lexical: float | None = None  # BM25 of query and memory, where the lexical side ran
    lexical_rank: int | None = None  # 1-based place in the lexical list; None: not in it
    # The row's attached field (e.g. knowledge_base_id) where its group searched attached
    # ids: what lets the search stage admit a row that is not the owner's own.
    attached: str | None = None


@dataclass(frozen=True)
class SearchGroup:
    """All queries of a batch that search the same (collection, owner, attached ids,
    filters, agent-wide field).

    Grouping lets an exact store score the whole group with one matrix multiply.
    `ks[i]` is how many vector candidates query `vectors[i]` wants, `lexical_ks[i]` how
    many lexical ones query `queries[i]` wants; a store returns the union of the two
    lists, each candidate with its cosine, its BM25 where scored, and its ranks.
    """

    collection: str  # the collection to search (the profile maps request types to it)
    owner: str  # the owner value (the request's memory_id): rows whose `owner_field` equals it
    vectors: Vectors
    ks: tuple[int, ...]  # vector candidates wanted per query (0: none)
    filters: tuple[tuple[str, str], ...] = ()  # scope equalities, sorted
    owner_field: str = "memory_id"
    queries: tuple[str, ...] = ()  # the query texts, where any query wants lexical candidates
    lexical_ks: tuple[int, ...] = ()  # lexical candidates wanted per query (none: no lexical)
    # memorizz's attached knowledge bases: rows whose `attached_field` is one of these ids
    # are searched too (owner OR attached, the scope on top); sorted, each once.
    attached_field: str | None = None
    attached_ids: tuple[str, ...] = ()
    # memorizz's agent-wide rows: the scope field (user_id) whose equality in `filters`
    # also admits rows where it is null or missing; None: every filter an equality.
    agent_wide: str | None = None

    def lexical_k(self, query: int) -> int:
        return self.lexical_ks[query] if self.lexical_ks else 0


GroupResult = list[list[Candidate]]  # per query of the group, best first


class GroupsRefused(RecallqError):
    """Some groups of one search call were refused and the others served. `outcomes`: per
    group, in order, its result or its error; code, retryable and message are the first
    refusal's, so a caller that does not read `outcomes` answers every request with it."""

    def __init__(self, outcomes: Sequence[GroupResult | RecallqError]) -> None:
        first = next(o for o in outcomes if isinstance(o, RecallqError))
        super().__init__(str(first))
        self.code, self.retryable = first.code, first.retryable
        self.outcomes = list(outcomes)


SearchPaths = Counter[str]
"""Groups searched, per path taken: what `recallq_store_searches_total{path}` counts.

Embedded store: `cache` (exact, the group in memory), `load` (exact, loaded from the rows
and kept), `oversize` (loaded for this batch alone: larger than the whole cache),
`vector_file` (exact over a large group's memory-mapped vector file), `approximate`
(HNSW candidates re-scored exactly), `behind` (a vector file with as many rows written
since it was built as a large group holds: those are loaded each batch), `unindexed` (a
large group whose vector file is missing, stale or damaged: loaded from the rows).
MongoDB: `exact`, `vector`, `hybrid`, `too_large` (exact mode refused a group over
RECALLQ_MONGO_EXACT_MAX_ROWS). `oversize`, `behind`, `unindexed` and `too_large` are the
slow or refused paths: each also logs a warning, once per group."""
SLOW_PATHS = frozenset({"oversize", "behind", "unindexed", "too_large"})


class MemoryStore(Protocol):
    # Called with (collection, rows) when a search skipped rows without an embedding
    # (memorizz back-fills them); a store that never skips never calls it.
    on_skipped: Callable[[str, int], None]

    @property
    def usable(self) -> bool:
        """False while the store cannot be served (readiness reports it)."""
        ...

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

    def search_paths(self) -> SearchPaths:
        """Groups searched so far, per path (SearchPaths names them); a live counter."""
        ...

    def cache_stats(self) -> GroupCacheStats | None:
        """The store's group cache, for the metrics; None for a store without one."""
        ...

    async def close(self) -> None: ...
