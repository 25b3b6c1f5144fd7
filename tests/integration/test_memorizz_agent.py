"""A real memorizz agent retrieving through recallq with one line.

memorizz 0.17.16's own MemAgent (a canned stand-in for its LLM, HuggingFace embeddings
from the bundled model, SecantusDB holding its database) holds a conversation with two
users over knowledge bases attached to it (one agent-wide, one private to each user):
once on its own MongoDBProvider, once on `RecallqProvider(MongoDBProvider(config))`
against a real worker (memorizz profile, the same database, exact search). Every
semantic retrieval the wrapped agent makes is answered by the worker and returns the
rows an oracle selects with memorizz's own scope rules, best first by cosine; writes
pass through untouched. Then the broker goes away mid-conversation (a TCP forwarder in
front of the machine's RabbitMQ is stopped: the broker itself runs on) and the turn
completes through the wrapped provider within the timeout.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import wait
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from pymongo import MongoClient

from producer.memorizz import RecallqProvider
from schemas.settings import BrokerSettings
from tests.integration.conftest import mongo_settings, running_worker
from tests.integration.secantus import RestartableSecantus
from tests.integration.tcp_proxy import TcpProxy
from tests.mql import matches
from worker.embedding.backends import bundled_model_path
from worker.embedding.embedder import Embedder
from worker.settings import WorkerSettings
from worker.store import open_mongo

memorizz = pytest.importorskip("memorizz")
from memorizz.embeddings import configure_embeddings  # noqa: E402
from memorizz.enums.memory_type import MemoryType  # noqa: E402
from memorizz.long_term.procedural.toolbox.toolbox import Toolbox  # noqa: E402
from memorizz.long_term.semantic.entity_memory.entity_memory import EntityMemory  # noqa: E402
from memorizz.long_term.semantic.knowledge_base import KnowledgeBase  # noqa: E402
from memorizz.memagent import MemAgent  # noqa: E402
from memorizz.memory_provider.mongodb.provider import (  # noqa: E402
    MongoDBConfig,
    MongoDBProvider,
    _mongo_user_id_predicate,
)

SCRIPT = [
    ("alice", "I am allergic to peanuts and I like window seats."),
    ("bob", "I am vegetarian and I prefer aisle seats."),
    ("alice", "Which bridge crosses the river in Porto?"),
    ("bob", "How do I get around Lisbon's hills?"),
    ("alice", "What did I tell you about food, and how long is the train to Lisbon?"),
    ("bob", "Remind me which seat I like, and can I walk across the bridges?"),
]
CORPUS = {
    "alice": "Porto sits on the Douro river. The Dom Luis bridge joins Porto and Gaia. "
    "Port wine ages in the cellars of Gaia.",
    "bob": "Lisbon is built on seven hills. Tram 28 climbs through Alfama. The April 25th "
    "bridge crosses the Tagus.",
    None: "Trains between Porto and Lisbon take three hours. River ferries stop at night. "
    "Bridges in both cities are free to walk across.",
}
ENTITIES = {"alice": ("Porto", "city", "her sister lives there"),
            "bob": ("Lisbon", "city", "his brother lives there")}  # fmt: skip
SEMANTIC = {"conversation_memory", "knowledge_base", "entity_memory", "toolbox"}
TIMEOUT_S = 2.0


class CannedLLM:
    """memorizz's model: answers every turn with a short canned line, keeps the prompts."""

    model = "canned"
    client = None

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def generate(self, messages: list[dict[str, Any]], *args: Any, **kwargs: Any) -> str:
        self.prompts.append("\n".join(str(m.get("content", "")) for m in messages))
        return f"Noted, reply {len(self.prompts)}."  # no two stored replies alike

    def generate_text(self, prompt: str, instructions: str | None = None) -> str:
        return "Noted."

    def get_tool_metadata(self, func: Any) -> dict[str, Any]:
        return {"name": func.__name__, "description": func.__doc__}

    def augment_docstring(self, docstring: str) -> str:
        return docstring

    def generate_queries(self, docstring: str) -> list[str]:
        return [docstring]

    def get_config(self) -> dict[str, Any]:
        return {"provider": "canned", "model": "canned"}

    def get_last_usage(self) -> None:
        return None

    def get_context_window_tokens(self) -> int:
        return 16_000


