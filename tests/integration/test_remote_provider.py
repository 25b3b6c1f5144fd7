"""A worker whose embeddings come from a remote provider (the OpenAI-compatible test
server, serving the bundled model): it answers as a worker with the local model does;
under each fault a provider shows, with requests in flight, every delivery is settled
once, requests the provider recovers for in time are answered ok and the rest
`embedding_unavailable` (or `expired`); readiness follows a refused key; a 429 storm
makes each call carry more requests; and the CLI starts, ingests and refuses through it."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import numpy as np
import pytest
from pydantic import SecretStr
from pymongo import AsyncMongoClient

from benchmarks.openai_server import EmbeddingServer, Fault, local_model_encoder
from producer.client import Query, RetrievalClient, RetrievalTimeout
from schemas.messages import ErrorCode, MemoryType, RetrievalResponse
from tests.conftest import DEMO_MEMORIES, ROOT
from tests.integration.conftest import running_worker
from tests.integration.secantus import RestartableSecantus
from tests.integration.test_cli_failures import free_port
from tests.integration.test_metrics import get, until
from worker.embedding.embedder import Embedder
from worker.embedding.remote import RemoteEmbedder
from worker.service import Worker
from worker.settings import WorkerSettings
from worker.store import SearchGroup, SQLiteStore

MODEL = "all-MiniLM-L6-v2"
KEY = "sk-integration-5d2b77"
LIMITS = {"long_term_memory": 3, "conversation_memory": 2}


@pytest.fixture(scope="module")
def model_server() -> Iterator[EmbeddingServer]:
    with EmbeddingServer(local_model_encoder(), api_key=KEY, models=[MODEL]) as server:
        yield server


@pytest.fixture
def provider(model_server: EmbeddingServer) -> EmbeddingServer:
    """The module's server, healthy, idle and with no calls recorded."""
    model_server.heal()
    model_server.wait_idle()
    model_server.api_key = KEY
    model_server.rate_limit(0)
    model_server.latency_s = 0.0
    model_server.reset()
    return model_server


def remote(settings: WorkerSettings, server: EmbeddingServer, **overrides: Any) -> WorkerSettings:
    return settings.model_copy(
        update={
            "embed_provider": "openai",
            "embed_model": MODEL,
            "embed_base_url": server.base_url,
            "embed_api_key": SecretStr(KEY),
            "embed_timeout_s": 2.0,
            "embed_concurrency": 4,
            **overrides,
        }
    )


@asynccontextmanager
async def remote_worker(
    settings: WorkerSettings, store: SQLiteStore
) -> AsyncIterator[tuple[Worker, RemoteEmbedder]]:
    embedder = await RemoteEmbedder.connect(settings.remote_spec())
    try:
        async with running_worker(settings, embedder, store) as worker:
            yield worker, embedder
    finally:
        await embedder.aclose()


