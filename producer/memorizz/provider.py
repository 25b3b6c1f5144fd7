"""RecallqProvider: a memorizz agent's semantic retrievals through recallq, in one line.

    provider = RecallqProvider(MongoDBProvider(config), amqp_url="amqp://...")

The wrapper answers the semantic searches a MemAgent makes (`retrieve_by_query` with a
text query, `search_memory`, `retrieve_skillbox_candidates`) with recallq requests over
RabbitMQ, and returns what memorizz's MongoDB provider returns: the rows themselves,
read back from its database, with its `score`. Everything else passes to the wrapped
provider untouched (see delegate.py). When recallq cannot answer in time (unreachable,
overloaded, no reply within `timeout_s`) the call falls back to the wrapped provider's
own retrieval, logged and counted, or raises with `fallback=False`. memorizz itself is
never imported: its objects come in as the caller's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from functools import partial
from typing import Any

import structlog

from producer.blocking import BlockingClient
from producer.client import RetrievalError
from producer.memorizz.delegate import Delegating
from producer.memorizz.documents import as_documents, read_rows
from producer.memorizz.routes import (
    DEFAULT_SCOPE_FIELDS,
    SCOPED_BY_QUERY,
    Options,
    Ranking,
    Route,
    agent_wide_supported,
    route_batch,
    route_query,
    route_skills,
    store_name,
)
from schemas.messages import ErrorCode, MemoryHit, RetrievalResponse
from schemas.settings import BrokerSettings

log = structlog.get_logger(__name__)
_NOT_GIVEN: Any = object()  # an argument the caller left out: left out when passed on


class RecallqReplyError(RetrievalError):
    """recallq answered with an error: `code`, and whether a retry may succeed."""

    def __init__(self, code: ErrorCode, message: str, retryable: bool) -> None:
        super().__init__(f"recallq {code}: {message}")
        self.code = code
        self.retryable = retryable


@dataclass
class RecallqStats:
    """What the wrapper did with the retrievals it was asked for."""

    requests: int = 0  # recallq requests answered `ok`
    served: int = 0  # retrievals answered by recallq
    fallbacks: int = 0  # retrievals recallq could not answer, answered by the wrapped provider
    passed_through: int = 0  # retrievals recallq has no equivalent for
    refused: int = 0  # retrievals that raised (a non-retryable reply, or fallback=False)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class RecallqProvider(Delegating):
    """A memorizz memory provider whose semantic retrievals recallq answers."""

    def __init__(
        self,
        provider: Any,
        amqp_url: str | None = None,
        *,
        broker: BrokerSettings | None = None,
        timeout_s: float = 5.0,
        connect_wait_s: float = 2.0,
        fallback: bool = True,
        ranking: Ranking = "vector",
        scope_fields: frozenset[str] = DEFAULT_SCOPE_FIELDS,
        client: BlockingClient | None = None,
    ) -> None:
        """`provider`: memorizz's MongoDBProvider (its `db` is where rows are read back);
        `broker`: RECALLQ_* settings (queue prefix, topology), `amqp_url` replacing its
        URL; `timeout_s`: each call's wait for recallq; `ranking`: see routes.Options."""
        super().__init__(provider)
        if not callable(getattr(provider, "retrieve_by_query", None)):
            raise TypeError("RecallqProvider wraps a memorizz memory provider")
        broker = broker or BrokerSettings()
        if amqp_url is not None:
            broker = broker.model_copy(update={"amqp_url": amqp_url})
        own = {
            "recallq": client or BlockingClient(
                broker, timeout=timeout_s, connect_wait_s=connect_wait_s),
            "recallq_stats": RecallqStats(),
            "recallq_options": Options(ranking, frozenset(scope_fields), agent_wide_supported()),
            "recallq_timeout_s": timeout_s,
            "recallq_fallback": fallback,
            "_recallq_lock": threading.Lock(),
            "_recallq_reasons": set(),
        }  # fmt: skip
        for name, value in own.items():
            object.__setattr__(self, name, value)

    @property
    def wrapped(self) -> Any:
        """The memorizz provider underneath."""
        return self._wrapped

    def retrieve_by_query(
        self,
        query: Any,
        memory_store_type: Any = _NOT_GIVEN,
        limit: Any = _NOT_GIVEN,
        include_embedding: Any = _NOT_GIVEN,
        memory_id: Any = _NOT_GIVEN,
        memory_type: Any = _NOT_GIVEN,
        knowledge_base_ids: Any = _NOT_GIVEN,
        **kwargs: Any,
    ) -> Any:
        """memorizz's retrieve_by_query: a text search recallq can scope exactly goes to
        recallq; anything else to the wrapped provider with the arguments as given."""
        given = {
            name: value
            for name, value in (
                ("memory_store_type", memory_store_type), ("limit", limit),
                ("include_embedding", include_embedding), ("memory_id", memory_id),
                ("memory_type", memory_type), ("knowledge_base_ids", knowledge_base_ids),
            )
            if value is not _NOT_GIVEN
        }  # fmt: skip
        own = partial(self._wrapped.retrieve_by_query, query, **given, **kwargs)
        store = store_name(memory_type if memory_type is not _NOT_GIVEN else memory_store_type)
        scope = {**kwargs, **({} if knowledge_base_ids is _NOT_GIVEN else
                              {"knowledge_base_ids": knowledge_base_ids})}  # fmt: skip
        route = route_query(query, store, 1 if limit is _NOT_GIVEN else limit,
                            None if memory_id is _NOT_GIVEN else memory_id, scope,
                            self.recallq_options)  # fmt: skip
        return self._answer(route, own, include_embedding is True)

    def search_memory(
        self,
        query: Any,
        memory_store_type: Any,
        *,
        limit: int = 10,
        memory_id: str | None = None,
        **scope: Any,
    ) -> list[dict[str, Any]]:
        """memorizz's one ranked list of a store, each row with `source_id`, from this
        wrapper's retrieve_by_query (the wrapped provider's would bypass recallq)."""
        found = self.retrieve_by_query(
            query, memory_store_type=memory_store_type, limit=max(1, int(limit)),
            memory_id=memory_id, **scope,
        )  # fmt: skip
        rows = [found] if isinstance(found, dict) else list(found or [])
        documents = []
        for row in rows:
            if isinstance(row, dict):
                key = row.get("source_id") or row.get("_id") or row.get("id")
                documents.append({**row} if key is None else {"source_id": str(key), **row})
        return documents

    def retrieve_skillbox_candidates(
        self,
        query: str,
        *,
        limit: int,
        statuses: list[str],
        agent_id: str | None,
        user_id: str | None,
    ) -> Any:
        """Learned skills of one agent by similarity, lifecycle and tenant filters applied
        before the top k (memorizz's provider hook)."""
        own = partial(self._wrapped.retrieve_skillbox_candidates, query, limit=limit,
                      statuses=statuses, agent_id=agent_id, user_id=user_id)  # fmt: skip
        route = route_skills(query, limit, statuses, agent_id, user_id, self.recallq_options)
        return self._answer(route, own, False)

    def get_vector_search_status(self, memory_store_type: Any, **kwargs: Any) -> Any:
        """recallq serves vector search on the stores it answers, whatever the wrapped
        database's own indexes (memorizz skips a semantic search it thinks unavailable)."""
        if store_name(memory_store_type) in {*SCOPED_BY_QUERY, "skillbox"}:
            return {"available": True, "queryable": True, "status": "READY", "reason": None}
        return self._wrapped.get_vector_search_status(memory_store_type, **kwargs)

    def query_observability_records(self, *args: Any, **kwargs: Any) -> Any:
        """Forwarded explicitly: memorizz looks this one up on the provider's class."""
        return self._wrapped.query_observability_records(*args, **kwargs)

    def close(self) -> None:
        """Close the recallq connection, then the wrapped provider."""
        self.recallq.close()
        self._wrapped.close()

    def retrieve_all_memory_types(
        self,
        query: str,
        memory_types: Sequence[Any],
        limit: int | Mapping[str, int] = 5,
        memory_id: str | None = None,
        user_id: str | None = None,
        *,
        agent_id: str | None = None,
        knowledge_base_ids: Sequence[str] | None = None,
        include_embedding: bool = False,
    ) -> dict[str, list[dict[str, Any]]]:
        """One query over several memory types in one round trip: one request per owner
        field (memory_id: turns, entities, knowledge; agent_id: workflows, tools, skills;
        user_id: summaries, scratch notes), all in flight together, each filtered by
        `user_id` where that is not the owner. {memory type: rows}, each list shaped as
        retrieve_by_query returns it; a type recallq cannot serve (or whose request
        failed, with fallback) is the wrapped provider's own retrieve_by_query."""
        names = [str(getattr(t, "value", t)).lower() for t in memory_types]
        limits = {n: limit if isinstance(limit, int) else limit[n] for n in names}
        owners = {"memory_id": memory_id, "agent_id": agent_id, "user_id": user_id}
        routes, skipped = route_batch(query, names, limits, owners, user_id,
                                      knowledge_base_ids, self.recallq_options)  # fmt: skip
        own = {n: partial(self._own_search, query, n, limits[n], memory_id, user_id,
                          knowledge_base_ids) for n in names}  # fmt: skip
        results = self._batch(routes, include_embedding, own)
        for name, reason in skipped.items():
            self._passed_through(reason)
            results[name] = own[name]()
        return {name: results.get(name, []) for name in names}

    def _answer(self, route: Route | str, own: Callable[[], Any], embeddings: bool) -> Any:
        """recallq's documents for one route, or the wrapped provider's own answer."""
        if isinstance(route, str):
            self._passed_through(route)
            return own()
        try:
            response = self.recallq.retrieve(route.query, timeout=self.recallq_timeout_s)
            hits = self._hits(response)
        except RetrievalError as exc:
            return self._failed(exc, own)
        return self._documents(hits, embeddings).get(route.stores[0], [])

    def _batch(
        self,
        routes: list[Route],
        embeddings: bool,
        own: Mapping[str, Callable[[], list[dict[str, Any]]]],
    ) -> dict[str, list[dict[str, Any]]]:
        """Every route's request at once; each failed one's types from `own`, with fallback."""
        if not routes:
            return {}
        queries = [route.query for route in routes]
        try:
            replies = self.recallq.retrieve_many(queries, timeout=self.recallq_timeout_s)
        except RetrievalError as exc:  # no connection: every request failed alike
            replies = [exc] * len(queries)
        hits: dict[str, list[MemoryHit]] = {}
        failed: dict[str, RetrievalError] = {}
        for route, reply in zip(routes, replies, strict=True):
            try:
                hits.update(self._hits(reply))
            except RetrievalError as error:
                failed.update(dict.fromkeys(route.stores, error))
        results = self._documents(hits, embeddings) if hits else {}
        for name, failure in failed.items():
            results[name] = self._failed(failure, own[name])
        return results

    def _hits(self, response: RetrievalResponse | RetrievalError) -> dict[str, list[MemoryHit]]:
        """A reply's hits by memory type, or the RetrievalError it stands for."""
        if isinstance(response, RetrievalError):
            raise response
        if response.status != "ok" or response.error is not None:
            error = response.error
            if error is None:
                raise RecallqReplyError(ErrorCode.INTERNAL, "error without details", True)
            raise RecallqReplyError(error.code, error.message, error.retryable)
        self._count("requests")
        return dict(response.results)

    def _documents(
        self, hits: Mapping[str, list[MemoryHit]], embeddings: bool
    ) -> dict[str, list[dict[str, Any]]]:
        rows = read_rows(self._wrapped.db, hits, embeddings)
        self._count("served", len(hits))
        return {store: as_documents(store, found, rows) for store, found in hits.items()}

    def _failed(self, exc: RetrievalError, own: Callable[[], Any]) -> Any:
        """A retryable failure falls back (if configured); anything else raises."""
        if not (self.recallq_fallback and exc.retryable):
            self._count("refused")
            log.error("recallq retrieval failed", error=str(exc), fallback=self.recallq_fallback)
            raise exc
        self._count("fallbacks")
        log.warning("recallq unavailable: the wrapped provider answers", error=str(exc),
                    error_type=type(exc).__name__)  # fmt: skip
        return own()

    def _own_search(
        self, query: str, name: str, limit: int, owner: str | None, user_id: str | None,
        attached: Sequence[str] | None,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """The wrapped provider's search of one memory type, as a list."""
        scope: dict[str, Any] = {} if user_id is None else {"user_id": user_id}
        if attached and store_name(name) == "knowledge_base":
            scope["knowledge_base_ids"] = list(attached)
        found = self._wrapped.retrieve_by_query(
            query, memory_type=store_name(name), limit=limit, memory_id=owner, **scope
        )
        return [found] if isinstance(found, dict) else list(found or [])

    def _passed_through(self, reason: str) -> None:
        """Counted each time; logged once per reason (a turn makes several)."""
        self._count("passed_through")
        with self._recallq_lock:
            first = reason not in self._recallq_reasons
            self._recallq_reasons.add(reason)
        if first:
            log.info("recallq passes these retrievals to the wrapped provider", reason=reason)

    def _count(self, name: str, amount: int = 1) -> None:
        with self._recallq_lock:
            setattr(self.recallq_stats, name, getattr(self.recallq_stats, name) + amount)
