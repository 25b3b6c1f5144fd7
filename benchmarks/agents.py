"""`python -m benchmarks agents`: a memorizz agent turn's context building, N agents at
once, on memorizz's own retrieval and on `RecallqProvider` (issue 25).

memorizz 0.17's own `MemAgent` (a canned stand-in for its LLM, which answers at once;
memorizz's HuggingFace embeddings over the bundled model) runs turns against a memorizz
database that memorizz itself wrote: per agent ~50 conversation turns, an attached
knowledge base, a few entities and two tools. N agents (threads of one process, as an
agent server runs them) each run K turns together:

- "memorizz": the agents on `MongoDBProvider`; each semantic search embeds the query in
  the agent's process (memorizz's LRU cache: once a text) and runs a `$vectorSearch`.
- "recallq": agents built alike on `RecallqProvider(MongoDBProvider(...))`, one worker
  (store_profile memorizz on their database, default settings, the local ONNX model)
  in a process of its own, as deployed.

Each system has a database of its own, seeded alike (the same texts) on one server, so
the turns one system's agents store never reach the other's searches; at each N the
two run in turn.

A turn's context building is the time from `MemAgent.run` until it calls its model (the
canned model records the moment): every read memorizz makes before the LLM (the tool
search, conversation history, knowledge, conversation and entity recall, summaries,
tool logs) and its own Python around them. Counted in that window, on the agent's
thread: the semantic retrievals it asked for, the searches the database ran
(memorizz) or the requests recallq answered (round trips), and the queries embedded in
the agent's process. The worker's batch sizes come from its own metrics. Then the
seed's shape: one query over three memory types, memorizz's `retrieve_by_query` x3 in
turn against the wrapper's `retrieve_all_memory_types` (one round trip).

The database is SecantusDB (the MongoDB wire protocol in pure Python) in a child
process on the same 2 cores: it has no `$vectorSearch`, so memorizz's (which would fail
there, and memorizz would fall back to lexical or nothing) is answered as Atlas's
`exact: true` would be: the stage's filter as a `find`, cosine over the rows' stored
embeddings in the agent's process, the top k with Atlas's score. The worker searches
the same way (its exact mode: a `find` by owner, cosine in the worker). Absolute
numbers are this machine's and this database's, not Atlas's.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import multiprocessing
import os
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from benchmarks.common import (
    DEMO_MEMORIES,
    DEMO_QUESTIONS,
    RESULTS,
    delete_queues,
    percentiles,
    running_worker,
    write_results,
)
from producer.memorizz import RecallqProvider
from schemas.logs import configure_logging
from schemas.settings import BrokerSettings
from worker.embedding.backends import bundled_model_path
from worker.settings import WorkerSettings

NS = (1, 8, 32)
QUICK_NS = (1, 4)
THREE_TYPES = ("conversation_memory", "knowledge_base", "entity_memory")
LIMIT = 5  # rows per memory type in the three-type query
SYSTEMS = ("memorizz", "recallq")
SETTLE_S = 60.0  # the longest wait for a turn's background work (embeddings, upkeep)
START_S = 180.0  # a child process's longest start (the worker loads its model)
SEED_CLAIM = {
    "source": "the seed (memorizz performance report)",
    "shape": "one query over three memory types",
    "before_ms": [450, 1200],
    "before": "sequential",
    "after_ms": [80, 200],
    "after": "one embedding, parallel searches",
}
DATABASE = (
    "SecantusDB 0.7 (MongoDB wire protocol, pure Python) in a child process on the same "
    "2 cores as the agents, the worker and RabbitMQ; exact search only (memorizz's "
    "$vectorSearch answered as Atlas's exact: true would be, the worker in its exact "
    "mode): absolute numbers are this machine's, not Atlas's"
)
MEASURED = (
    "context building: MemAgent.run until it calls its model (a canned stand-in that "
    "answers at once), on the agent's thread: every read before the LLM and memorizz's "
    "own work around them; round trips: database searches (memorizz) or recallq "
    "requests in that window; turns/s: turns completed (each followed by waiting for its "
    "own background work, memorizz's turn embeddings and upkeep) over the phase's wall time"
)
ENTITIES = (("Porto", "city"), ("Lisbon", "city"), ("Kyoto", "city"), ("Maya", "person"),
            ("Devon", "person"), ("Lufthansa", "airline"), ("Sam", "person"),
            ("Berlin", "city"))  # fmt: skip


@dataclass(frozen=True)
class Scale:
    """How big a run is: what is seeded, and what is timed."""

    agents: int = 32  # seeded; the first N run when N run at once
    history: int = 50  # conversation turns seeded per agent
    knowledge: int = 20  # knowledge-base sentences per agent (a chunk each)
    entities: int = 4  # per agent
    ns: tuple[int, ...] = NS  # agents at once
    turns: int = 10  # timed turns per agent per phase, and at least `samples` in all
    shape_calls: int = 10  # three-type queries per caller per phase, likewise
    samples: int = 40

    def each(self, per_agent: int, n: int) -> int:
        """Turns (or queries) per agent at n agents: enough for a p99 at N = 1 too."""
        return max(per_agent, -(-self.samples // n))


QUICK = Scale(
    agents=4, history=20, knowledge=8, entities=2, ns=QUICK_NS, turns=2, shape_calls=3, samples=2
)


@dataclass(frozen=True)
class Persona:
    """One seeded agent and its one user."""

    index: int
    knowledge_base_id: str = ""

    @property
    def agent_id(self) -> str:
        return f"agent-{self.index:02d}"

    @property
    def memory_id(self) -> str:
        return f"memory-{self.index:02d}"

    @property
    def user_id(self) -> str:
        return f"user-{self.index:02d}"

    @property
    def thread_id(self) -> str:
        return f"thread-{self.index:02d}"


@functools.cache
def memorizz() -> Any:
    """memorizz's classes, imported when first used: the child processes import this
    module and need none of it (nor torch)."""
    from memorizz.embeddings import configure_embeddings
    from memorizz.enums.memory_type import MemoryType
    from memorizz.long_term.episodic.conversational_memory_unit import ConversationMemoryUnit
    from memorizz.long_term.procedural.toolbox.toolbox import Toolbox
    from memorizz.long_term.semantic.entity_memory.entity_memory import EntityMemory
    from memorizz.long_term.semantic.knowledge_base import KnowledgeBase
    from memorizz.memagent import MemAgent
    from memorizz.memory_provider.mongodb.provider import MongoDBConfig, MongoDBProvider

    return SimpleNamespace(
        configure_embeddings=configure_embeddings, MemoryType=MemoryType,
        ConversationMemoryUnit=ConversationMemoryUnit, Toolbox=Toolbox,
        EntityMemory=EntityMemory, KnowledgeBase=KnowledgeBase, MemAgent=MemAgent,
        MongoDBConfig=MongoDBConfig, MongoDBProvider=MongoDBProvider,
    )  # fmt: skip


# -- measuring: a window per turn on the agent's thread --------------------------------


@dataclass
class Window:
    """One turn (or one three-type query) in progress on one thread."""

    started: float
    model_at: float | None = None  # when the agent called its model
    counts: Counter[str] = field(default_factory=Counter)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Turn:
    """One finished turn: its times and what was counted before the model."""

    context_ms: float
    total_ms: float
    ok: bool
    counts: dict[str, int]
    ms: dict[str, float]


class Meter:
    """Counts and times what each thread's open window does before its model call;
    what happens outside any window (background work) is counted apart."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self.turns: list[Turn] = []
        self.elsewhere: Counter[str] = Counter()

    def open(self) -> None:
        self._local.window = Window(time.perf_counter())

    def model_called(self) -> None:
        window = getattr(self._local, "window", None)
        if window is not None and window.model_at is None:
            window.model_at = time.perf_counter()

    def count(self, name: str, n: int = 1, seconds: float = 0.0) -> None:
        window: Window | None = getattr(self._local, "window", None)
        if window is None or window.model_at is not None:
            with self._lock:
                self.elsewhere[name] += n
            return
        window.counts[name] += n
        window.seconds[name] = window.seconds.get(name, 0.0) + seconds

    @contextmanager
    def timed(self, name: str, n: int = 1) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.count(name, n, time.perf_counter() - started)

    def close(self, ok: bool) -> None:
        window: Window = self._local.window
        now = time.perf_counter()
        context = (window.model_at or now) - window.started
        turn = Turn(round(context * 1000, 3), round((now - window.started) * 1000, 3), ok,
                    dict(window.counts),
                    {k: round(v * 1000, 3) for k, v in window.seconds.items()})  # fmt: skip
        self._local.window = None
        with self._lock:
            self.turns.append(turn)

    def drain(self) -> tuple[list[Turn], Counter[str]]:
        """The turns and the background counts since the last drain."""
        with self._lock:
            turns, elsewhere = self.turns, self.elsewhere
            self.turns, self.elsewhere = [], Counter()
        return turns, elsewhere


