"""Which memorizz retrievals recallq answers, and as which request.

memorizz's MongoDB provider scopes each semantic search by fields of the rows. A
retrieval goes to recallq only where one request selects exactly the rows memorizz's
own filter would: the owner field (recallq's memorizz store profile), `filters` for
memorizz's other equalities, `knowledge_base_ids` for its attached knowledge bases,
and `agent_wide` where memorizz lets a user see the agent's rows without a user.
Anything else (a dict filter, an unset memory_id, `user_id=None`, a limit past 100, a
keyword recallq has no field for) is a reason string: the call passes through to the
wrapped provider untouched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from producer.client import Query
from schemas.messages import MAX_ATTACHED, MAX_QUERY_CHARS, RankWeights, RetrievalRequest

Ranking = Literal["vector", "memorizz", "signal"]
# The field that owns each memorizz store's rows, as recallq's memorizz profile reads
# them (memorizz 0.17 keeps memory_id only on turns, entities and an agent's own facts).
OWNERS = {
    "conversation_memory": "memory_id",
    "entity_memory": "memory_id",
    "knowledge_base": "memory_id",
    "workflow_memory": "agent_id",
    "toolbox": "agent_id",
    "skillbox": "agent_id",
    "summaries": "user_id",
    "short_term_memory": "user_id",
}
ALIASES = {"long_term_memory": "knowledge_base"}  # memorizz's older name, same collection
# Stores where memorizz shows a user the agent's rows that have no user_id.
AGENT_WIDE_STORES = frozenset({"knowledge_base", "skillbox", "toolbox"})
# retrieve_by_query(<text>) per store: the keyword naming the owner, and memorizz's
# other equalities beside user_id. memorizz's MongoDB provider ranks tools over every
# agent, then its Toolbox keeps the agent's own and ownerless rows: recallq ranks the
# agent's (`agent_id`) rows, so a crowd of other agents' tools never hides them.
SCOPED_BY_QUERY: dict[str, tuple[str, frozenset[str]]] = {
    "conversation_memory": ("memory_id", frozenset({"thread_id"})),
    "knowledge_base": ("memory_id", frozenset({"namespace"})),
    "entity_memory": ("memory_id", frozenset()),
    "toolbox": ("agent_id", frozenset()),
}
IGNORED = frozenset({"include_embedding", "query_text"})  # shape, not scope
MAX_LIMIT = 100
MAX_TYPES = 8
DEFAULT_SCOPE_FIELDS = frozenset(
    {"user_id", "agent_id", "thread_id", "namespace", "knowledge_base_id"}
)  # the worker's default
RELEVANCE_ONLY = RankWeights(relevance=1.0, recency=0.0, importance=0.0)
# The request option for agent-wide rows (schema 1 has it since issue 25). Checked, not
# assumed: without it the agent-wide stores pass through rather than search narrower.
AGENT_WIDE = "agent_wide"


def agent_wide_supported() -> bool:
    return AGENT_WIDE in RetrievalRequest.model_fields


@dataclass(frozen=True)
class Options:
    """How requests are shaped. `ranking`: "vector" returns memorizz's own top k by
    cosine (what its $vectorSearch returns); "memorizz" orders the worker's candidates
    by memorizz's retrieval score; "signal" by recallq's memory signal and search mode.
    `scope_fields`: the worker's RECALLQ_SCOPE_FIELDS (add `status` on both sides to
    serve skill retrieval by status)."""

    ranking: Ranking = "vector"
    scope_fields: frozenset[str] = DEFAULT_SCOPE_FIELDS
    agent_wide: bool = False  # whether requests may carry the agent-wide option


@dataclass(frozen=True)
class Route:
    """One request: its memory types (each a memorizz collection or alias) and query."""

    stores: tuple[str, ...]
    query: Query


def store_name(memory_type: Any) -> str:
    """memorizz's store name of a MemoryType member or string, aliases resolved."""
    name = str(getattr(memory_type, "value", memory_type) or "").lower()
    return ALIASES.get(name, name)


def route_query(
    text: Any, store: str, limit: Any, memory_id: Any, scope: Mapping[str, Any], options: Options
) -> Route | str:
    """retrieve_by_query(text, store, limit, memory_id, **scope) as a request, or why not
    (a toolbox search is owned by its `agent_id`; memorizz ignores a memory_id there)."""
    if store not in SCOPED_BY_QUERY:
        return f"{store}: memorizz scopes it by fields a request does not name"
    owner_key, equalities = SCOPED_BY_QUERY[store]
    owner = memory_id if owner_key == "memory_id" else scope.get(owner_key)
    if not isinstance(owner, str) or not owner:
        return f"no {owner_key}: memorizz searches every owner"
    filters, attached = {}, None
    for key, value in scope.items():
        if key in IGNORED or key == owner_key or (value is None and key != "user_id"):
            continue
        if key == "knowledge_base_ids" and store == "knowledge_base":
            attached = _attached(value)
            if isinstance(attached, str):
                return attached
        elif key == "user_id" or key in equalities:
            filters[key] = value
        else:
            return f"{key}: no recallq field for it"
    return build(text, (store,), {store: limit}, owner, filters, attached, options)


