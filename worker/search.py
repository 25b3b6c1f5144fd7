"""The search stage: group a batch by (memory type, memory_id), search, rank per request."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

import structlog

from schemas.messages import MemoryHit, MemoryType, RetrievalRequest
from worker.rank import rank
from worker.store.base import Candidate, GroupResult, MemoryStore, SearchGroup, Vectors

log = structlog.get_logger(__name__)

Slot = tuple[int, MemoryType]  # (request index in batch, memory type)
Observe = Callable[[MemoryType, float], None]  # (memory type, seconds) of one store call


def build_groups(
    requests: Sequence[RetrievalRequest], vectors: Vectors, candidate_factor: int
) -> tuple[list[SearchGroup], list[list[Slot]]]:
    """One group per (memory type, memory_id); for each group, the slots it answers."""
    members: dict[tuple[MemoryType, str], list[Slot]] = defaultdict(list)
    for index, request in enumerate(requests):
        for memory_type in request.limits:
            members[(memory_type, request.memory_id)].append((index, memory_type))
    groups = []
    for (memory_type, memory_id), slots in members.items():
        rows = [index for index, _ in slots]
        ks = tuple(requests[i].limits[memory_type] * candidate_factor for i in rows)
        groups.append(SearchGroup(memory_type, memory_id, vectors[rows], ks))
    return groups, list(members.values())


async def search_by_type(
    store: MemoryStore, groups: Sequence[SearchGroup], observe: Observe | None
) -> list[GroupResult]:
    """One store call per memory type, concurrently, each timed for `observe`."""
    by_type: dict[MemoryType, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        by_type[group.memory_type].append(index)

    async def one_type(memory_type: MemoryType, indexes: list[int]) -> list[GroupResult]:
        started = time.monotonic()
        results = await store.search([groups[i] for i in indexes])
        if observe is not None:
            observe(memory_type, time.monotonic() - started)
        return results

    found: list[GroupResult] = [[] for _ in groups]
    answers = await asyncio.gather(*(one_type(t, ix) for t, ix in by_type.items()))
    for indexes, results in zip(by_type.values(), answers, strict=True):
        for index, result in zip(indexes, results, strict=True):
            found[index] = result
    return found


async def search_and_rank(
    store: MemoryStore,
    requests: Sequence[RetrievalRequest],
    vectors: Vectors,
    *,
    candidate_factor: int,
    now: float,
    observe: Observe | None = None,
) -> list[dict[MemoryType, list[MemoryHit]]]:
    """Ranked hits per memory type for every request, in request order.

    Store errors propagate (StoreUnavailable is retried by the caller).
    """
    groups, slots_of_group = build_groups(requests, vectors, candidate_factor)
    found = await search_by_type(store, groups, observe)
    candidates: list[dict[MemoryType, list[Candidate]]] = [{} for _ in requests]
    for slots, per_query in zip(slots_of_group, found, strict=True):
        for (index, memory_type), hits in zip(slots, per_query, strict=True):
            owner = requests[index].memory_id
            candidates[index][memory_type] = [c for c in hits if c.memory.memory_id == owner]
            if len(candidates[index][memory_type]) != len(hits):
                # Defence in depth: a store bug must never leak another tenant's memories.
                log.error("store returned foreign memories", request_id=requests[index].request_id)
    return [
        {
            memory_type: rank(
                candidates[index][memory_type],
                limit=limit,
                now=now,
                weights=request.weights,
                min_score=request.min_score,
            )
            for memory_type, limit in request.limits.items()
        }
        for index, request in enumerate(requests)
    ]