def sample_sum(worker: Worker, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    return sum(
        s.value
        for family in worker.metrics.registry.collect()
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def queue_depths(settings: WorkerSettings) -> tuple[int, int]:
    """(requests ready in the request queue, dead letters)."""
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        requests = await channel.declare_queue(settings.topology.requests.name, passive=True)
        dead = await settings.topology.dead.declare(channel)
    return requests.declaration_result.message_count, dead.declaration_result.message_count


async def reply_or_none(
    client: RetrievalClient, future: asyncio.Future[RetrievalResponse]
) -> RetrievalResponse | None:
    """The reply, however late; None when none comes (the broker dropped the request
    when its deadline passed in the queue: it is then a dead letter)."""
    try:
        return await client.wait(future, 30)
    except RetrievalTimeout:
        return None


def same_hits(answered: RetrievalResponse, local: RetrievalResponse) -> None:
    """Same memories in the same order (a near-tie may trade places), cosines equal up
    to float noise."""
    assert answered.status == local.status == "ok"
    assert answered.results.keys() == local.results.keys()
    for kind, hits in answered.results.items():
        wanted = local.results[kind]
        assert len(hits) == len(wanted)
        for hit, want in zip(hits, wanted, strict=True):
            assert hit.id == want.id or abs(hit.signal - want.signal) < 1e-4, (kind, hit.id)
        scores = {w.id: w.score for w in wanted}
        assert all(abs(h.score - scores[h.id]) < 1e-4 for h in hits if h.id in scores)


async def test_a_remote_worker_answers_as_the_local_model_does(
    settings: WorkerSettings,
    embedder: Embedder,
    demo_store: SQLiteStore,
    demo_questions: list[dict[str, str]],
    provider: EmbeddingServer,
) -> None:
    queries = [Query(q["query"], q["memory_id"], LIMITS) for q in demo_questions[:12]]
    async with (
        running_worker(settings, embedder, demo_store),
        RetrievalClient(settings, timeout=30) as client,
    ):
        local = await client.retrieve_many(queries)
    async with (
        remote_worker(remote(settings, provider), demo_store) as (worker, remote_embedder),
        RetrievalClient(settings, timeout=30) as client,
    ):
        answered = await client.retrieve_many(queries)
    assert remote_embedder.description == f"openai {MODEL} (384 dims) at {provider.base_url}"
    for mine, theirs in zip(answered, local, strict=True):
        same_hits(mine, theirs)
    assert provider.inputs >= len(queries)  # the vectors came from the provider
    assert sample_sum(worker, "recallq_embed_calls_total", status="ok") == provider.count() - 1
    assert sample_sum(worker, "recallq_embed_inputs_total") == provider.inputs - 1  # not probe


@dataclass(frozen=True)
class Case:
    fault: Fault
    scope: dict[str, Any]  # how long the fault lasts: calls=N or seconds=S
    short: int = 0  # requests of the 24 with a 1 s deadline (the others have 20 s)
    refused: bool = False  # the calls it hits are refused (not retried)
    status: int | None = None  # what the server answered while it lasted


CASES = {
    "429-storm-retry-after": Case(Fault("rate_limited", retry_after=0.3), {"seconds": 1.0},
                                  status=429),
    "429-storm-no-header": Case(Fault("rate_limited"), {"seconds": 1.0}, status=429),
    "500s": Case(Fault("error", status=500), {"seconds": 1.0}, status=500),
    "truncated-json": Case(Fault("truncated"), {"calls": 3}),
    "slow-past-short-deadlines": Case(Fault("slow", delay_s=3.0), {"seconds": 1.5}, short=12),
    "wrong-count": Case(Fault("wrong_count"), {"calls": 2}, refused=True),
    "wrong-size": Case(Fault("wrong_size"), {"calls": 2}, refused=True),
}  # fmt: skip


@pytest.mark.parametrize("name", CASES)
async def test_under_each_fault_every_request_is_settled_once(
    settings: WorkerSettings,
    demo_store: SQLiteStore,
    demo_questions: list[dict[str, str]],
    provider: EmbeddingServer,
    name: str,
) -> None:
    case = CASES[name]
    tight = remote(settings, provider, embed_timeout_s=0.5)
    deadlines = [1.0] * case.short + [20.0] * (24 - case.short)
    async with (
        remote_worker(tight, demo_store) as (worker, _),
        RetrievalClient(settings, timeout=20) as client,
    ):
        provider.inject(case.fault, **case.scope)
        futures = []
        for i, deadline in enumerate(deadlines):
            question = demo_questions[i % len(demo_questions)]
            query = Query(f"{question['query']} ({name} {i})", question["memory_id"], LIMITS)
            futures.append(await client.submit(query, timeout=deadline))
        replies = await asyncio.gather(*(reply_or_none(client, f) for f in futures))
        provider.heal()
        after = await client.retrieve("Which seat?", "travel-concierge:maya", LIMITS)
        await asyncio.wait_for(worker.unsettled.wait_empty(), 30)
        answered = sample_sum(worker, "recallq_requests_total")
        in_flight = sample_sum(worker, "recallq_in_flight")
        redelivered = sample_sum(worker, "recallq_redeliveries_total")
        dropped = client.dropped_replies
    ready, dead = await queue_depths(settings)

    assert after.status == "ok"  # recovered
    unreplied = sum(reply is None for reply in replies)
    assert unreplied == 0 or case.short, "a long-deadline request got no reply"
    assert answered == len(deadlines) - unreplied + 1 and dead == unreplied
    assert ready == 0 and in_flight == 0 and redelivered == 0 and dropped == 0
    long_ones = replies[case.short :]
    codes = [reply.error.code if reply.error else "ok" for reply in replies if reply]
    if case.refused:
        failed = [r for r in long_ones if r is not None and r.status == "error"]
        assert failed and all(not r.error.retryable for r in failed if r.error)
        assert {c for c in codes if c != "ok"} == {ErrorCode.EMBEDDING_UNAVAILABLE}
        assert all("RECALLQ_EMBED_" in r.error.message for r in failed if r.error)
    else:
        assert all(r is not None and r.status == "ok" for r in long_ones), codes
        short_ones = [r for r in replies[: case.short] if r is not None]
        short_codes = {r.error.code if r.error else "ok" for r in short_ones}
        assert short_codes <= {ErrorCode.EMBEDDING_UNAVAILABLE, ErrorCode.EXPIRED}, codes
    if case.status is not None:
        assert provider.count(case.status) >= 1  # the fault was met


async def test_readyz_is_503_while_the_provider_refuses_the_key_and_200_after(
    settings: WorkerSettings, demo_store: SQLiteStore, provider: EmbeddingServer
) -> None:
    async with (
        remote_worker(remote(settings, provider), demo_store) as (worker, embedder),
        RetrievalClient(settings, timeout=20) as client,
    ):
        assert worker.health is not None
        port = worker.health.port
        assert get(port, "/readyz")[0] == 200
        provider.api_key = "sk-rotated-at-the-provider"
        refused = await client.retrieve("Which seat?", "travel-concierge:maya", LIMITS)
        await until(lambda: get(port, "/readyz")[0] == 503)
        assert not embedder.usable
        provider.api_key = KEY
        served = await client.retrieve("Which hotel?", "travel-concierge:maya", LIMITS)
        await until(lambda: get(port, "/readyz")[0] == 200)
        metrics = get(port, "/metrics")[1]
    assert refused.status == "error" and refused.error is not None
    assert refused.error.code == ErrorCode.EMBEDDING_UNAVAILABLE and not refused.error.retryable
    assert "RECALLQ_EMBED_API_KEY" in refused.error.message and KEY not in refused.error.message
    assert served.status == "ok"
    assert 'recallq_embed_calls_total{status="refused"} 1.0' in metrics
    assert "recallq_embed_concurrency_allowed 4.0" in metrics


async def offer(
    client: RetrievalClient, questions: list[dict[str, str]], count: int, rate: float, tag: str
) -> list[RetrievalResponse]:
    """`count` distinct requests at a steady `rate` per second (pacing, not waiting for
    anything), then every reply."""
    futures = []
    for i in range(count):
        question = questions[i % len(questions)]
        query = Query(f"{question['query']} [{tag} {i}]", question["memory_id"], LIMITS)
        futures.append(await client.submit(query, timeout=40))
        await asyncio.sleep(1 / rate)
    return [await client.wait(future, 60) for future in futures]


async def test_a_429_storm_makes_each_call_carry_more_requests(
    settings: WorkerSettings,
    demo_store: SQLiteStore,
    demo_questions: list[dict[str, str]],
    provider: EmbeddingServer,
) -> None:
    """The same steady rate, 20 requests a second for 3 s, without and with a provider
    that allows one call a second: while calls wait out Retry-After, batches keep
    forming, so the calls per request fall (calm: about one call per request; in the
    storm about two calls a second, 429s included, whatever the rate)."""
    ratios = {}
    for tag, calls_per_minute in (("calm", 0), ("storm", 60)):
        async with (
            remote_worker(remote(settings, provider), demo_store) as (worker, _),
            RetrievalClient(settings, timeout=40) as client,
        ):
            provider.reset()
            provider.rate_limit(calls_per_minute)
            replies = await offer(client, demo_questions, 60, 20.0, tag)
            provider.rate_limit(0)
            limited = sample_sum(worker, "recallq_embed_rate_limited_total")
        assert all(reply.status == "ok" for reply in replies), tag
        ratios[tag] = provider.count() / len(replies)
        if tag == "storm":
            assert provider.count(429) >= 1 and limited >= 1
    assert ratios["storm"] < 0.5 * ratios["calm"], ratios


# -- the command line ----------------------------------------------------------------------


def cli_env(server: EmbeddingServer, **extra: str) -> dict[str, str]:
    return {
        **os.environ, "RECALLQ_EMBED_PROVIDER": "openai", "RECALLQ_EMBED_MODEL": MODEL,
        "RECALLQ_EMBED_BASE_URL": server.base_url, "RECALLQ_EMBED_API_KEY": KEY,
        "RECALLQ_METRICS_PORT": "-1", "RECALLQ_LOG_FORMAT": "json", **extra,
    }  # fmt: skip


async def worker_command(*args: str, env: dict[str, str]) -> tuple[int | None, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=180)
    return process.returncode, out.decode(), err.decode()


def people_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if not line.startswith("{")]  # not the logs


async def test_a_worker_on_a_store_of_another_size_exits_2_naming_both_sizes(
    secantus: RestartableSecantus, provider: EmbeddingServer
) -> None:
    database = f"recallq_test_{uuid.uuid4().hex[:10]}"
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(secantus.uri)
    try:
        await client[database]["long_term_memory"].insert_one(
            {"_id": "m1", "memory_id": "m", "content": "x", "embedding": [0.1] * 384}
        )
        env = cli_env(provider, RECALLQ_STORE_URL=secantus.uri,
                      RECALLQ_MONGO_DATABASE=database, RECALLQ_EMBED_DIMENSIONS="256")  # fmt: skip
        status, out, err = await worker_command("run", env=env)
    finally:
        await client.drop_database(database)
        await client.close()
    assert status == 2, err[-2000:]
    [line] = people_lines(err)
    assert line.startswith("python -m worker run: stored embeddings do not fit the embedder")
    assert "384 dimensions" in line and "makes 256" in line
    assert f"openai {MODEL} at {provider.base_url}" in line
    assert KEY not in out + err and "Traceback" not in err


async def test_a_worker_on_an_embedded_store_of_another_size_exits_2_naming_both_sizes(
    demo_store: SQLiteStore, provider: EmbeddingServer
) -> None:
    """The same guard on the embedded store (384-dimension demo memories, 256 asked)."""
    env = cli_env(provider, RECALLQ_STORE_URL=f"sqlite:///{demo_store.path}",
                  RECALLQ_EMBED_DIMENSIONS="256")  # fmt: skip
    status, out, err = await worker_command("run", env=env)
    assert status == 2, err[-2000:]
    [line] = people_lines(err)
    assert "stored embeddings do not fit the embedder: memories: 384 dimensions" in line
    assert "makes 256" in line and f"openai {MODEL} at {provider.base_url}" in line
    assert KEY not in out + err and "Traceback" not in err


async def test_a_worker_whose_provider_is_unreachable_exits_2_naming_the_url(
    demo_store: SQLiteStore, provider: EmbeddingServer
) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    env = cli_env(provider, RECALLQ_STORE_URL=f"sqlite:///{demo_store.path}",
                  RECALLQ_EMBED_BASE_URL=url, RECALLQ_CONNECT_WAIT_S="1",
                  RECALLQ_EMBED_TIMEOUT_S="0.5")  # fmt: skip
    started = time.monotonic()
    status, out, err = await worker_command("run", env=env)
    assert status == 2, err[-2000:]
    [line] = people_lines(err)
    assert line.startswith(f"python -m worker run: cannot get vectors from the embedding "
                           f"provider at {url} within 1 s")  # fmt: skip
    assert "RECALLQ_EMBED_BASE_URL" in line and KEY not in out + err
    assert time.monotonic() - started < 60


async def test_ingest_embeds_through_the_provider_in_calls_of_its_batches(
    tmp_path: Path, embedder: Embedder, demo_store: SQLiteStore, provider: EmbeddingServer
) -> None:
    db = tmp_path / "remote.db"
    env = cli_env(provider, RECALLQ_STORE_URL=f"sqlite:///{db}")
    status, out, err = await worker_command("ingest", str(DEMO_MEMORIES), env=env)
    assert status == 0, err[-2000:]
    assert "stored 270 memories" in out
    assert provider.count() == 1 + 5  # the probe, then 270 memories in batches of 64
    probe = await embedder.embed(["knee pain after running"])
    group = SearchGroup(MemoryType.LONG_TERM, "health-coach:sam", probe, (5,))
    store = SQLiteStore(db)
    try:
        [[mine]], [[theirs]] = await store.search([group]), await demo_store.search([group])
    finally:
        await store.close()
    assert [c.memory.id for c in mine] == [c.memory.id for c in theirs]
    assert np.allclose([c.score for c in mine], [c.score for c in theirs], atol=1e-4)