class CannedLLM:
    """memorizz's model: a short canned answer at once; the moment it is called closes
    the turn's context building. Its tool augmentation answers from what it is given."""

    model = "canned"
    client = None
    ANSWER = "Noted."

    def __init__(self, meter: Meter | None = None) -> None:
        self.meter = meter

    def generate(self, messages: list[dict[str, Any]], *args: Any, **kwargs: Any) -> str:
        if self.meter is not None:
            self.meter.model_called()
        return self.ANSWER

    def generate_text(self, prompt: str, instructions: str | None = None) -> str:
        return self.ANSWER

    def get_tool_metadata(self, func: Any) -> dict[str, Any]:
        return {"name": func.__name__, "description": func.__doc__}

    def augment_docstring(self, docstring: str) -> str:
        return f"{docstring} Use it when planning a trip."

    def generate_queries(self, docstring: str) -> list[str]:
        return [f"how do I {docstring.lower()}"]

    def get_config(self) -> dict[str, Any]:
        return {"provider": "canned", "model": "canned"}

    def get_last_usage(self) -> None:
        return None

    def get_context_window_tokens(self) -> int:
        return 16_000


def get_weather(city: str) -> str:
    """Get the weather forecast for a city."""
    return "sunny"


def convert_currency(amount: float, currency: str) -> float:
    """Convert an amount of money into another currency."""
    return amount


TOOLS = (get_weather, convert_currency)


# -- memorizz's $vectorSearch, exact, and the counting hooks ----------------------------

READY = {"available": True, "queryable": True, "status": "READY", "reason": None}