def route_skills(
    text: Any, limit: Any, statuses: Any, agent_id: Any, user_id: Any, options: Options
) -> Route | str:
    """retrieve_skillbox_candidates as a request (the owner: agent_id), or why not."""
    if not isinstance(agent_id, str) or not agent_id:
        return "no agent_id: memorizz searches every agent's skills"
    filters: dict[str, Any] = {"user_id": user_id}
    wanted = list(statuses or [])
    if len(wanted) > 1:
        return "several statuses: recallq's filters are equalities"
    if wanted:
        filters["status"] = wanted[0]
    return build(text, ("skillbox",), {"skillbox": limit}, agent_id, filters, None, options)


def route_batch(
    text: str,
    stores: Sequence[str],
    limits: Mapping[str, int],
    owners: Mapping[str, str | None],
    user_id: str | None,
    knowledge_base_ids: Sequence[str] | None,
    options: Options,
) -> tuple[list[Route], dict[str, str]]:
    """One request per owner field for the stores recallq can serve; the others with
    why not. `owners`: the value of each owner field (memory_id, agent_id, user_id)."""
    routes: list[Route] = []
    skipped: dict[str, str] = {}
    by_owner: dict[str, list[str]] = {}
    for store in stores:
        field = OWNERS.get(store_name(store))
        if field is None:
            skipped[store] = f"{store}: not a memory type recallq serves"
        elif not owners.get(field):
            skipped[store] = f"{store}: owned by {field}, and none was given"
        else:
            by_owner.setdefault(field, []).append(store)
    for field, group in by_owner.items():
        filters = {} if field == "user_id" or user_id is None else {"user_id": user_id}
        attached = knowledge_base_ids if "knowledge_base" in map(store_name, group) else None
        for chunk in _chunks(group, MAX_TYPES):
            route = build(text, tuple(chunk), limits, owners[field], filters, attached, options)
            if isinstance(route, str):
                skipped.update(dict.fromkeys(chunk, route))
            else:
                routes.append(route)
    return routes, skipped


def build(
    text: Any,
    stores: tuple[str, ...],
    limits: Mapping[str, Any],
    owner: Any,
    filters: Mapping[str, Any],
    attached: Sequence[str] | None,
    options: Options,
) -> Route | str:
    """The request, or why none expresses this retrieval."""
    if not isinstance(text, str) or not 1 <= len(text.strip()) <= MAX_QUERY_CHARS:
        return "not a text query recallq takes (a dict filter, blank, or too long)"
    wanted = {store: limits[store] for store in stores}
    if not all(isinstance(k, int) and 1 <= k <= MAX_LIMIT for k in wanted.values()):
        return f"a limit outside 1..{MAX_LIMIT}"
    problem = _check_filters(stores, filters, options)
    if problem:
        return problem
    wide = "user_id" in filters and any(store_name(s) in AGENT_WIDE_STORES for s in stores)
    query = Query(
        text, owner, wanted, filters=dict(filters) or None,
        knowledge_base_ids=list(attached) if attached else None,
        agent_wide=True if wide else None, **_ranking(options.ranking),
    )  # fmt: skip
    return Route(stores, query)


def _check_filters(
    stores: Sequence[str], filters: Mapping[str, Any], options: Options
) -> str | None:
    for key, value in filters.items():
        if key == "user_id" and value is None:
            return "user_id=None selects rows without a user: no equality says that"
        if not isinstance(value, str) or not 1 <= len(value) <= 256:
            return f"{key}: not a string of 1..256 characters"
        if key not in options.scope_fields:
            return f"{key}: not one of the deployment's scope fields"
    wide = any(store_name(s) in AGENT_WIDE_STORES for s in stores)
    if "user_id" in filters and wide and not options.agent_wide:
        return "agent-wide rows need the request's agent_wide option (not in this schema)"
    return None


def _attached(value: Any) -> list[str] | str | None:
    ids = sorted({str(v) for v in value or () if v})
    if len(ids) > MAX_ATTACHED:
        return f"more than {MAX_ATTACHED} knowledge_base_ids"
    return ids or None


def _ranking(ranking: Ranking) -> dict[str, Any]:
    if ranking == "vector":  # memorizz's own order: the top k by cosine
        return {"search": "vector", "weights": RELEVANCE_ONLY}
    if ranking == "memorizz":
        return {"search": "vector", "ranking": "memorizz"}
    return {}


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
