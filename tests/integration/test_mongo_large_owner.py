"""MongoDB exact mode past RECALLQ_MONGO_EXACT_MAX_ROWS (SecantusDB, a real wire server):
a group over the cap is counted, never fetched, and refused with the documented error,
alone; a group at the cap is served whole; rows written between count and fetch cannot
pass the cap; the search paths count each; the warning is logged once per owner; a worker
replies with the refusal."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

import numpy as np
import pytest
import structlog
from pymongo import AsyncMongoClient, monitoring

from producer.client import RetrievalClient
from schemas.messages import ErrorCode, MemoryType, RetrievalRequest
from tests.integration.conftest import mongo_settings, running_worker
from tests.integration.secantus import RestartableSecantus
from worker.embedding.embedder import Embedder
from worker.errors import StoreUnavailable
from worker.search import search_and_rank
from worker.settings import WorkerSettings
from worker.store import SearchGroup, open_mongo
from worker.store.base import GroupsRefused, Memory, Vectors
from worker.store.mongo import ExactTooLarge, MongoStore, owner_digest
from worker.store.mongo_query import to_document

T = TypeVar("T")
CAP = 40
TYPE = "long_term_memory"
BIG, AT_CAP, SMALL = "agent:big", "agent:at-cap", "agent:small"
SIZES = {BIG: CAP + 1, AT_CAP: CAP, SMALL: 3}
ADVICE = (
    "use RECALLQ_MONGO_SEARCH=vector (Atlas, or MongoDB 8.2+ with mongot) "
    "or raise RECALLQ_MONGO_EXACT_MAX_ROWS"
)


def unit(rng: np.random.Generator, rows: int) -> Vectors:
    vectors = rng.standard_normal((rows, 384)).astype(np.float32)
    normalised: Vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return normalised


def rows(owner: str, size: int) -> list[Memory]:
    return [
        Memory(id=f"{owner}-{i}", memory_id=owner, memory_type=TYPE, content=f"note {i}",
               timestamp=1_700_000_000.0 + i)
        for i in range(size)
    ]  # fmt: skip


class Commands(monitoring.CommandListener):
    """The commands sent to one database, by name (PyMongo's listeners are process-wide:
    registered before the store's client is made, it sees that client's commands)."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.names: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.database_name == self.database:
            self.names.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture(scope="module")
async def capped(secantus: RestartableSecantus) -> AsyncIterator[tuple[MongoStore, Commands]]:
    """An exact-mode store capped at CAP rows a group (one owner over it, one at it, one
    small; two of the big owner's rows are user u's), and the commands it sends."""
    settings = mongo_settings(secantus.uri, mongo_search="exact", mongo_exact_max_rows=CAP)
    commands = Commands(settings.mongo_database)
    monitoring.register(commands)
    store = open_mongo(settings, 384)
    await store.ensure_indexes()
    rng = np.random.default_rng(26)
    memories = [memory for owner, size in SIZES.items() for memory in rows(owner, size)]
    await store.upsert(memories, unit(rng, len(memories)))
    users = zip(rows("u", 2), unit(rng, 2), strict=True)
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(secantus.uri)
    await client[settings.mongo_database][TYPE].insert_many(
        [to_document(m, v) | {"memory_id": BIG, "user_id": "u"} for m, v in users]
    )
    await client.close()
    await store.connect()
    assert store.mode == "exact"
    yield store, commands
    await store.close()


def group(owner: str, k: int = 5) -> SearchGroup:
    return SearchGroup(TYPE, owner, unit(np.random.default_rng(7), 2), (k, k))


