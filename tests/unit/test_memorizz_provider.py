"""RecallqProvider without a broker: which memorizz calls become which requests, what
passes through untouched, the documents it returns, and its failure behaviour (a
stand-in client answers or fails as each test says; a stand-in provider records)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import pytest
from bson import ObjectId

from producer.client import (
    Query,
    RetrievalError,
    RetrievalOverloaded,
    RetrievalTimeout,
    RetrievalUnavailable,
)
from producer.memorizz import RecallqProvider, RecallqReplyError
from producer.memorizz.routes import (
    DEFAULT_SCOPE_FIELDS,
    RELEVANCE_ONLY,
    Options,
    Route,
    route_batch,
    route_query,
    route_skills,
)
from schemas.messages import ErrorCode, ErrorInfo, MemoryHit, RetrievalResponse

WIDE = Options(agent_wide=True)


def routed(route: Route | str) -> Query:
    assert isinstance(route, Route), route
    return route.query


def test_a_conversation_search_becomes_one_scoped_vector_request() -> None:
    scope = {"user_id": "alice", "thread_id": "t-1", "include_embedding": True, "namespace": None}
    query = routed(route_query("my seat?", "conversation_memory", 7, "shared", scope, WIDE))
    assert (query.memory_id, dict(query.limits)) == ("shared", {"conversation_memory": 7})
    assert query.filters == {"user_id": "alice", "thread_id": "t-1"}
    assert (query.search, query.weights, query.ranking) == ("vector", RELEVANCE_ONLY, None)
    assert query.agent_wide is None and query.knowledge_base_ids is None


def test_knowledge_search_widens_to_attached_bases_and_agent_wide_rows() -> None:
    scope = {"user_id": "bob", "knowledge_base_ids": ["kb-2", "kb-1", "kb-2"], "namespace": "t"}
    query = routed(route_query("river", "knowledge_base", 5, "shared", scope, WIDE))
    assert query.knowledge_base_ids == ["kb-1", "kb-2"]
    assert query.filters == {"user_id": "bob", "namespace": "t"}
    assert query.agent_wide is True
    narrow = route_query("river", "knowledge_base", 5, "shared", scope, Options(agent_wide=False))
    assert isinstance(narrow, str) and "agent_wide" in narrow  # never a narrower search


def test_a_tool_search_is_owned_by_its_agent() -> None:
    scope = {"user_id": "alice", "agent_id": "agent-1"}
    query = routed(route_query("weather", "toolbox", 25, None, scope, WIDE))
    assert (query.memory_id, query.filters, query.agent_wide) == (
        "agent-1", {"user_id": "alice"}, True,
    )  # fmt: skip
    assert isinstance(route_query("weather", "toolbox", 25, "shared", {"user_id": "a"}, WIDE), str)


@pytest.mark.parametrize(
    ("text", "store", "limit", "memory_id", "scope", "why"),
    [
        ({"memory_id": "shared"}, "conversation_memory", 5, "shared", {}, "dict"),
        ("q", "conversation_memory", 5, None, {}, "memory_id"),
        ("q", "conversation_memory", 5, "shared", {"user_id": None}, "without a user"),
        ("q", "conversation_memory", 101, "shared", {}, "limit"),
        ("q", "conversation_memory", 5, "shared", {"statuses": ["active"]}, "statuses"),
        ("q", "entity_memory", 5, "shared", {"thread_id": "t"}, "thread_id"),
        ("q", "summaries", 5, "shared", {}, "summaries"),
        ("q", "semantic_cache", 5, "shared", {}, "semantic_cache"),
        ("   ", "conversation_memory", 5, "shared", {}, "blank"),
    ],
)
def test_what_recallq_cannot_scope_exactly_passes_through(
    text: Any, store: str, limit: int, memory_id: str | None, scope: dict[str, Any], why: str
) -> None:
    reason = route_query(text, store, limit, memory_id, scope, WIDE)
    assert isinstance(reason, str) and why in reason


def test_skills_are_owned_by_their_agent_and_filter_one_status_where_served() -> None:
    assert isinstance(route_skills("q", 3, ["active"], "agent-1", "alice", WIDE), str)
    with_status = Options(scope_fields=DEFAULT_SCOPE_FIELDS | {"status"}, agent_wide=True)
    query = routed(route_skills("q", 3, ["active"], "agent-1", "alice", with_status))
    assert (query.memory_id, query.filters, query.agent_wide) == (
        "agent-1", {"user_id": "alice", "status": "active"}, True,
    )  # fmt: skip
    assert isinstance(route_skills("q", 3, ["a", "b"], "agent-1", "alice", with_status), str)
    assert isinstance(route_skills("q", 3, [], None, "alice", with_status), str)


def test_a_batch_is_one_request_per_owner_field() -> None:
    stores = ["conversation_memory", "knowledge_base", "entity_memory", "workflow_memory",
              "toolbox", "summaries", "skillbox"]  # fmt: skip
    owners = {"memory_id": "shared", "agent_id": "agent-1", "user_id": "alice"}
    routes, skipped = route_batch("q", stores, dict.fromkeys(stores, 3), owners, "alice",
                                  ["kb-1"], WIDE)  # fmt: skip
    assert skipped == {}
    by_owner = {r.query.memory_id: r.query for r in routes}
    assert set(by_owner) == {"shared", "agent-1", "alice"}
    shared, agent, user = by_owner["shared"], by_owner["agent-1"], by_owner["alice"]
    assert set(shared.limits) == {"conversation_memory", "knowledge_base", "entity_memory"}
    assert shared.knowledge_base_ids == ["kb-1"] and shared.agent_wide is True
    assert set(agent.limits) == {"workflow_memory", "toolbox", "skillbox"}
    assert agent.filters == {"user_id": "alice"} and agent.knowledge_base_ids is None
    assert set(user.limits) == {"summaries"} and user.filters is None  # user_id is the owner
    _, missing = route_batch("q", ["toolbox"], {"toolbox": 3}, {"memory_id": "m"}, None, None,
                             WIDE)  # fmt: skip
    assert "agent_id" in missing["toolbox"]


class Collection:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows, self.finds = rows, 0

    def find(self, selector: dict[str, Any], projection: dict[str, int] | None) -> list[Any]:
        self.finds += 1
        wanted = selector["_id"]["$in"]
        found = [dict(r) for r in self.rows if r["_id"] in wanted]
        for row in found:
            for field, keep in (projection or {}).items():
                if not keep:
                    row.pop(field, None)
        return found


class MemorizzLike:
    """Records what reaches it; answers like memorizz's MongoDB provider would."""

    def __init__(self, rows: dict[str, list[dict[str, Any]]]) -> None:
        self.db = {name: Collection(found) for name, found in rows.items()}
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.label = "memorizz"
        self.closed = False

    def retrieve_by_query(
        self, query: Any, memory_store_type: Any = None, limit: int = 1,
        include_embedding: bool = False, memory_id: Any = None, memory_type: Any = None,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:  # fmt: skip
        given = {"memory_store_type": memory_store_type, "limit": limit, "memory_id": memory_id,
                 "memory_type": memory_type, "include_embedding": include_embedding}  # fmt: skip
        self.calls.append(("retrieve_by_query", (query,), {**given, **kwargs}))
        return [{"_id": "own", "content": "the provider's own answer"}]

    def list_all(self, memory_store_type: Any) -> list[dict[str, Any]]:
        self.calls.append(("list_all", (memory_store_type,), {}))
        return []

    def close(self) -> None:
        self.closed = True


class Answering:
    """A BlockingClient stand-in: the replies (or errors) each test gives, in order."""

    def __init__(self, *replies: RetrievalResponse | RetrievalError) -> None:
        self.replies = list(replies)
        self.sent: list[Query] = []
        self.closed = False

    def retrieve(self, query: Query, *, timeout: float | None = None) -> RetrievalResponse:
        self.sent.append(query)
        reply = self.replies.pop(0)
        if isinstance(reply, RetrievalError):
            raise reply
        return reply

    def retrieve_many(
        self, queries: Sequence[Query], *, timeout: float | None = None
    ) -> list[RetrievalResponse | RetrievalError]:
        self.sent.extend(queries)
        return [self.replies.pop(0) for _ in queries]

    def close(self) -> None:
        self.closed = True


def hit(row_id: str, score: float, memory_type: str = "conversation_memory") -> MemoryHit:
    return MemoryHit(id=row_id, memory_type=memory_type, content="-", score=score, signal=score)


def ok(**results: list[MemoryHit]) -> RetrievalResponse:
    return RetrievalResponse(request_id="r", status="ok", results=results)


def failed(code: ErrorCode, retryable: bool) -> RetrievalResponse:
    error = ErrorInfo(code=code, message="no", retryable=retryable)
    return RetrievalResponse(request_id="r", status="error", error=error)


OID = ObjectId()
ROWS = {
    "conversation_memory": [
        {"_id": OID, "content": {"role": "user", "content": "hi"}, "embedding": [0.1]},
        {"_id": "turn-2", "content": "second", "thread_id": "t-1", "embedding": [0.2]},
    ],
    "knowledge_base": [{"_id": "kb-row", "content": "river", "embedding": [0.3]}],
}


def wrap(client: Answering, **options: Any) -> tuple[RecallqProvider, MemorizzLike]:
    inner = MemorizzLike(ROWS)
    return RecallqProvider(inner, client=client, **options), inner  # type: ignore[arg-type]


def conversation_search(provider: Any, **extra: Any) -> Any:
    return provider.retrieve_by_query(
        query="hello", memory_type="conversation_memory", memory_id="shared", limit=2,
        user_id="alice", **extra,
    )  # fmt: skip


def test_hits_come_back_as_memorizz_rows_in_recallq_order_with_its_score() -> None:
    client = Answering(ok(conversation_memory=[hit("turn-2", 0.5), hit(str(OID), 0.1)]))
    provider, inner = wrap(client)
    rows = conversation_search(provider)
    assert [row["_id"] for row in rows] == ["turn-2", OID]  # stored ids, recallq's order
    assert rows[0] == {"_id": "turn-2", "content": "second", "thread_id": "t-1", "score": 0.75}
    assert rows[1]["score"] == pytest.approx(0.55)  # (1 + cos) / 2, Atlas' vectorSearchScore
    assert inner.db["conversation_memory"].finds == 1 and inner.calls == []
    client.replies.append(ok(conversation_memory=[hit("turn-2", 0.5)]))
    assert conversation_search(provider, include_embedding=True)[0]["embedding"] == [0.2]
    assert provider.recallq_stats.as_dict() == {
        "requests": 2, "served": 2, "fallbacks": 0, "passed_through": 0, "refused": 0,
    }  # fmt: skip


@pytest.mark.parametrize(
    "failure",
    [
        RetrievalTimeout("no reply"),
        RetrievalOverloaded("queue full"),
        RetrievalUnavailable("down"),
        failed(ErrorCode.OVERLOADED, retryable=True),
        failed(ErrorCode.STORE_UNAVAILABLE, retryable=True),
    ],
)
def test_recallq_failing_in_time_falls_back_to_the_wrapped_provider_or_raises(
    failure: RetrievalResponse | RetrievalError,
) -> None:
    provider, inner = wrap(Answering(failure))
    assert conversation_search(provider) == [{"_id": "own", "content": "the provider's own answer"}]
    assert inner.calls[0][2]["user_id"] == "alice" and inner.calls[0][2]["limit"] == 2
    assert provider.recallq_stats.fallbacks == 1 and provider.recallq_stats.served == 0
    strict, inner = wrap(Answering(failure), fallback=False)
    with pytest.raises(RetrievalError):
        conversation_search(strict)
    assert inner.calls == [] and strict.recallq_stats.refused == 1


def test_a_request_recallq_refuses_raises_rather_than_hiding_the_misconfiguration() -> None:
    provider, inner = wrap(Answering(failed(ErrorCode.FORBIDDEN, retryable=False)))
    with pytest.raises(RecallqReplyError) as raised:
        conversation_search(provider)
    assert raised.value.code is ErrorCode.FORBIDDEN and inner.calls == []


def test_what_recallq_does_not_serve_reaches_the_wrapped_provider_untouched() -> None:
    client = Answering()
    provider, inner = wrap(client)
    selector = {"memory_id": "shared"}
    provider.retrieve_by_query(selector, memory_type="conversation_memory", limit=3, user_id=None)
    provider.retrieve_by_query("hello", "summaries", 2, memory_id="shared")
    assert provider.list_all("toolbox") == []
    assert inner.calls[0][1][0] is selector and inner.calls[0][2]["user_id"] is None
    assert inner.calls[1][2]["memory_store_type"] == "summaries" and inner.calls[1][2]["limit"] == 2
    assert inner.calls[2] == ("list_all", ("toolbox",), {})
    assert client.sent == [] and provider.recallq_stats.passed_through == 2


def test_memorizz_sees_the_wrapped_provider_through_the_wrapper() -> None:
    provider, inner = wrap(Answering())
    assert isinstance(provider, MemorizzLike) and isinstance(provider, RecallqProvider)
    assert provider.__class__.__name__ == "MemorizzLike" and provider.wrapped is inner
    assert provider.label == "memorizz" and "list_all" in dir(provider)
    provider.label = "set by memorizz"  # e.g. its memory-history instrumentation
    assert inner.label == "set by memorizz"
    parameters = inspect.signature(provider.retrieve_by_query).parameters
    assert {"knowledge_base_ids", "include_embedding"} <= set(parameters)  # _callable_accepts
    status = provider.get_vector_search_status("entity_memory")
    assert status["available"] is True
    with pytest.raises(AttributeError):
        _ = provider.no_such_attribute
    provider.close()
    assert inner.closed and provider.recallq.closed


def test_all_memory_types_in_one_round_trip_by_owner_field() -> None:
    client = Answering(
        ok(conversation_memory=[hit("turn-2", 0.4)], knowledge_base=[hit("kb-row", 0.2)]),
        RetrievalTimeout("the agent_id request got no reply"),
    )
    provider, inner = wrap(client)
    found = provider.retrieve_all_memory_types(
        "hello", memory_types=["conversation_memory", "knowledge_base", "toolbox"], limit=2,
        memory_id="shared", user_id="alice", agent_id="agent-1",
    )  # fmt: skip
    assert [q.memory_id for q in client.sent] == ["shared", "agent-1"]
    assert [row["_id"] for row in found["conversation_memory"]] == ["turn-2"]
    assert [row["_id"] for row in found["knowledge_base"]] == ["kb-row"]
    assert found["toolbox"] == [{"_id": "own", "content": "the provider's own answer"}]
    assert inner.calls[0][2]["memory_type"] == "toolbox"  # the fallback of that one request
    stats = provider.recallq_stats
    assert (stats.requests, stats.served, stats.fallbacks) == (1, 2, 1)


def test_the_ranking_setting_shapes_the_request() -> None:
    def shaped(ranking: Any) -> tuple[Any, ...]:
        query = routed(route_query("q", "entity_memory", 3, "m", {}, Options(ranking=ranking)))
        return query.search, query.weights, query.ranking

    assert shaped("vector") == ("vector", RELEVANCE_ONLY, None)  # memorizz's top k by cosine
    assert shaped("memorizz") == ("vector", None, "memorizz")  # memorizz's retrieval score
    assert shaped("signal") == (None, None, None)  # the worker's defaults
