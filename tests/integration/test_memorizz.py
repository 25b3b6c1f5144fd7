"""A memorizz database as memorizz itself writes it (memorizz 0.17.16, its public API,
a canned stand-in for the LLM, no network), served by a worker with
RECALLQ_STORE_PROFILE=memorizz: hits equal a numpy oracle over the stored embeddings
under the same owner and scope filters, for every collection the memorizz profile maps.

Twice: memorizz embedding with its HuggingFace provider (the bundled model) and a
worker running the same model; and memorizz embedding with its OpenAI provider at an
OpenAI-compatible server (the bundled model behind the embeddings API, 256 of its
dimensions, a server that refuses `dimensions` so memorizz cuts the vectors itself)
and a worker with RECALLQ_EMBED_PROVIDER=openai at the same server."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pymongo import MongoClient

from benchmarks.openai_server import EmbeddingServer, local_model_encoder
from producer.client import Query, RetrievalClient
from schemas.messages import MemoryHit, RankWeights, RetrievalResponse
from tests.integration.conftest import mongo_settings, running_worker
from tests.integration.secantus import RestartableSecantus
from tests.mql import matches
from tests.oracle import bm25, documents
from worker.access.profiles import load_profile
from worker.embedding.backends import bundled_model_path
from worker.embedding.base import TextEmbedder
from worker.embedding.embedder import Embedder
from worker.embedding.remote import RemoteEmbedder, RemoteSpec
from worker.settings import WorkerSettings
from worker.store import open_mongo
from worker.store.mongo import MongoStore

memorizz = pytest.importorskip("memorizz")
from memorizz.embeddings import configure_embeddings  # noqa: E402
from memorizz.enums.memory_type import MemoryType  # noqa: E402
from memorizz.long_term.episodic.conversational_memory_unit import (  # noqa: E402
    ConversationMemoryUnit,
)
from memorizz.long_term.procedural.skillbox.skill import Skill  # noqa: E402
from memorizz.long_term.procedural.skillbox.skillbox import Skillbox  # noqa: E402
from memorizz.long_term.procedural.toolbox.toolbox import Toolbox  # noqa: E402
from memorizz.long_term.procedural.workflow.workflow import Workflow  # noqa: E402
from memorizz.long_term.semantic.entity_memory.entity_memory import EntityMemory  # noqa: E402
from memorizz.long_term.semantic.knowledge_base import KnowledgeBase  # noqa: E402
from memorizz.memagent.managers.memory_manager import MemoryManager  # noqa: E402
from memorizz.memory_provider.base import user_scope_matches  # noqa: E402
from memorizz.memory_provider.mongodb.provider import (  # noqa: E402
    MongoDBConfig,
    MongoDBProvider,
)

TURNS = {
    "alice": ["I am allergic to peanuts", "Book me a window seat", "My sister lives in Porto"],
    "bob": ["I prefer aisle seats", "I am vegetarian", "My brother lives in Lisbon"],
}
ENTITIES = {
    "alice": [("Porto", "city", "sister lives there"), ("Lufthansa", "airline", "window")],
    "bob": [("Lisbon", "city", "brother lives there"), ("TAP", "airline", "aisle")],
}
RELEVANCE_ONLY = RankWeights(relevance=1.0, recency=0.0, importance=0.0)
CORPUS = {
    "alice": "Porto sits on the Douro river. Its old town is a UNESCO site. Port wine ages in "
    "cellars across the river in Gaia. The Dom Luis bridge joins the two banks.",
    "bob": "Lisbon is built on seven hills. Tram 28 climbs through Alfama. Belem is known for "
    "its custard tarts. The April 25th bridge crosses the Tagus.",
}
WIDE_CORPUS = ("Trains between Porto and Lisbon take three hours. The river ferries stop at "
               "night. Bridges in both cities are free to walk across.")  # fmt: skip
WORKFLOWS = {
    "agent-1": [("book flight", "search fares, compare seats, pay"),
                ("plan dinner", "find a vegetarian restaurant and reserve")],
    "agent-2": [("renew passport", "fill the form, book an appointment")],
}  # fmt: skip


class CannedLLM:
    """memorizz's summariser and its tool augmentation ask an LLM; this one answers from
    what it is given. (Tools registered without augmentation carry no embedding until
    memorizz back-fills one: the worker skips and counts such rows.)"""

    def get_tool_metadata(self, func: Any) -> dict[str, Any]:
        return {"name": func.__name__, "description": func.__doc__}

    def augment_docstring(self, docstring: str) -> str:
        return f"{docstring} Use it when planning a trip."

    def generate_queries(self, docstring: str) -> list[str]:
        return [f"how do I {docstring.lower()}"]

    def generate(self, messages: list[dict[str, str]], *args: Any, **kwargs: Any) -> str:
        text = " ".join(m.get("content", "") for m in messages if isinstance(m, dict))
        return "Summary: " + ("peanut allergy, window seats, Porto" if "peanuts" in text
                              else "vegetarian, aisle seats, Lisbon")  # fmt: skip


def get_weather(city: str) -> str:
    """Get the weather forecast for a city."""
    return "sunny"


def convert_currency(amount: float, currency: str) -> float:
    """Convert an amount of money into another currency."""
    return amount


def find_bike_shop(city: str) -> str:
    """Find a bike repair shop near the river bridge."""
    return "open"


def book_table(city: str) -> str:
    """Book a table at a vegetarian restaurant by the river."""
    return "booked"


PRIVATE_TOOLS = {"alice": find_bike_shop, "bob": book_table}  # agent-1's, one per user


SHORTENED = 256  # the dimensions memorizz and the worker ask the OpenAI-compatible server for


@dataclass(frozen=True)
class Served:
    """How memorizz embeds (its embedding manager), the worker's embedder, and the
    oracle's query vector, computed without the worker's embedder."""

    name: str
    manager: Any
    embedder: TextEmbedder
    query: Callable[[str], Awaitable[np.ndarray]]


@pytest.fixture(scope="module", params=["huggingface", "openai"])
async def served(request: pytest.FixtureRequest, embedder: Embedder) -> AsyncIterator[Served]:
    if request.param == "huggingface":
        manager = configure_embeddings(
            "huggingface", {"model": bundled_model_path(), "local_files_only": True}
        )
        yield Served("huggingface", manager, embedder, local_query(embedder, 0))
        return
    with EmbeddingServer(local_model_encoder(), dimensions="refuse") as server:
        manager = configure_embeddings("openai", {"model": "all-minilm-l6-v2",
            "base_url": server.base_url, "dimensions": SHORTENED})  # fmt: skip
        spec = RemoteSpec(provider="openai", model="all-minilm-l6-v2", base_url=server.base_url,
                          dimensions=SHORTENED, connect_wait_s=5.0)  # fmt: skip
        remote = await RemoteEmbedder.connect(spec)
        try:
            yield Served("openai", manager, remote, local_query(embedder, SHORTENED))
        finally:
            await remote.aclose()


def local_query(embedder: Embedder, dimensions: int) -> Callable[[str], Awaitable[np.ndarray]]:
    """The bundled model's vector of a query, cut to `dimensions` and unit length again
    (as memorizz cuts a server's vectors): the oracle's, from the local model only."""

    async def query(text: str) -> np.ndarray:
        vector: np.ndarray = (await embedder.embed([text]))[0].astype(np.float64)
        if dimensions:
            vector = vector[:dimensions] / np.linalg.norm(vector[:dimensions])
        return vector

    return query


@pytest.fixture(scope="module")
def memorizz_db(secantus: RestartableSecantus, served: Served) -> Iterator[str]:
    """Two users' turns, entities, summaries and scratch notes under one memory_id, their
    knowledge bases, two agents' tools and workflows: all written by memorizz."""
    database = f"memorizz_{uuid.uuid4().hex[:8]}"
    config = MongoDBConfig(secantus.uri, db_name=database, lazy_vector_indexes=True,
                           embedding_provider=served.manager)  # fmt: skip
    provider = MongoDBProvider(config)
    now = datetime.now(UTC)
    for user, texts in TURNS.items():
        for i, text in enumerate(texts):
            turn = ConversationMemoryUnit(
                role="user", content=text, timestamp=(now - timedelta(hours=i)).isoformat(),
                memory_id="shared", thread_id=f"thread-{user}", user_id=user,
                embedding=provider.embed_text(text),
            )  # fmt: skip
            provider.store(turn.model_dump(), MemoryType.CONVERSATION_MEMORY)
        for name, kind, note in ENTITIES[user]:
            EntityMemory(provider).upsert_entity(
                name=name, entity_type=kind, memory_id="shared", user_id=user,
                attributes=[{"name": "note", "value": note}],
            )  # fmt: skip
        KNOWLEDGE[user] = KnowledgeBase(provider).ingest_knowledge(
            CORPUS[user], namespace="travel", chunking_strategy="sentence", chunk_size=60,
            user_id=user,
        )  # fmt: skip
        # another agent's fact about this user: never "shared"'s, whatever is attached
        KnowledgeBase(provider).ingest_knowledge(
            f"{user} keeps a spare bike near the river bridge", "remembered",
            chunking_strategy="none", user_id=user,
            metadata={"memory_id": "other", "agent_id": "agent-2"},
        )  # fmt: skip
        # what MemAgent.remember files in the knowledge base: the agent's memory_id kept
        KnowledgeBase(provider).ingest_knowledge(
            f"{user} always travels with a folding bike", "remembered", chunking_strategy="none",
            user_id=user, metadata={"memory_id": "shared", "agent_id": "agent-1"},
        )  # fmt: skip
        MemoryManager(provider).generate_summaries(
            model=CannedLLM(), agent_id="agent-1", memory_ids=["shared"],
            current_memory_id="shared", user_id=user, thread_id=None,
        )  # fmt: skip
        for note in (f"{user} is comparing fares", f"{user} wants a hotel near the river"):
            scratch = {"content": note, "user_id": user, "embedding": provider.embed_text(note)}
            provider.store(scratch, MemoryType.SHORT_TERM_MEMORY, memory_id="shared")
    # no user: memorizz's agent-wide knowledge (user_id null), attached and the agent's own
    KNOWLEDGE["agent-wide"] = KnowledgeBase(provider).ingest_knowledge(
        WIDE_CORPUS, namespace="travel", chunking_strategy="sentence", chunk_size=60
    )
    KnowledgeBase(provider).ingest_knowledge(
        "The river ferry to the old town leaves every hour", "remembered",
        chunking_strategy="none", metadata={"memory_id": "shared", "agent_id": "agent-1"},
    )  # fmt: skip
    legacy = KnowledgeBase(provider).ingest_knowledge(
        "Bikes ride free on the river trains", "remembered", chunking_strategy="none",
        metadata={"memory_id": "shared", "agent_id": "agent-1"},
    )  # fmt: skip
    # a row from before memorizz's user scope: no user_id field at all
    MongoClient(secantus.uri)[database]["knowledge_base"].update_many(
        {"knowledge_base_id": legacy}, {"$unset": {"user_id": ""}}
    )
    for agent, flows in WORKFLOWS.items():
        for name, description in flows:
            Workflow(name=name, description=description, memory_id="shared", agent_id=agent,
                     user_id="alice").store_workflow(provider)  # fmt: skip
    for agent, tools in {
        "agent-1": [get_weather, convert_currency],
        "agent-2": [get_weather],
    }.items():
        toolbox = Toolbox(provider, llm_provider=CannedLLM(), agent_id=agent)
        for tool in tools:
            toolbox.register_tool(tool, augment=True)
        for name, description in WORKFLOWS[agent]:
            skill = Skill(name=f"skill: {name}", description=description,
                          content=f"When asked to {name}: {description}.")  # fmt: skip
            Skillbox(provider, agent_id=agent).add_skill(skill)
    # each user's own tool and skill beside agent-1's agent-wide ones (user_id null)
    for user, tool in PRIVATE_TOOLS.items():
        Toolbox(provider, llm_provider=CannedLLM(), agent_id="agent-1").register_tool(
            tool, augment=True, user_id=user
        )
        skill = Skill(name=f"skill: {user}'s errands", description=f"{tool.__doc__}",
                      content=f"When {user} asks: {tool.__doc__}", user_id=user)  # fmt: skip
        Skillbox(provider, agent_id="agent-1").add_skill(skill)
    yield database
    MongoClient(secantus.uri).drop_database(database)


KNOWLEDGE: dict[str, str] = {}  # user (or agent-wide) -> the knowledge_base_id of its corpus


def oracle(uri: str, database: str, collection: str, scope: dict[str, str], query: np.ndarray,
           k: int) -> list[tuple[str, float]]:  # fmt: skip
    """Top k (id, cosine) by brute force over the stored embeddings of the rows in scope."""
    found = MongoClient(uri)[database][collection].find({**scope, "embedding": {"$exists": True}})
    rows: list[dict[str, Any]] = list(found)
    assert rows, f"memorizz wrote no embedded {collection} rows for {scope}"
    matrix = np.asarray([row["embedding"] for row in rows], dtype=np.float64)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    cosines = matrix @ (query / np.linalg.norm(query))
    order = np.argsort(-cosines)[:k]
    return [(str(rows[i]["_id"]), float(cosines[i])) for i in order]


def assert_oracle_hits(hits: list[MemoryHit], expected: list[tuple[str, float]]) -> None:
    """The oracle's ids in its order, its cosines within float32 rounding, each with text."""
    assert [hit.id for hit in hits] == [row_id for row_id, _ in expected]
    for hit, (_, cosine) in zip(hits, expected, strict=True):
        assert hit.score == pytest.approx(cosine, abs=1e-5)
        assert hit.content


@pytest.fixture
async def memorizz_store(
    settings: WorkerSettings, secantus: RestartableSecantus, memorizz_db: str, served: Served
) -> AsyncIterator[tuple[WorkerSettings, MongoStore]]:
    """A memorizz-profile store on memorizz's database, on this test's queues."""
    mongo = mongo_settings(secantus.uri, store_profile="memorizz")
    mongo = mongo.model_copy(update={"mongo_database": memorizz_db,
        "amqp_url": settings.amqp_url, "queue_prefix": settings.queue_prefix})  # fmt: skip
    store = open_mongo(mongo, served.embedder.dimensions)
    await store.connect()
    yield mongo, store
    await store.close()


@asynccontextmanager
async def serving(
    mongo: WorkerSettings, store: MongoStore, embedder: TextEmbedder, settings: WorkerSettings
) -> AsyncIterator[RetrievalClient]:
    """A worker with `mongo`'s settings on memorizz's database, and a client on its queues."""
    async with (
        running_worker(mongo, embedder, store),
        RetrievalClient(settings, timeout=30) as client,
    ):
        yield client


async def test_a_memorizz_database_is_served_as_memorizz_wrote_it(
    settings: WorkerSettings,
    secantus: RestartableSecantus,
    memorizz_db: str,
    served: Served,
    memorizz_store: tuple[WorkerSettings, MongoStore],
) -> None:
    mongo, store = memorizz_store
    question = "where does my family live, and which seat do I like?"
    limits = {"conversation_memory": 2, "entity_memory": 1}
    async with serving(mongo, store, served.embedder, settings) as client:
        replies = {
            user: await client.retrieve(
                question,
                "shared",
                limits,
                weights=RELEVANCE_ONLY,
                filters={"user_id": user},
                search="vector",  # the oracle below ranks by cosine
            )
            for user in TURNS
        }
    query = await served.query(question)
    for user, reply in replies.items():
        assert reply.status == "ok", reply.error
        for collection, k in limits.items():
            scope = {"memory_id": "shared", "user_id": user}
            expected = oracle(secantus.uri, memorizz_db, collection, scope, query, k)
            hits = reply.results[collection]
            assert_oracle_hits(hits, expected)
            assert all(hit.timestamp is not None for hit in hits)
        entity = reply.results["entity_memory"][0]
        assert any(f"{name} ({kind}): note: {note}" == entity.content
                   for name, kind, note in ENTITIES[user])  # fmt: skip


# (memory_id sent, limits, the owner field memorizz wrote) per request: one owner each.
OWNED_ELSEWHERE = [
    ("alice", {"summaries": 1, "short_term_memory": 2}, "user_id"),
    ("bob", {"summaries": 1, "short_term_memory": 1}, "user_id"),
    ("agent-1", {"workflow_memory": 2, "toolbox": 1, "skillbox": 1}, "agent_id"),
    ("agent-2", {"workflow_memory": 1, "toolbox": 1, "skillbox": 1}, "agent_id"),
]


async def test_rows_memorizz_writes_without_memory_id_are_served_by_their_owner_field(
    settings: WorkerSettings,
    secantus: RestartableSecantus,
    memorizz_db: str,
    served: Served,
    memorizz_store: tuple[WorkerSettings, MongoStore],
) -> None:
    mongo, store = memorizz_store
    question = "what do I know about the river, the bridge and my trip?"
    asks = [*OWNED_ELSEWHERE, ("shared", {"long_term_memory": 1}, "memory_id")]
    async with serving(mongo, store, served.embedder, settings) as client:
        replies = [await client.retrieve(question, owner, limits, weights=RELEVANCE_ONLY,
                                         search="vector")  # the oracle ranks by cosine
                   for owner, limits, _ in asks]  # fmt: skip
        mixed = await client.retrieve(question, "shared", {"conversation_memory": 1,
                                                           "summaries": 1})  # fmt: skip
    query, profile = (await served.query(question)), load_profile("memorizz")
    for (owner, limits, field), reply in zip(asks, replies, strict=True):
        assert reply.status == "ok", reply.error
        for memory_type, k in limits.items():
            collection = profile.collection(memory_type)
            expected = oracle(secantus.uri, memorizz_db, collection, {field: owner}, query, k)
            assert_oracle_hits(reply.results[memory_type], expected)
    assert mixed.status == "error" and mixed.error is not None
    assert mixed.error.code == "invalid_request" and "one request per owner" in mixed.error.message


def knowledge_oracle(
    uri: str, database: str, query: np.ndarray, k: int, ids: list[str], filters: dict[str, str]
) -> list[tuple[str, float]]:
    """Top k (id, cosine) of the knowledge-base rows memorizz's own filter selects for
    memory_id "shared" and these attached ids, evaluated here over every stored row.
    memorizz widens a user_id scope to the agent-wide rows (no user_id); recallq's filters
    are equalities, so user_id is applied as one, on top of memorizz's filter."""
    kwargs = {"memory_id": "shared", "knowledge_base_ids": ids, **filters}
    user = kwargs.pop("user_id", None)
    selector = MongoDBProvider._knowledge_base_search_filter(kwargs)
    rows = [row for row in MongoClient(uri)[database]["knowledge_base"].find({})
            if matches(row, selector) and (user is None or row.get("user_id") == user)]  # fmt: skip
    assert rows, f"memorizz's filter selects no knowledge for {ids} {filters}"
    matrix = np.asarray([row["embedding"] for row in rows], dtype=np.float64)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    cosines = matrix @ (query / np.linalg.norm(query))
    order = np.argsort(-cosines)[:k]
    return [(str(rows[i]["_id"]), float(cosines[i])) for i in order]


def foreign_ids(uri: str, database: str, ids: list[str]) -> set[str]:
    """Knowledge rows neither "shared"'s own nor in an attached knowledge base."""
    rows = MongoClient(uri)[database]["knowledge_base"].find({})
    return {
        str(r["_id"])
        for r in rows
        if r.get("memory_id") != "shared" and r.get("knowledge_base_id") not in ids
    }


async def test_the_knowledge_base_is_searched_as_memorizz_searches_it(
    settings: WorkerSettings,
    secantus: RestartableSecantus,
    memorizz_db: str,
    served: Served,
    memorizz_store: tuple[WorkerSettings, MongoStore],
) -> None:
    mongo, store = memorizz_store
    question = "which bridge crosses the river, and how do I get between the cities?"
    alice, bob, wide = KNOWLEDGE["alice"], KNOWLEDGE["bob"], KNOWLEDGE["agent-wide"]
    # (limits, attached ids, filters): the agent's own facts, then widened
    asks: list[tuple[dict[str, int], list[str], dict[str, str]]] = [
        ({"knowledge_base": 8, "conversation_memory": 3}, [], {}),
        ({"knowledge_base": 5, "conversation_memory": 3}, [alice], {}),
        ({"long_term_memory": 5}, [alice], {}),  # the alias: the same search
        ({"knowledge_base": 6}, [alice, bob, wide], {"namespace": "travel"}),
        ({"knowledge_base": 6}, [wide, alice, bob], {"user_id": "alice"}),
        ({"knowledge_base": 4}, [bob], {"user_id": "alice"}),  # bob's chunks: bob's only
    ]
    async with serving(mongo, store, served.embedder, settings) as client:
        replies = await asyncio.gather(*(
            client.retrieve(question, "shared", limits, weights=RELEVANCE_ONLY, search="vector",
                            knowledge_base_ids=ids or None, filters=filters or None)
            for limits, ids, filters in asks
        ))  # fmt: skip
        lexical = await client.retrieve("bridge river", "shared", {"knowledge_base": 20},
                                        weights=RELEVANCE_ONLY, search="lexical",
                                        knowledge_base_ids=[alice, bob])  # fmt: skip
        unattachable = await client.retrieve(question, "shared", {"conversation_memory": 2},
                                             knowledge_base_ids=[alice])  # fmt: skip
    query = await served.query(question)
    for (limits, ids, filters), reply in zip(asks, replies, strict=True):
        assert reply.status == "ok", reply.error
        for memory_type, k in limits.items():
            hits = reply.results[memory_type]
            if memory_type == "conversation_memory":  # by memory_id alone, as memorizz
                scope = {"memory_id": "shared"}
                expected = oracle(secantus.uri, memorizz_db, memory_type, scope, query, k)
            else:
                expected = knowledge_oracle(secantus.uri, memorizz_db, query, k, ids, filters)
            assert_oracle_hits(hits, expected)
            assert not {h.id for h in hits} & foreign_ids(secantus.uri, memorizz_db, ids)
    assert len(replies[1].results["knowledge_base"]) == 5  # the limit cut a longer list
    assert_lexical_is_bm25_over_the_union(secantus.uri, memorizz_db, lexical, [alice, bob])
    assert unattachable.error is not None and unattachable.error.code == "invalid_request"
    assert "knowledge_base_ids" in unattachable.error.message


def assert_lexical_is_bm25_over_the_union(
    uri: str, database: str, reply: RetrievalResponse, ids: list[str]
) -> None:
    """Lexical hits are every row of the union with a query word, by BM25 whose statistics
    are the union's (the owner's facts and the attached chunks together): tests/oracle.py's
    formula over the rows memorizz's filter selects."""
    assert reply.status == "ok", reply.error
    selector = MongoDBProvider._knowledge_base_search_filter(
        {"memory_id": "shared", "knowledge_base_ids": ids}
    )
    rows = [
        r for r in MongoClient(uri)[database]["knowledge_base"].find({}) if matches(r, selector)
    ]
    hits = reply.results["knowledge_base"]
    assert_bm25_hits(hits, rows, "bridge river")
    owners = {r.get("memory_id") for r in rows if str(r["_id"]) in {h.id for h in hits}}
    assert "shared" in owners and None in owners  # both sides of the $or scored together


def assert_bm25_hits(hits: list[MemoryHit], rows: list[dict[str, Any]], query: str) -> None:
    """The hits are every row with a query word, by tests/oracle.py's BM25 with these rows'
    statistics, best first (relevance is the BM25 alone)."""
    records = [{"id": str(r["_id"]), "content": r["content"],
                "timestamp": datetime.fromisoformat(r["created_at"]).timestamp()}
               for r in rows]  # fmt: skip
    scores = dict(zip([r["id"] for r in records], bm25(query, documents(records)),
                      strict=True))  # fmt: skip
    assert {h.id for h in hits} == {i for i, score in scores.items() if score > 0}
    for hit in hits:
        assert hit.lexical == pytest.approx(scores[hit.id], rel=1e-4, abs=1e-5)
    found = [h.lexical or 0.0 for h in hits]
    assert found == sorted(found, reverse=True)


async def test_an_attached_knowledge_base_the_user_may_not_read_is_forbidden(
    settings: WorkerSettings,
    memorizz_db: str,
    served: Served,
    memorizz_store: tuple[WorkerSettings, MongoStore],
    tmp_path: Path,
) -> None:
    mongo, store = memorizz_store
    policy = tmp_path / "policy.json"
    grants = {"memory_ids": ["shared"], "owners": {"knowledge_base_id": [KNOWLEDGE["alice"]]}}
    policy.write_text(json.dumps({"users": {settings.amqp_user: grants}}))
    mongo = mongo.model_copy(update={"tenant_policy": str(policy)})
    limits = {"knowledge_base": 3}
    async with serving(mongo, store, served.embedder, settings) as client:
        allowed, refused = [
            await client.retrieve("river", "shared", limits, knowledge_base_ids=ids)
            for ids in ([KNOWLEDGE["alice"]], [KNOWLEDGE["alice"], KNOWLEDGE["bob"]])
        ]
    assert allowed.status == "ok", allowed.error
    assert refused.error is not None and refused.error.code == "forbidden"
    assert KNOWLEDGE["bob"] in refused.error.message and "(attached)" in refused.error.message


def user_rows(uri: str, database: str, collection: str, selector: dict[str, Any], user: str,
              agent_wide: bool) -> list[dict[str, Any]]:  # fmt: skip
    """The embedded rows `selector` picks that a read for `user` sees: by memorizz's own
    user_scope_matches (the user's and, in its agent-wide stores, the agent's rows without
    a user) with `agent_wide`, else by user_id equality (recallq's filters)."""

    def visible(row: dict[str, Any]) -> bool:
        if agent_wide:
            return user_scope_matches(row.get("user_id"), user, collection)
        return row.get("user_id") == user

    found = MongoClient(uri)[database][collection].find({"embedding": {"$exists": True}})
    return [row for row in found if matches(row, selector) and visible(row)]


def top_k(rows: list[dict[str, Any]], query: np.ndarray, k: int) -> list[tuple[str, float]]:
    """Top k (id, cosine) by brute force over the rows' stored embeddings."""
    assert rows, "no rows in scope"
    matrix = np.asarray([row["embedding"] for row in rows], dtype=np.float64)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    cosines = matrix @ (query / np.linalg.norm(query))
    order = np.argsort(-cosines)[:k]
    return [(str(rows[i]["_id"]), float(cosines[i])) for i in order]


# (memory_id, limits, attached knowledge bases or None, memorizz's selector for the owner)
def agent_wide_asks() -> list[tuple[str, dict[str, int], list[str] | None, dict[str, Any]]]:
    ids = [KNOWLEDGE["agent-wide"], KNOWLEDGE["alice"], KNOWLEDGE["bob"]]
    attached = MongoDBProvider._knowledge_base_search_filter(
        {"memory_id": "shared", "knowledge_base_ids": ids}
    )
    return [
        ("shared", {"knowledge_base": 30, "conversation_memory": 10}, None,
         {"memory_id": "shared"}),
        ("shared", {"long_term_memory": 30}, ids, attached),
        ("agent-1", {"toolbox": 30, "skillbox": 30}, None, {"agent_id": "agent-1"}),
    ]  # fmt: skip


async def test_agent_wide_rows_are_every_user_s_and_private_rows_their_owner_s(
    settings: WorkerSettings,
    secantus: RestartableSecantus,
    memorizz_db: str,
    served: Served,
    memorizz_store: tuple[WorkerSettings, MongoStore],
) -> None:
    mongo, store = memorizz_store
    question = "how do I get around the river with my bike?"
    asks = [(user, wide, *ask) for user in TURNS for wide in (True, False)
            for ask in agent_wide_asks()]  # fmt: skip
    async with serving(mongo, store, served.embedder, settings) as client:
        replies = await client.retrieve_many([
            Query(question, owner, limits, weights=RELEVANCE_ONLY, search="vector",
                  filters={"user_id": user}, knowledge_base_ids=ids, agent_wide=wide)
            for user, wide, owner, limits, ids, _ in asks
        ], timeout=30)  # fmt: skip
    query, profile = (await served.query(question)), load_profile("memorizz")
    seen: dict[tuple[str, str], set[str]] = {}  # (user, collection) -> ids, with agent_wide
    for (user, wide, _, limits, _, selector), reply in zip(asks, replies, strict=True):
        assert reply.status == "ok", reply.error
        for memory_type, k in limits.items():
            collection = profile.collection(memory_type)
            widened = wide and memory_type != "conversation_memory"  # that one stays strict
            rows = user_rows(secantus.uri, memorizz_db, collection, selector, user, widened)
            hits = reply.results[memory_type]
            assert_oracle_hits(hits, top_k(rows, query, k))
            assert len(hits) == len(rows) < k  # every row in scope, none left out
            if widened:
                seen.setdefault((user, collection), set()).update(h.id for h in hits)
                assert {r.get("user_id") for r in rows} == {user, None}  # both kinds
            else:
                assert all(r["user_id"] == user for r in rows)
    for collection in ("knowledge_base", "toolbox", "skillbox"):
        shared = seen["alice", collection] & seen["bob", collection]
        everyone = {str(r["_id"]) for r in MongoClient(secantus.uri)[memorizz_db][collection]
                    .find({"embedding": {"$exists": True}, "user_id": None})}  # fmt: skip
        assert shared and shared <= everyone  # what both see is the agent's rows only
        assert (seen["alice", collection] - shared) and (seen["bob", collection] - shared)


async def test_the_lexical_side_scores_exactly_the_rows_memorizz_shows_the_user(
    settings: WorkerSettings,
    secantus: RestartableSecantus,
    memorizz_db: str,
    served: Served,
    memorizz_store: tuple[WorkerSettings, MongoStore],
) -> None:
    mongo, store = memorizz_store
    asks = agent_wide_asks()
    async with serving(mongo, store, served.embedder, settings) as client:
        replies = await client.retrieve_many([
            Query("river bridge bike", owner, limits, weights=RELEVANCE_ONLY, search="lexical",
                  filters={"user_id": user}, knowledge_base_ids=ids, agent_wide=True)
            for user in TURNS for owner, limits, ids, _ in asks
        ], timeout=30)  # fmt: skip
    wanted = [(user, ask) for user in TURNS for ask in asks]
    for (user, (_, limits, _, selector)), reply in zip(wanted, replies, strict=True):
        assert reply.status == "ok", reply.error
        for memory_type in limits:
            collection = load_profile("memorizz").collection(memory_type)
            widened = memory_type != "conversation_memory"
            rows = user_rows(secantus.uri, memorizz_db, collection, selector, user, widened)
            if collection == "knowledge_base":  # the statistics need the text: BM25's oracle
                assert_bm25_hits(reply.results[memory_type], rows, "river bridge bike")
            else:  # tools and skills: the lexical list is drawn from the same rows
                assert {h.id for h in reply.results[memory_type]} <= {str(r["_id"]) for r in rows}


async def test_a_policy_that_forbids_agent_wide_rows_refuses_a_request_that_widens(
    settings: WorkerSettings,
    memorizz_db: str,
    served: Served,
    memorizz_store: tuple[WorkerSettings, MongoStore],
    tmp_path: Path,
) -> None:
    mongo, store = memorizz_store
    policy = tmp_path / "policy.json"
    rules = {"memory_ids": ["shared"], "filters": {"user_id": ["alice"]}, "agent_wide": False}
    policy.write_text(json.dumps({"users": {settings.amqp_user: rules}}))
    mongo = mongo.model_copy(update={"tenant_policy": str(policy)})
    alice = {"user_id": "alice"}
    async with serving(mongo, store, served.embedder, settings) as client:
        widening, strict, nothing_to_widen = await client.retrieve_many([
            Query("river", "shared", limits, filters=alice, agent_wide=wide)
            for limits, wide in [({"knowledge_base": 3}, True), ({"knowledge_base": 3}, False),
                                 ({"conversation_memory": 3}, True)]
        ], timeout=30)  # fmt: skip
    assert widening.error is not None and widening.error.code == "forbidden"
    assert "agent-wide" in widening.error.message
    assert strict.status == "ok", strict.error
    assert len(strict.results["knowledge_base"]) == 1  # alice's own fact, nothing wider
    assert nothing_to_widen.status == "ok", nothing_to_widen.error