def exact_search(collection: Any, pipeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A `$vectorSearch` pipeline as Atlas's `exact: true` answers it: the stage's filter,
    cosine over the stored embeddings, the top `limit`, score (1 + cosine) / 2; then the
    two stages memorizz's builder appends."""
    stage = pipeline[0]["$vectorSearch"]
    path = stage["path"]
    rows = [r for r in collection.find(stage.get("filter") or {}) if r.get(path)]
    if not rows:
        return []
    matrix = np.asarray([r[path] for r in rows], dtype=np.float32)
    query = np.asarray(stage["queryVector"], dtype=np.float32)
    cosines = (matrix @ query) / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(query))
    found = []
    for i in np.argsort(-cosines, kind="stable")[: int(stage["limit"])]:
        row = dict(rows[i])
        for step in pipeline[1:]:
            if step == {"$project": {path: 0}}:
                row.pop(path, None)
            elif step == {"$addFields": {"score": {"$meta": "vectorSearchScore"}}}:
                row["score"] = (1 + float(cosines[i])) / 2
            else:
                raise NotImplementedError(f"exact vector search: stage {step}")
        found.append(row)
    return found


def with_exact_search(provider: Any, meter: Meter) -> Any:
    """memorizz's MongoDBProvider with its vector searches answered exactly (SecantusDB
    has no $vectorSearch) and counted: each is one search of the database."""

    def run(collection: Any, pipeline: list[dict[str, Any]], **_: Any) -> list[dict[str, Any]]:
        with meter.timed("searches"):
            return exact_search(collection, pipeline)

    provider._run_vector_search = run
    provider._vector_index_unavailable = lambda name: False
    provider._ensure_vector_index_for_collection = lambda *args, **kwargs: None
    provider.get_vector_search_status = lambda *args, **kwargs: dict(READY)
    return provider