async def test_a_group_over_the_cap_is_refused_alone(
    capped: tuple[MongoStore, Commands],
) -> None:
    store, commands = capped
    before = Counter(store.search_paths())
    with pytest.raises(GroupsRefused) as raised:
        await store.search([group(BIG), group(SMALL)])
    refused, served = raised.value.outcomes
    assert isinstance(refused, ExactTooLarge)
    assert refused.code == ErrorCode.STORE_UNAVAILABLE and refused.retryable is False
    assert str(refused) == (
        f"{TYPE}: this owner has at least {CAP + 1} memories, over exact mode's {CAP}; {ADVICE}"
    )
    # the small owner's two queries are served, each with its three rows and no other
    assert isinstance(served, list) and len(served) == 2
    for candidates in served:
        assert sorted(c.memory.id for c in candidates) == [f"{SMALL}-{i}" for i in range(3)]
    # a caller that reads only the error answers with the refusal, never a retryable one
    assert raised.value.code == ErrorCode.STORE_UNAVAILABLE and not raised.value.retryable
    assert str(raised.value) == str(refused)
    assert Counter(store.search_paths()) - before == {"too_large": 1, "exact": 1}
    # counted first (PyMongo's count_documents is an aggregate), never fetched
    commands.names.clear()
    with pytest.raises(GroupsRefused):
        await store.search([group(BIG)])
    assert commands.names == ["aggregate"]


async def test_a_group_at_the_cap_is_served_whole(capped: tuple[MongoStore, Commands]) -> None:
    store, commands = capped
    before = Counter(store.search_paths())
    commands.names.clear()
    [found] = await store.search([group(AT_CAP, k=CAP)])
    assert commands.names == ["aggregate", "find"]
    for candidates in found:
        assert sorted(c.memory.id for c in candidates) == sorted(
            f"{AT_CAP}-{i}" for i in range(CAP)
        )
    assert Counter(store.search_paths()) - before == {"exact": 1}


async def test_a_refused_group_leaves_the_others_of_its_call_served(
    capped: tuple[MongoStore, Commands],
) -> None:
    """The big owner's rows of one user are a group of their own, under the cap: served
    beside the refused one."""
    store, _ = capped
    filtered = SearchGroup(TYPE, BIG, unit(np.random.default_rng(7), 1), (5,), (("user_id", "u"),))
    with pytest.raises(GroupsRefused) as raised:
        await store.search([group(AT_CAP), group(BIG), filtered])
    served, refused, scoped = raised.value.outcomes
    assert isinstance(served, list) and len(served) == 2 and len(served[0]) == 5
    assert isinstance(refused, ExactTooLarge) and not isinstance(scoped, ExactTooLarge)
    assert isinstance(scoped, list)
    assert sorted(c.memory.id for c in scoped[0]) == ["u-0", "u-1"]
    assert {c.memory.memory_id for c in scoped[0]} == {BIG}
    assert str(raised.value) == str(refused)


async def test_the_warning_is_logged_once_per_owner(capped: tuple[MongoStore, Commands]) -> None:
    store, _ = capped
    other = "agent:big-too"
    await store.upsert(rows(other, CAP + 5), unit(np.random.default_rng(3), CAP + 5))
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            with pytest.raises(GroupsRefused):
                await store.search([group(other), group(other, k=3)])
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 1
    [warning] = warnings
    assert warning["owner_sha256"] == owner_digest(other)
    assert warning["rows_at_least"] == CAP + 1 and warning["cap"] == CAP
    assert other not in repr(warning)  # logs carry no memory_id


