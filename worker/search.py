"""The search stage: group a batch by (collection, owner, attached ids, filters, agent-wide
field), search, rank per request.

Each query asks its group for vector candidates, lexical candidates or both, as its
request's search mode says, `limit x candidate_factor` of each; worker.fusion turns
the two lists into one relevance and the memory signal ranks.

Memory types name what a request wants; the store profile says which collection
each lives in and which field holds its owner (the request's memory_id). Two types
in one collection with the same owner field (an alias) share one search. A type whose
profile names an attached field (memorizz's knowledge base) also searches the rows
attached by the request's `knowledge_base_ids`, in the same search. A type in a
collection the profile marks agent-wide, asked for with `agent_wide`, has its user
filter widened to the owner's rows without a user (memorizz's agent-wide rows): a
search of its own, never shared with the strict one.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence

import structlog

from schemas.messages import MemoryHit, RetrievalRequest, SearchMode
from worker.access.profiles import MEMORY_ID, Profile
from worker.errors import RecallqError
from worker.rank import rank
from worker.store.base import (
    Candidate,
    GroupResult,
    GroupsRefused,
    MemoryStore,
    SearchGroup,
    Vectors,
)

log = structlog.get_logger(__name__)

Slot = tuple[int, str]  # (request index in batch, memory type)
Scope = tuple[tuple[str, str], ...]
Observe = Callable[[float], None]  # seconds of the batch's one store call


Key = tuple[str, str, str, str | None, tuple[str, ...], Scope, str | None]


def group_key(request: RetrievalRequest, memory_type: str, profile: Profile | None) -> Key:
    """(collection, owner field, memory_id, attached field, attached ids, filters, widened
    field): the attached part only for a type whose profile names an attached field, with
    ids; the widened field only with `agent_wide`, for an agent-wide type whose user field
    is filtered on."""
    collection = profile.collection(memory_type) if profile else memory_type
    owner_field = profile.owner(memory_type) if profile else MEMORY_ID
    attached_field = profile.attached_field(memory_type) if profile else None
    ids = tuple(sorted(set(request.knowledge_base_ids or ()))) if attached_field else ()
    scope = tuple(sorted((request.filters or {}).items()))
    attached = attached_field if ids else None
    wide = widened(request, memory_type, profile)
    return collection, owner_field, request.memory_id, attached, ids, scope, wide


def widened(request: RetrievalRequest, memory_type: str, profile: Profile | None) -> str | None:
    """The scope field `agent_wide` widens for this type, or None (no option, no agent-wide
    collection, or no filter on its user field: nothing to widen)."""
    if not request.agent_wide or profile is None:
        return None
    field = profile.agent_wide_field(memory_type)
    return field if field is not None and field in (request.filters or {}) else None


def build_groups(
    requests: Sequence[RetrievalRequest],
    vectors: Vectors,
    candidate_factor: int,
    profile: Profile | None = None,
    search: SearchMode = "hybrid",
) -> tuple[list[SearchGroup], list[list[Slot]]]:
    """One group per (collection, owner field, memory_id, attached ids, filters, widened
    field); for each, the slots it answers. `profile` maps memory types to collections,
    owner, attached and agent-wide fields (default: the same name, owned by memory_id,
    nothing attached, nothing agent-wide)."""
    members: dict[Key, list[Slot]] = defaultdict(list)
    for index, request in enumerate(requests):
        for memory_type in request.limits:
            members[group_key(request, memory_type, profile)].append((index, memory_type))
    groups = []
    for key, slots in members.items():
        collection, owner_field, owner, attached_field, ids, scope, wide = key
        rows = [index for index, _ in slots]
        wanted = [requests[i].limits[t] * candidate_factor for i, t in slots]
        modes = [requests[i].search or search for i, _ in slots]
        ks = tuple(k if mode != "lexical" else 0 for k, mode in zip(wanted, modes, strict=True))
        lexical_ks = tuple(
            k if mode != "vector" else 0 for k, mode in zip(wanted, modes, strict=True)
        )
        lexical = any(lexical_ks)
        groups.append(
            SearchGroup(
                collection, owner, vectors[rows], ks, scope, owner_field,
                queries=tuple(requests[i].query for i in rows) if lexical else (),
                lexical_ks=lexical_ks if lexical else (),
                attached_field=attached_field, attached_ids=ids, agent_wide=wide,
            )
        )  # fmt: skip
    return groups, list(members.values())


def admits(request: RetrievalRequest, attached: bool) -> Callable[[Candidate], bool]:
    """Whether a candidate may answer this request: the owner's own row, or, for a type
    with an attached field, a row whose attached field is one of the request's ids.
    Defence in depth: a store bug must never leak another tenant's memories."""
    owner = request.memory_id
    ids = frozenset(request.knowledge_base_ids or ()) if attached else frozenset()

    def admitted(candidate: Candidate) -> bool:
        if candidate.memory.memory_id == owner:
            return True
        return candidate.attached is not None and candidate.attached in ids

    return admitted


async def search_and_rank(
    store: MemoryStore,
    requests: Sequence[RetrievalRequest],
    vectors: Vectors,
    *,
    candidate_factor: int,
    now: float,
    search: SearchMode = "hybrid",
    observe: Observe | None = None,
    profile: Profile | None = None,
) -> list[dict[str, list[MemoryHit]] | RecallqError]:
    """Ranked hits per memory type for every request, in request order; a request in a
    group the store refused (GroupsRefused) gets that group's error instead.

    Other store errors propagate (StoreUnavailable is retried by the caller).
    """
    groups, slots_of_group = build_groups(requests, vectors, candidate_factor, profile, search)
    # One call for every group of the batch: the store runs them as it runs best (the
    # embedded store on its thread in one hop, MongoDB concurrently); a call per memory
    # type cost the embedded store two more thread hops (~1 ms at idle on 2 cores).
    started = time.monotonic()
    found = await searched(store, groups)
    if observe is not None:
        observe(time.monotonic() - started)
    candidates: list[dict[str, list[Candidate]]] = [{} for _ in requests]
    failed: dict[int, RecallqError] = {}
    for slots, per_query in zip(slots_of_group, found, strict=True):
        if isinstance(per_query, RecallqError):
            failed.update((index, per_query) for index, _ in slots)
            continue
        for (index, memory_type), hits in zip(slots, per_query, strict=True):
            attached = profile is not None and profile.attached_field(memory_type) is not None
            admitted = admits(requests[index], attached)
            candidates[index][memory_type] = [c for c in hits if admitted(c)]
            if len(candidates[index][memory_type]) != len(hits):
                log.error("store returned foreign memories", request_id=requests[index].request_id)
    return [
        failed[index] if index in failed else _ranked(request, candidates[index], now, search)
        for index, request in enumerate(requests)
    ]


def _ranked(
    request: RetrievalRequest,
    candidates: dict[str, list[Candidate]],
    now: float,
    search: SearchMode,
) -> dict[str, list[MemoryHit]]:
    """One request's hits per memory type, ranked as it asked."""
    return {
        memory_type: rank(
            candidates[memory_type],
            limit=limit,
            now=now,
            weights=request.weights,
            min_score=request.min_score,
            memory_type=memory_type,
            ranking=request.ranking,
            search=request.search or search,
            fusion=request.fusion,
        )
        for memory_type, limit in request.limits.items()
    }


async def searched(
    store: MemoryStore, groups: Sequence[SearchGroup]
) -> list[GroupResult | RecallqError]:
    """The store's result per group; a group it refused (GroupsRefused) is its error."""
    try:
        return list(await store.search(groups))
    except GroupsRefused as exc:
        return exc.outcomes