@dataclass
class Call:
    """One semantic retrieval the agent made: its arguments, what came back, how long it
    took, and the collection's rows at that moment (no write was in flight)."""

    text: str
    store: str
    limit: int
    memory_id: str | None
    scope: dict[str, Any]
    result: list[dict[str, Any]]
    seconds: float
    fell_back: bool
    rows: list[dict[str, Any]]
    embeddings: bool  # asked for the rows' embeddings too
    raised: Exception | None  # what the call raised instead of returning


class Recording(RecallqProvider):
    """The wrapper, recording each text retrieval the agent asks of it."""

    def __init__(self, provider: Any, **options: Any) -> None:
        super().__init__(provider, **options)
        object.__setattr__(self, "calls", [])

    def retrieve_by_query(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        started, fallbacks = time.monotonic(), self.recallq_stats.fallbacks
        kind = kwargs.get("memory_type") or kwargs.get("memory_store_type")
        store = str(getattr(kind, "value", kind))
        if not (isinstance(query, str) and store in SEMANTIC):
            return super().retrieve_by_query(query, *args, **kwargs)
        result: list[dict[str, Any]] = []
        raised: Exception | None = None
        try:  # what the wrapped provider raises (memorizz catches it) is an answer too
            result = list(super().retrieve_by_query(query, *args, **kwargs) or [])
        except Exception as exc:
            raised = exc
        shape = ("memory_type", "memory_store_type", "limit", "memory_id", "include_embedding")
        scope = {k: v for k, v in kwargs.items() if k not in shape}
        rows = list(self.wrapped.db[store].find({}))
        self.calls.append(Call(query, store, kwargs["limit"], kwargs.get("memory_id"), scope,
                               result, time.monotonic() - started,
                               self.recallq_stats.fallbacks > fallbacks, rows,
                               kwargs.get("include_embedding") is True, raised))  # fmt: skip
        if raised is not None:
            raise raised
        return result


@pytest.fixture(scope="module")
def embeddings() -> Any:
    """memorizz embeds with its HuggingFace provider over recallq's bundled model."""
    return configure_embeddings(
        "huggingface", {"model": bundled_model_path(), "local_files_only": True}
    )


def get_weather(city: str) -> str:
    """Get the weather forecast for a city."""
    return "sunny"


@dataclass
class Memory:
    """A memorizz database as memorizz writes it before the conversation: three
    knowledge bases, each user's entities, one agent-wide tool; and its provider."""

    database: str
    provider: Any
    knowledge: dict[str | None, str]  # user (None: agent-wide) -> knowledge_base_id


@pytest.fixture
def memory(secantus: RestartableSecantus, embeddings: Any) -> Iterator[Memory]:
    database = f"memorizz_agent_{uuid.uuid4().hex[:8]}"
    config = MongoDBConfig(secantus.uri, db_name=database, lazy_vector_indexes=True,
                           embedding_provider=embeddings)  # fmt: skip
    provider = MongoDBProvider(config)
    knowledge = {
        user: KnowledgeBase(provider).ingest_knowledge(
            text, namespace="travel", chunking_strategy="sentence", chunk_size=60, user_id=user
        )
        for user, text in CORPUS.items()
    }
    for user, (name, kind, note) in ENTITIES.items():
        EntityMemory(provider).upsert_entity(name=name, entity_type=kind, memory_id="shared",
            user_id=user, attributes=[{"name": "note", "value": note}])  # fmt: skip
    Toolbox(provider, llm_provider=CannedLLM(), agent_id="agent-1").register_tool(
        get_weather, augment=True
    )
    yield Memory(database, provider, knowledge)
    MongoClient(secantus.uri).drop_database(database)


def agent_on(provider: Any, memory: Memory, llm: CannedLLM, agent_id: str = "agent-1") -> Any:
    agent = MemAgent(
        model=llm, memory_provider=provider, agent_id=agent_id, memory_ids=["shared"],
        memory_types=[MemoryType.CONVERSATION_MEMORY, MemoryType.KNOWLEDGE_BASE,
                      MemoryType.ENTITY_MEMORY],
    )  # fmt: skip
    agent.knowledge_base_ids = list(memory.knowledge.values())
    return agent


def turn(agent: Any, memory_id: str, user: str, text: str) -> str:
    """One turn, then memorizz's background work of it (turn embeddings, recall
    bookkeeping) finished, so the next turn's retrievals see a settled database."""
    answer = agent.run(text, memory_id=memory_id, user_id=user, thread_id=f"thread-{user}")
    wait(list(agent._embedding_backfill_futures), timeout=60)  # memorizz 0.17.16's own set
    agent.wait_for_memory_upkeep(timeout=60)
    return str(answer)


async def converse(
    agent: Any, script: list[tuple[str, str]], memory_id: str = "shared"
) -> list[str]:
    """The agent runs on its own thread: the worker shares this test's event loop."""
    return [await asyncio.to_thread(turn, agent, memory_id, user, text) for user, text in script]


def wrapped_provider(memory: Memory, broker: BrokerSettings, **options: Any) -> Recording:
    return Recording(memory.provider, broker=broker, timeout_s=TIMEOUT_S, **options)


@pytest.fixture
async def worker_on(
    settings: WorkerSettings, secantus: RestartableSecantus, embedder: Embedder, memory: Memory
) -> AsyncIterator[Any]:
    """A worker serving memorizz's database as memorizz writes it (exact search)."""
    mongo = mongo_settings(secantus.uri, store_profile="memorizz", mongo_search="exact")
    mongo = mongo.model_copy(update={"mongo_database": memory.database,
        "amqp_url": settings.amqp_url, "queue_prefix": settings.queue_prefix})  # fmt: skip
    store = open_mongo(mongo, embedder.dimensions)
    await store.connect()
    try:
        async with running_worker(mongo, embedder, store) as worker:
            yield worker
    finally:
        await store.close()


def memorizz_selector(call: Call) -> dict[str, Any]:
    """memorizz's own filter for this retrieval, as its MongoDB provider builds it."""
    if call.store == "knowledge_base":
        kwargs = {"memory_id": call.memory_id, **call.scope}
        return dict(MongoDBProvider._knowledge_base_search_filter(kwargs))
    if call.store == "toolbox":  # what memorizz's Toolbox keeps: the agent's tools
        owner = {"agent_id": call.scope["agent_id"]}
        return {**owner, **_mongo_user_id_predicate(call.scope["user_id"], call.store)}
    selector: dict[str, Any] = {"memory_id": call.memory_id}
    selector.update(_mongo_user_id_predicate(call.scope["user_id"], call.store))
    if call.scope.get("thread_id") is not None:
        selector["thread_id"] = str(call.scope["thread_id"])
    return selector


async def ranked(call: Call, embedder: Embedder) -> list[tuple[str, float]]:
    """(id, cosine) of every embedded row memorizz's filter selects, best first."""
    rows = [r for r in call.rows if r.get("embedding") and matches(r, memorizz_selector(call))]
    if not rows:
        return []
    query = (await embedder.embed([call.text.strip()]))[0].astype(np.float64)
    matrix = np.asarray([r["embedding"] for r in rows], dtype=np.float64)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    cosines = matrix @ (query / np.linalg.norm(query))
    return sorted(((str(r["_id"]), float(c)) for r, c in zip(rows, cosines, strict=True)),
                  key=lambda pair: -pair[1])  # fmt: skip


async def assert_as_the_oracle(call: Call, embedder: Embedder) -> None:
    """The rows are memorizz's top `limit` in its scope, best first (rows whose cosines
    tie within float32 rounding may swap), each the stored row with memorizz's score."""
    oracle = await ranked(call, embedder)
    cosine = dict(oracle)
    got = [str(d["_id"]) for d in call.result]
    assert len(got) == min(call.limit, len(oracle)) and set(got) <= set(cosine), call
    hidden = set() if call.embeddings else {"embedding"}
    stored = {str(r["_id"]): {k: v for k, v in r.items() if k not in hidden} for r in call.rows}
    for rank, document in enumerate(call.result):
        found = cosine[str(document["_id"])]
        assert found == pytest.approx(oracle[rank][1], abs=1e-5), (call, rank)
        assert document["score"] == pytest.approx((1 + found) / 2, abs=1e-5)
        assert {k: v for k, v in document.items() if k != "score"} == stored[str(document["_id"])]


async def test_a_memorizz_agent_retrieves_through_recallq_as_memorizz_would(
    settings: WorkerSettings, embedder: Embedder, memory: Memory, worker_on: Any
) -> None:
    own = agent_on(memory.provider, memory, CannedLLM(), "agent-own")  # its own provider first
    await converse(own, SCRIPT[:2], memory_id="own-run")
    wrapped_llm = CannedLLM()
    provider = wrapped_provider(memory, settings)
    agent = agent_on(provider, memory, wrapped_llm)
    try:
        await converse(agent, SCRIPT)
    finally:
        provider.recallq.close()
    calls: list[Call] = provider.calls
    assert {(c.store, c.scope.get("user_id")) for c in calls} == {
        (s, u) for s in SEMANTIC for u in ("alice", "bob")
    }
    assert not [call for call in calls if call.raised is not None]
    for call in calls:
        await assert_as_the_oracle(call, embedder)
    stats = provider.recallq_stats
    assert (stats.fallbacks, stats.refused) == (0, 0)
    assert stats.served == len(calls) and stats.requests == len(calls)
    assert worker_on.stats.requests == len(calls)  # each answered by the worker
    assert_agent_wide_rows_reach_both_users_and_private_rows_their_owner(calls)
    assert_the_agent_read_what_recallq_returned(calls, wrapped_llm)
    assert_writes_passed_through(memory)


def assert_writes_passed_through(memory: Memory) -> None:
    """The wrapped agent stored the users' turns as the unwrapped one stored them."""
    said = {text for _, text in SCRIPT[:2]}
    turns: dict[str, set[tuple[Any, ...]]] = {"own-run": set(), "shared": set()}
    for row in memory.provider.db["conversation_memory"].find({"role": "user"}):
        if row["content"] in said:
            turns[row["memory_id"]].add((row["content"], row.get("user_id"), row["thread_id"]))
    assert len(turns["own-run"]) == 2 and turns["shared"] == turns["own-run"]


def assert_agent_wide_rows_reach_both_users_and_private_rows_their_owner(
    calls: list[Call],
) -> None:
    seen: dict[tuple[str, str], set[str | None]] = {}
    for call in calls:
        if call.store in ("knowledge_base", "toolbox"):
            user = call.scope["user_id"]
            owners = {d.get("user_id") for d in call.result}
            assert owners <= {user, None}, (user, owners)
            seen.setdefault((call.store, user), set()).update(owners)
    assert seen == {
        ("knowledge_base", "alice"): {"alice", None}, ("knowledge_base", "bob"): {"bob", None},
        ("toolbox", "alice"): {None}, ("toolbox", "bob"): {None},  # the agent-wide tool
    }  # fmt: skip


def assert_the_agent_read_what_recallq_returned(calls: list[Call], llm: CannedLLM) -> None:
    """memorizz put rows recallq found into the model's prompt: the shape it expects."""
    knowledge = {d["content"] for c in calls if c.store == "knowledge_base" for d in c.result}
    assert any(text in prompt for prompt in llm.prompts for text in knowledge)


async def test_the_turn_completes_through_the_wrapped_provider_when_the_broker_goes(
    settings: WorkerSettings, memory: Memory, worker_on: Any
) -> None:
    url = urlsplit(settings.amqp_url)
    proxy = TcpProxy(url.hostname or "localhost", url.port or 5672)
    through = url._replace(netloc=f"{url.username}:{url.password}@127.0.0.1:{proxy.port}")
    provider = wrapped_provider(memory, settings, amqp_url=through.geturl())
    agent = agent_on(provider, memory, CannedLLM())
    try:
        await converse(agent, SCRIPT[:1])
        answered = provider.recallq_stats.requests
        assert answered > 0 and provider.recallq_stats.fallbacks == 0
        proxy.stop()  # mid-conversation: the broker is gone for this agent
        before = len(provider.calls)
        started = time.monotonic()
        answers = await converse(agent, SCRIPT[1:2])
        elapsed = time.monotonic() - started
    finally:
        proxy.stop()
        provider.recallq.close()
    assert answers == ["Noted, reply 2."]  # the turn completed
    failed_over = provider.calls[before:]
    assert failed_over and provider.recallq_stats.fallbacks == len(failed_over)
    assert provider.recallq_stats.requests == answered == worker_on.stats.requests
    for call in failed_over:  # each answered by the wrapped provider within its timeout
        assert call.fell_back and call.seconds < TIMEOUT_S + 1.5, call
    assert elapsed < len(failed_over) * (TIMEOUT_S + 1.5) + 30  # the rest of the turn