def count_retrievals(provider: Any, meter: Meter) -> Any:
    """The semantic retrievals the agent asks of `provider` (what it holds), timed."""
    original = provider.retrieve_by_query

    def retrieve_by_query(query: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(query, str):
            return original(query, *args, **kwargs)
        kind = kwargs.get("memory_type") or kwargs.get("memory_store_type") or (args or ["?"])[0]
        meter.count(f"store:{getattr(kind, 'value', kind)}")
        with meter.timed("retrievals"):
            return original(query, *args, **kwargs)

    provider.retrieve_by_query = retrieve_by_query
    return provider


def count_requests(provider: RecallqProvider, meter: Meter) -> None:
    """Each recallq request the wrapper sends (a `retrieve_many` sends them together)."""
    client = provider.recallq
    one, many = client.retrieve, client.retrieve_many

    def retrieve(query: Any, **kwargs: Any) -> Any:
        with meter.timed("requests"):
            return one(query, **kwargs)

    def retrieve_many(queries: Sequence[Any], **kwargs: Any) -> Any:
        with meter.timed("requests", len(queries)):
            return many(queries, **kwargs)

    client.retrieve, client.retrieve_many = retrieve, retrieve_many


def local_embeddings(meter: Meter) -> Any:
    """memorizz's embedding manager over the bundled model, each text it embeds in this
    process counted (its LRU cache's hits are not)."""
    manager = memorizz().configure_embeddings(
        "huggingface", {"model": bundled_model_path(), "local_files_only": True}
    )
    model = manager._provider
    one, many = model.get_embedding, model.get_embeddings

    def get_embedding(text: str, **kwargs: Any) -> Any:
        with meter.timed("embeddings"):
            return one(text, **kwargs)

    def get_embeddings(texts: list[str], **kwargs: Any) -> Any:
        with meter.timed("embeddings", len(texts)):
            return many(texts, **kwargs)

    model.get_embedding, model.get_embeddings = get_embedding, get_embeddings
    return manager


# -- the database and the worker, each a process of its own ----------------------------


class Child:
    """A helper process driven over a pipe: its target sends one value once ready, then
    answers each message until "stop". Its failure is raised here."""

    def __init__(self, target: Callable[..., None], *args: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self._process = context.Process(target=target, args=(child, *args), daemon=True)
        self.ready: Any = None

    def __enter__(self) -> Child:
        self._process.start()
        self.ready = self._receive(START_S)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process.is_alive():
            self._pipe.send("stop")
            self._receive(60.0)
        self._process.join(timeout=30)

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def ask(self, message: str) -> Any:
        self._pipe.send(message)
        return self._receive(60.0)

    def _receive(self, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while not self._pipe.poll(0.5):  # a bounded wait for the reply, not a sleep
            if not self._process.is_alive():
                raise RuntimeError(f"child process exited ({self._process.exitcode})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no reply from the child process in {timeout:g} s")
        try:
            reply = self._pipe.recv()
        except EOFError:
            raise RuntimeError(f"child process exited ({self._process.exitcode})") from None
        if isinstance(reply, Exception):
            raise reply
        return reply


def _database(pipe: Connection, storage: str) -> None:
    """The child: SecantusDB on a free port; sends its URI."""
    from secantus import SecantusDBServer  # type: ignore[import-untyped]

    server = SecantusDBServer(port=0, storage_path=storage, replica_set_name=None)
    server.start()
    pipe.send(f"mongodb://127.0.0.1:{server.address[1]}/?directConnection=true")
    pipe.recv()
    server.stop()
    pipe.send(None)


def _worker(pipe: Connection, settings: WorkerSettings) -> None:
    """The child: a worker as `recallq worker run` builds it (running_worker); answers
    each message with its batch counts."""
    configure_logging("error")
    try:
        asyncio.run(_serve_worker(pipe, settings))
    except Exception as exc:
        pipe.send(RuntimeError(f"the worker failed: {exc!r}"))
        return
    pipe.send(None)


async def _serve_worker(pipe: Connection, settings: WorkerSettings) -> None:
    from worker.cli import close_embedder, open_embedder
    from worker.store import open_mongo

    embedder = await open_embedder(settings)
    store = open_mongo(settings, embedder.dimensions)
    await store.connect()
    try:
        async with running_worker(settings, embedder, store) as worker:
            pipe.send(store.describe())
            while await asyncio.to_thread(pipe.recv) != "stop":
                pipe.send(worker_counts(worker))
    finally:
        await store.close()
        await close_embedder(embedder)
        await delete_queues(settings)


def totals(histogram: Any) -> tuple[float, float]:
    """A histogram's sum and count over all its labels."""
    found = {"_sum": 0.0, "_count": 0.0}
    for metric in histogram.collect():
        for sample in metric.samples:
            for suffix in found:
                if sample.name.endswith(suffix):
                    found[suffix] += sample.value
    return found["_sum"], found["_count"]


WORKER_TIMES = ("embed_seconds", "search_seconds", "request_seconds", "queue_wait_seconds")


def worker_counts(worker: Any) -> dict[str, float]:
    """Requests answered, batches (its batch_size histogram) and the time histograms'
    totals; its largest batch since the last call (then reset: each phase its own)."""
    counts = {"requests": worker.stats.requests, "largest_batch": worker.stats.largest_batch}
    for name in ("batch_size", *WORKER_TIMES):
        counts[f"{name}_sum"], counts[f"{name}_count"] = totals(getattr(worker.metrics, name))
    worker.stats.largest_batch = 0
    return counts


def batches(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """The worker's side of one phase: batch sizes, and its mean times in ms (embedding
    and search per batch, delivery to reply and queue wait per request)."""
    delta = {k: after[k] - before[k] for k in after if k != "largest_batch"}

    def mean(name: str, scale: float = 1.0) -> float:
        count = delta[f"{name}_count"]
        return round(delta[f"{name}_sum"] * scale / count, 2) if count else 0.0

    return {
        "requests": int(delta["requests"]),
        "batches": int(delta["batch_size_count"]),
        "mean_batch": mean("batch_size"),
        "max_batch": int(after["largest_batch"]),
        "ms": {name.removesuffix("_seconds"): mean(name, 1000) for name in WORKER_TIMES},
    }


def worker_settings(uri: str, database: str, amqp_url: str | None) -> WorkerSettings:
    """Default settings but the store (memorizz's database, exact search: what `auto`
    finds on SecantusDB), a queue prefix of the run's own, and no metrics port."""
    settings = WorkerSettings(
        store_url=uri, mongo_database=database, store_profile="memorizz",
        mongo_search="exact", metrics_port=-1,
        queue_prefix=f"recallq-agents-{uuid.uuid4().hex[:8]}",
    )  # fmt: skip
    return settings.model_copy(update={"amqp_url": amqp_url}) if amqp_url else settings


# -- seeding, through memorizz ----------------------------------------------------------


def sentences() -> list[str]:
    return [json.loads(line)["content"] for line in DEMO_MEMORIES.read_text().splitlines()]


def seed_conversation(provider: Any, manager: Any, persona: Persona, history: int) -> None:
    """`history` turns, user and assistant in turn, embedded in one batch and written in
    one bulk write, as memorizz's ConversationMemoryUnit rows."""
    api, pool, now = memorizz(), sentences(), datetime.now(UTC)
    texts = [pool[(persona.index * 11 + i) % len(pool)] for i in range(history)]
    vectors = manager.get_embeddings(texts)
    rows = [
        api.ConversationMemoryUnit(
            role="user" if i % 2 == 0 else "assistant", content=text,
            timestamp=(now - timedelta(hours=history - i)).isoformat(),
            memory_id=persona.memory_id, thread_id=persona.thread_id,
            user_id=persona.user_id, embedding=vector,
        ).model_dump()
        for i, (text, vector) in enumerate(zip(texts, vectors, strict=True))
    ]  # fmt: skip
    provider.store_many(rows, api.MemoryType.CONVERSATION_MEMORY)


def seed_persona(provider: Any, manager: Any, persona: Persona, scale: Scale) -> Persona:
    """One agent's memory as memorizz writes it: turns, a knowledge base (returned
    attached to the persona), entities and its own tools."""
    api, pool = memorizz(), sentences()
    seed_conversation(provider, manager, persona, scale.history)
    start = persona.index * 7
    corpus = " ".join(pool[(start + i) % len(pool)] for i in range(scale.knowledge))
    knowledge = api.KnowledgeBase(provider).ingest_knowledge(
        corpus, namespace="notes", chunking_strategy="sentence", chunk_size=120,
        user_id=persona.user_id,
    )  # fmt: skip
    for e in range(scale.entities):
        name, kind = ENTITIES[(persona.index + e) % len(ENTITIES)]
        api.EntityMemory(provider).upsert_entity(
            name=name, entity_type=kind, memory_id=persona.memory_id, user_id=persona.user_id,
            attributes=[{"name": "note", "value": pool[(start + 3 * e) % len(pool)]}],
        )  # fmt: skip
    toolbox = api.Toolbox(provider, llm_provider=CannedLLM(), agent_id=persona.agent_id)
    for tool in TOOLS:
        toolbox.register_tool(tool, augment=True)
    return replace(persona, knowledge_base_id=knowledge)


def seed(uri: str, database: str, manager: Any, meter: Meter, scale: Scale) -> dict[str, Any]:
    """Every persona's memory in `database`; how long it took and what was written."""
    api = memorizz()
    config = api.MongoDBConfig(uri, db_name=database, lazy_vector_indexes=True,
                               embedding_provider=manager)  # fmt: skip
    provider = with_exact_search(api.MongoDBProvider(config), meter)
    started = time.perf_counter()
    personas = [seed_persona(provider, manager, Persona(i), scale) for i in range(scale.agents)]
    seconds = time.perf_counter() - started
    rows = {name: provider.db[name].count_documents({}) for name in
            ("conversation_memory", "knowledge_base", "entity_memory", "toolbox")}  # fmt: skip
    _, counted = meter.drain()
    provider.close()
    return {"database": database, "personas": personas, "seconds": round(seconds, 1),
            "rows": rows, "embedded_texts": counted["embeddings"]}  # fmt: skip


# -- the two systems, and their phases ----------------------------------------------------


@dataclass
class System:
    """What the agents of one system hold, the agents, and whom each was seeded as."""

    name: str
    provider: Any
    agents: list[Any]
    personas: list[Persona]


def build_system(name: str, provider: Any, personas: Sequence[Persona], meter: Meter) -> System:
    api = memorizz()
    agents = []
    for persona in personas:
        agent = api.MemAgent(
            model=CannedLLM(meter), memory_provider=provider, agent_id=persona.agent_id,
            memory_ids=[persona.memory_id],
            memory_types=[api.MemoryType.CONVERSATION_MEMORY, api.MemoryType.KNOWLEDGE_BASE,
                          api.MemoryType.ENTITY_MEMORY],
        )  # fmt: skip
        agent.knowledge_base_ids = [persona.knowledge_base_id]
        agents.append(agent)
    return System(name, provider, agents, list(personas))


def systems(
    uri: str, seeded: dict[str, dict[str, Any]], manager: Any, meter: Meter,
    broker: BrokerSettings,
) -> dict[str, System]:  # fmt: skip
    """memorizz's own provider, and the wrapper around another like it, each on its own
    database (seeded alike: the turns one system stores never reach the other's
    searches), each searching exactly; the agents of each built on it."""
    api = memorizz()

    def provider(name: str) -> Any:
        database = seeded[name]["database"]
        config = api.MongoDBConfig(uri, db_name=database, lazy_vector_indexes=True,
                                   embedding_provider=manager)  # fmt: skip
        return with_exact_search(api.MongoDBProvider(config), meter)

    own = count_retrievals(provider("memorizz"), meter)
    wrapped = RecallqProvider(provider("recallq"), broker=broker)
    count_requests(wrapped, meter)
    count_retrievals(wrapped, meter)
    return {
        name: build_system(name, held, seeded[name]["personas"], meter)
        for name, held in (("memorizz", own), ("recallq", wrapped))
    }


def question(label: str, agent: int, turn: int) -> str:
    """A distinct text per (phase, agent, turn): no embedding cache hides a query."""
    asked = json.loads(DEMO_QUESTIONS.read_text())
    return f"{asked[(agent + turn) % len(asked)]['query']} ({label}, agent {agent}, turn {turn})"


def settle(agent: Any) -> None:
    """The turn's background work (its turns' embeddings, recall upkeep) finished, so
    the next turn starts on a settled database (memorizz 0.17.16's own handles)."""
    wait_futures(list(agent._embedding_backfill_futures), timeout=SETTLE_S)
    agent.wait_for_memory_upkeep(timeout=SETTLE_S)


def converse(agent: Any, persona: Persona, texts: list[str], meter: Meter,
             start: threading.Barrier) -> None:  # fmt: skip
    start.wait()
    for text in texts:
        meter.open()
        answer = agent.run(text, memory_id=persona.memory_id, user_id=persona.user_id,
                           thread_id=persona.thread_id)  # fmt: skip
        meter.close(ok=answer == CannedLLM.ANSWER)  # memorizz answers an error with text
        settle(agent)


def together(n: int, work: Callable[[int, threading.Barrier], None]) -> float:
    """`work(i, start)` on n threads at once; the wall time from their common start."""
    start = threading.Barrier(n + 1)
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(work, i, start) for i in range(n)]
        start.wait()
        began = time.perf_counter()
        for future in futures:
            future.result()
        return time.perf_counter() - began


def turns_phase(
    system: System, n: int, turns: int, meter: Meter
) -> tuple[list[Turn], Counter[str], float]:
    """n agents, `turns` turns each, all at once."""
    label = f"{system.name} x{n}"
    texts = {i: [question(label, i, t) for t in range(turns)] for i in range(n)}

    def agent(i: int, start: threading.Barrier) -> None:
        converse(system.agents[i], system.personas[i], texts[i], meter, start)

    wall = together(n, agent)
    found, elsewhere = meter.drain()
    return found, elsewhere, wall


def memorizz_three(provider: Any, persona: Persona, text: str) -> int:
    """memorizz's way: retrieve_by_query for each memory type in turn; rows found."""
    found = 0
    for memory_type in THREE_TYPES:
        scope = {"knowledge_base_ids": [persona.knowledge_base_id]}
        rows = provider.retrieve_by_query(
            text, memory_type=memory_type, limit=LIMIT, memory_id=persona.memory_id,
            user_id=persona.user_id, **(scope if memory_type == "knowledge_base" else {}),
        )  # fmt: skip
        found += len(list(rows or []))
    return found


def recallq_three(provider: Any, persona: Persona, text: str) -> int:
    """The wrapper's way: one request for the three types (one owner); rows found."""
    found = provider.retrieve_all_memory_types(
        text, THREE_TYPES, limit=LIMIT, memory_id=persona.memory_id, user_id=persona.user_id,
        knowledge_base_ids=[persona.knowledge_base_id],
    )  # fmt: skip
    return sum(len(rows) for rows in found.values())


def shape_phase(
    system: System, n: int, calls: int, meter: Meter
) -> tuple[list[Turn], Counter[str], float]:
    """n callers, `calls` three-type queries each, all at once."""
    ask = memorizz_three if system.name == "memorizz" else recallq_three

    def caller(i: int, start: threading.Barrier) -> None:
        start.wait()
        for call in range(calls):
            meter.open()
            text = question(f"{system.name} 3 types x{n}", i, call)
            found = ask(system.provider, system.personas[i], text)
            meter.count("rows", found)
            meter.close(ok=found > 0)

    wall = together(n, caller)
    found, elsewhere = meter.drain()
    return found, elsewhere, wall


# -- what a phase measured ----------------------------------------------------------------


def per_turn(turns: Sequence[Turn], name: str) -> float:
    return round(sum(t.counts.get(name, 0) for t in turns) / max(len(turns), 1), 2)


def ms_per_turn(turns: Sequence[Turn], name: str) -> float:
    return round(sum(t.ms.get(name, 0.0) for t in turns) / max(len(turns), 1), 2)


def summary(turns: Sequence[Turn], elsewhere: Counter[str], wall: float) -> dict[str, Any]:
    """One phase: latency, rate, and what each turn did before its model."""
    stores: Counter[str] = Counter()
    for turn in turns:
        stores.update({k[6:]: v for k, v in turn.counts.items() if k.startswith("store:")})
    searches, requests = per_turn(turns, "searches"), per_turn(turns, "requests")
    return {
        "turns": len(turns),
        "ok": sum(t.ok for t in turns),
        "seconds": round(wall, 2),
        "turns_per_s": round(len(turns) / wall, 2),
        "context_ms": percentiles([t.context_ms for t in turns]),
        "context_mean_ms": round(sum(t.context_ms for t in turns) / max(len(turns), 1), 2),
        "turn_ms": percentiles([t.total_ms for t in turns]),
        "retrievals_per_turn": per_turn(turns, "retrievals"),
        "retrievals_by_store_per_turn": {k: round(v / len(turns), 2) for k, v in stores.items()},
        "searches_per_turn": searches,
        "requests_per_turn": requests,
        "round_trips_per_turn": round(searches + requests, 2),
        "local_embeddings_per_turn": per_turn(turns, "embeddings"),
        "rows_per_turn": per_turn(turns, "rows"),
        "ms_per_turn": {
            name: ms_per_turn(turns, name)
            for name in ("retrievals", "searches", "requests", "embeddings")
        },
        "after_the_model": dict(elsewhere),  # background work and post-model reads
    }


def cpu_now(children: dict[str, Child]) -> dict[str, float]:
    """CPU seconds so far of this process (the agents) and of each child (/proc)."""
    found = {"agents": time.process_time()}
    for name, child in children.items():
        fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
        found[name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return found


def cpu_use(before: dict[str, float], after: dict[str, float], done: int, wall: float
            ) -> dict[str, dict[str, float]]:  # fmt: skip
    """Each process's CPU per turn (ms) and the cores it kept busy over the phase."""
    spent = {name: after[name] - before[name] for name in after}
    return {"cpu_ms_per_turn": {k: round(v * 1000 / max(done, 1), 2) for k, v in spent.items()},
            "cores_busy": {k: round(v / wall, 2) for k, v in spent.items()}}  # fmt: skip


def run_system(
    system: System, n: int, scale: Scale, meter: Meter, children: dict[str, Child]
) -> list[dict[str, Any]]:
    """One system at n agents: its turns, then its three-type queries; the CPU of each
    process; for recallq, the worker's batches and the wrapper's counts of each."""
    stats = system.provider.recallq_stats if system.name == "recallq" else None
    worker, results = children["worker"], []
    for phase, size in (
        (turns_phase, scale.each(scale.turns, n)),
        (shape_phase, scale.each(scale.shape_calls, n)),
    ):
        counts, before = (worker.ask("counts"), stats.as_dict()) if stats else ({}, {})
        cpu = cpu_now(children)
        result = {"agents": n, **summary(*phase(system, n, size, meter))}
        result.update(cpu_use(cpu, cpu_now(children), result["turns"], result["seconds"]))
        if stats is not None:
            result["worker"] = batches(counts, worker.ask("counts"))
            after = stats.as_dict()
            result["recallq_stats"] = {k: after[k] - before[k] for k in after}
        results.append(result)
    return results


def warm_up(system: System, meter: Meter) -> None:
    """Every agent's first turn (memorizz stores the agent then), the system's first
    three-type query, the worker's first batches: not measured."""

    def first(i: int, start: threading.Barrier) -> None:
        text = question(f"{system.name} warm-up", i, 0)
        converse(system.agents[i], system.personas[i], [text], meter, start)

    together(len(system.agents), first)
    ask = memorizz_three if system.name == "memorizz" else recallq_three
    ask(system.provider, system.personas[0], question(f"{system.name} warm-up", 0, 1))
    meter.drain()


def measure(
    all_systems: dict[str, System], scale: Scale, meter: Meter, children: dict[str, Child]
) -> dict[str, Any]:
    """Every N, both systems in turn at each (so drift over the run touches both)."""
    for system in all_systems.values():
        warm_up(system, meter)
    runs: dict[str, dict[str, Any]] = {name: {} for name in all_systems}
    shapes: dict[str, dict[str, Any]] = {name: {} for name in all_systems}
    print("  ".join(f"{c:>13}" for c in PROGRESS), flush=True)
    for n in scale.ns:
        for name, system in all_systems.items():
            run, shape = run_system(system, n, scale, meter, children)
            runs[name][str(n)], shapes[name][str(n)] = run, shape
            print("  ".join(f"{c:>13}" for c in progress(name, run, shape)), flush=True)
    return {"runs": runs, "three_types": shapes}


# -- output --------------------------------------------------------------------------------

PROGRESS = ("system", "agents", "turns/s", "context p50", "context p99", "3 types p50",
            "3 types p99")  # fmt: skip


def progress(name: str, run: dict[str, Any], shape: dict[str, Any]) -> list[str]:
    return [name, str(run["agents"]), f"{run['turns_per_s']:g}",
            f"{run['context_ms']['p50']:g}", f"{run['context_ms']['p99']:g}",
            f"{shape['context_ms']['p50']:g}", f"{shape['context_ms']['p99']:g}"]  # fmt: skip


def batch_cell(result: dict[str, Any]) -> str:
    worker = result.get("worker")
    return f"{worker['mean_batch']:g} / {worker['max_batch']}" if worker else ""


def fallback_cell(result: dict[str, Any]) -> str:
    stats = result.get("recallq_stats")
    return str(stats["fallbacks"]) if stats else ""


TURN_COLUMNS = ("system", "agents", "turns", "turns/s", "context p50 / p99 ms",
                "retrievals / turn", "round trips / turn", "local embeddings / turn",
                "worker batch mean / max", "fallbacks")  # fmt: skip
SHAPE_COLUMNS = ("system", "callers", "queries", "p50 / p99 ms", "round trips / query",
                 "local embeddings / query", "rows / query", "worker batch mean / max",
                 "fallbacks")  # fmt: skip


def turn_cells(name: str, run: dict[str, Any]) -> list[str]:
    latency = run["context_ms"]
    return [name, str(run["agents"]), f"{run['ok']}/{run['turns']}", f"{run['turns_per_s']:g}",
            f"{latency['p50']:g} / {latency['p99']:g}", f"{run['retrievals_per_turn']:g}",
            f"{run['round_trips_per_turn']:g}", f"{run['local_embeddings_per_turn']:g}",
            batch_cell(run), fallback_cell(run)]  # fmt: skip


def shape_cells(name: str, shape: dict[str, Any]) -> list[str]:
    latency = shape["context_ms"]
    return [name, str(shape["agents"]), f"{shape['ok']}/{shape['turns']}",
            f"{latency['p50']:g} / {latency['p99']:g}", f"{shape['round_trips_per_turn']:g}",
            f"{shape['local_embeddings_per_turn']:g}", f"{shape['rows_per_turn']:g}",
            batch_cell(shape), fallback_cell(shape)]  # fmt: skip


TIME_COLUMNS = ("system", "agents", "context", "in retrievals", "DB searches or recallq requests",
                "local query embedding", "worker: delivery to reply / search / embed",
                "CPU ms / turn: agents / database / worker", "cores busy")  # fmt: skip


def time_cells(name: str, run: dict[str, Any]) -> list[str]:
    """Means per turn in ms (a local embedding may run inside a retrieval or after)."""
    spent, worker = run["ms_per_turn"], run.get("worker")
    waited = spent["searches"] if name == "memorizz" else spent["requests"]
    inside = "" if worker is None else " / ".join(f"{worker['ms'][k]:g}" for k in
                                                 ("request", "search", "embed"))  # fmt: skip
    cpu = " / ".join(f"{run['cpu_ms_per_turn'][k]:g}" for k in ("agents", "database", "worker"))
    return [name, str(run["agents"]), f"{run['context_mean_ms']:g}", f"{spent['retrievals']:g}",
            f"{waited:g}", f"{spent['embeddings']:g}", inside, cpu,
            f"{sum(run['cores_busy'].values()):.2f}"]  # fmt: skip


def table(columns: Sequence[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns),
            *("| " + " | ".join(row) + " |" for row in rows)]  # fmt: skip


def claimed(claim: dict[str, Any]) -> list[list[str]]:
    """The seed's figures as rows beside the measured ones (latency only)."""
    return [[f"the seed's {when} ({claim[when]})", "", "",
             "{} - {}".format(*claim[f"{when}_ms"]), "", "", "", "", ""]
            for when in ("before", "after")]  # fmt: skip


def markdown(results: dict[str, Any]) -> str:
    """The three tables, what was measured, and where."""
    ns, seeded = results["scale"]["ns"], results["seeding"]
    order = [(name, str(n)) for n in ns for name in ("memorizz", "recallq")]
    claim = results["seed_claim"]
    shapes = [shape_cells(s, results["three_types"][s][n]) for s, n in order]
    return "\n".join([
        f"memorizz agents' context building ({seeded['agents']} agents seeded through "
        f"memorizz in {seeded['seconds']['memorizz']:g} s a system: {seeded['rows']}). "
        f"{results['database']}.",
        "", *table(TURN_COLUMNS, [turn_cells(s, results["runs"][s][n]) for s, n in order]),
        "", f"One query over three memory types ({', '.join(THREE_TYPES)}, {LIMIT} rows "
        f"each), beside {claim['source']}'s figures for that shape:",
        "", *table(SHAPE_COLUMNS, [*shapes, *claimed(claim)]),
        "", "Where a turn's context building goes (means, ms; the worker's per request, its "
        "search and embedding per batch):",
        "", *table(TIME_COLUMNS, [time_cells(s, results["runs"][s][n]) for s, n in order]),
    ])  # fmt: skip


def seed_both(uri: str, manager: Any, meter: Meter, scale: Scale) -> dict[str, dict[str, Any]]:
    """A database for each system, seeded alike."""
    run, seeded = uuid.uuid4().hex[:8], {}
    for name in SYSTEMS:
        seeded[name] = seed(uri, f"agents_{run}_{name}", manager, meter, scale)
        print(f"{name}'s database: {scale.agents} agents seeded in "
              f"{seeded[name]['seconds']:g} s, {seeded[name]['rows']}")  # fmt: skip
    return seeded


def described(
    scale: Scale, seeded: dict[str, dict[str, Any]], store: dict[str, Any]
) -> dict[str, Any]:
    """What the JSON says besides the numbers: where, how, and what was compared."""
    settings = WorkerSettings()
    return {
        "database": DATABASE,
        "measured": MEASURED,
        "scale": {**vars(scale), "ns": list(scale.ns)},
        "seeding": {
            "agents": scale.agents,
            "rows": seeded["memorizz"]["rows"],
            "seconds": {name: seeded[name]["seconds"] for name in SYSTEMS},
            "embedded_texts": seeded["memorizz"]["embedded_texts"],
            "databases": "one per system, seeded alike (the same texts), on one server",
            "how": "memorizz's API: ConversationMemoryUnit rows (embedded in one batch, one "
            "bulk write per agent), KnowledgeBase.ingest_knowledge (sentence chunks, batch "
            "embedded), EntityMemory.upsert_entity, Toolbox.register_tool; HuggingFace "
            "embeddings over the bundled all-MiniLM-L6-v2",
        },
        "systems": {
            "memorizz": "MemAgent on MongoDBProvider: the query embedded in the agent's "
            "process (torch, memorizz's LRU cache: once a text), one exact search a memory "
            "type in the agent's process",
            "recallq": "MemAgent on RecallqProvider(MongoDBProvider): each semantic "
            "retrieval a request to one worker process (ONNX, batching), the rows read "
            "back by id; everything else passes through",
        },
        "worker": {
            "store": store,
            "embed_concurrency": settings.embed_concurrency,
            "max_batch": settings.max_batch,
            "ranking": "vector (the wrapper's default)",
        },
        "seed_claim": SEED_CLAIM,
    }


def benchmark(
    scale: Scale, results_dir: Path = RESULTS, *, amqp_url: str | None = None,
    name: str = "agents",
) -> Path:  # fmt: skip
    """Seed, run both systems at every N, print and write the JSON; its path."""
    started = time.perf_counter()
    meter = Meter()
    manager = local_embeddings(meter)
    with tempfile.TemporaryDirectory() as scratch, Child(_database, scratch) as mongo:
        seeded = seed_both(mongo.ready, manager, meter, scale)
        settings = worker_settings(mongo.ready, seeded["recallq"]["database"], amqp_url)
        with Child(_worker, settings) as worker:
            both = systems(mongo.ready, seeded, manager, meter, settings)
            try:
                measured = measure(both, scale, meter, {"database": mongo, "worker": worker})
            finally:
                for system in both.values():
                    system.provider.close()
    results = {**described(scale, seeded, worker.ready), **measured,
               "wall_s": round(time.perf_counter() - started, 1)}  # fmt: skip
    path = write_results(name, results, results_dir)
    print("\n" + markdown(results))
    print(f"\nresults: {path}")
    return path


def main(
    quick: bool = False, results_dir: Path | None = None, ns: Sequence[int] | None = None,
    turns: int | None = None,
) -> int:  # fmt: skip
    """The command: N = 1, 8, 32, 10 turns an agent (--quick: 1, 4 and 2 turns)."""
    configure_logging("error")  # the worker's and the wrapper's
    logging.getLogger("memorizz").setLevel(logging.ERROR)
    scale = QUICK if quick else Scale()
    if ns:
        scale = replace(scale, ns=tuple(ns), agents=max(ns))
    if turns:
        scale = replace(scale, turns=turns)
    benchmark(scale, results_dir or RESULTS, name="agents-quick" if quick else "agents")
    return 0