async def test_rows_written_between_count_and_fetch_cannot_pass_the_cap(
    capped: tuple[MongoStore, Commands],
    secantus: RestartableSecantus,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fetch is bounded too: an owner at the cap when counted, over it when fetched, is
    refused, not scored past the cap."""
    store, commands = capped
    growing = "agent:growing"
    await store.upsert(rows(growing, CAP), unit(np.random.default_rng(5), CAP))
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(secantus.uri)
    guarded = store._guarded

    async def writes_after_the_count(call: Callable[[], Awaitable[T]]) -> T:
        answer = await guarded(call)
        if commands.names[-1] == "aggregate":  # the count: now another writer adds rows
            more = zip(rows("late", 3), unit(np.random.default_rng(6), 3), strict=True)
            documents = [to_document(m, v) | {"memory_id": growing} for m, v in more]
            await client[commands.database][TYPE].insert_many(documents)
        return answer

    monkeypatch.setattr(store, "_guarded", writes_after_the_count)
    before = Counter(store.search_paths())
    try:
        with pytest.raises(GroupsRefused) as raised:
            await store.search([group(growing)])
    finally:
        await client.close()
    [refused] = raised.value.outcomes
    assert isinstance(refused, ExactTooLarge) and refused.counted == CAP + 1
    assert Counter(store.search_paths()) - before == {"too_large": 1}


async def test_other_store_errors_stay_the_whole_calls(secantus: RestartableSecantus) -> None:
    """Only a refusal is a group's own: a server that cannot answer (here $vectorSearch on a
    server without it) fails the call, to be retried; vector and hybrid groups count."""
    store = open_mongo(mongo_settings(secantus.uri), 384)
    store.mode, store.lexical = "vector", "atlas"
    hybrid = SearchGroup(TYPE, SMALL, unit(np.random.default_rng(1), 1), (5,), queries=("q",),
                         lexical_ks=(5,))  # fmt: skip
    try:
        with pytest.raises(StoreUnavailable) as raised:
            await store.search([group(SMALL), hybrid])
    finally:
        await store.close()
    assert not isinstance(raised.value, GroupsRefused) and raised.value.retryable
    assert store.search_paths() == {"vector": 1, "hybrid": 1}


async def test_the_worker_answers_a_large_owner_with_the_advice(
    settings: WorkerSettings, embedder: Embedder, capped: tuple[MongoStore, Commands]
) -> None:
    """The reply a caller sees: store_unavailable, not retryable, the advice; the next
    owner is served."""
    store, _ = capped
    async with (
        running_worker(settings, embedder, store),
        RetrievalClient(settings, timeout=60) as client,
    ):
        refused = await client.retrieve("what did I note", BIG, {TYPE: 3})
        served = await client.retrieve("what did I note", SMALL, {TYPE: 3})
    assert refused.status == "error" and refused.error is not None
    assert refused.error.code == ErrorCode.STORE_UNAVAILABLE and not refused.error.retryable
    assert refused.error.message.endswith(f"over exact mode's {CAP}; {ADVICE}")
    assert served.status == "ok" and len(served.results[MemoryType.LONG_TERM]) == 3


async def test_a_refused_group_fails_its_own_requests_only(
    capped: tuple[MongoStore, Commands],
) -> None:
    """One batch, two owners: the large owner's request gets the refusal, the other its
    hits."""
    store, _ = capped
    requests = [
        RetrievalRequest(request_id=owner, query="what did I note", memory_id=owner,
                         limits={TYPE: 3})
        for owner in (BIG, SMALL)
    ]  # fmt: skip
    vectors = unit(np.random.default_rng(8), 2)
    answers: Sequence[object] = await search_and_rank(
        store, requests, vectors, candidate_factor=4, now=time.time()
    )
    refused, served = answers
    assert isinstance(refused, ExactTooLarge)
    assert isinstance(served, dict) and len(served[TYPE]) == 3


async def test_vector_mode_caps_only_a_lexical_side_scored_in_the_worker(
    capped: tuple[MongoStore, Commands], secantus: RestartableSecantus
) -> None:
    """Vector mode without a queryable $search index scores a lexical side over the owner's
    rows: capped too, with the advice that fits vector mode. Its vector-only group is not
    capped (here it reaches $vectorSearch, which this server lacks)."""
    _, commands = capped
    settings = WorkerSettings(store_url=secantus.uri, mongo_database=commands.database,
                              metrics_port=0, mongo_exact_max_rows=CAP)  # fmt: skip
    store = open_mongo(settings, 384)
    store.mode, store.lexical = "vector", "worker"
    hybrid = SearchGroup(TYPE, BIG, unit(np.random.default_rng(1), 1), (5,), queries=("q",),
                         lexical_ks=(5,))  # fmt: skip
    try:
        with pytest.raises(GroupsRefused) as raised:
            await store.search([hybrid])
        with pytest.raises(StoreUnavailable):
            await store.search([group(BIG)])
    finally:
        await store.close()
    assert str(raised.value) == (
        f"{TYPE}: this owner has at least {CAP + 1} memories, over the {CAP} the worker scores "
        "for a lexical side; run `recallq worker init` so that $search serves it, ask with "
        "search=vector, or raise RECALLQ_MONGO_EXACT_MAX_ROWS"
    )
    assert store.search_paths() == {"too_large": 1, "vector": 1}
