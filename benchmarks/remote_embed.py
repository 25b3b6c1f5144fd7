"""`python -m benchmarks remote-embed`: recallq against the seed's "before" when the
vectors come from a rate-limited remote embeddings API.

The provider is `benchmarks.openai_server.EmbeddingServer` in a child process (its
HTTP work off the callers' core and GIL): a fixed latency per call (80 ms by default)
and a calls-per-minute limit (3,000 by default; burst one second's worth; 429 with
Retry-After past it, after the latency). Its vectors come from `hashed_encoder`,
which costs microseconds: a call's cost here is its latency and its place in the
rate limit only, which is what this benchmark is about (the model's own compute is
measured by `run` and `gpu`).

- "before": the seed's memorizz-style retrieval in the caller's process, no broker:
  per request one embeddings call with one input (httpx, with the OpenAI SDK's
  rules: base64 vectors, its connection limits, on 429/408/409/5xx or a connection
  error wait Retry-After or its backoff and retry, at most 2 retries; each owner an
  agent with its own client), then the worker's own search and
  ranking through `worker.pipeline.process` given that vector (so the two systems
  differ in how they embed and in the broker, not in how they search).
- "recallq": a worker with RECALLQ_EMBED_PROVIDER=openai at the same server, built as
  `recallq worker run` builds it (`worker.cli.open_embedder`), requests over RabbitMQ
  through `RetrievalClient`.

Each system gets the same open-loop query stream at each offered load, three memory
types a request; every query text is distinct, so the worker's query-vector cache
hides no call (its hits are reported, and are 0). Between runs the server's record
is cleared and its rate limit refilled; each load gets a fresh worker (its limiter
starts at RECALLQ_EMBED_CONCURRENCY) after a short warm-up of its own queries.
"""

from __future__ import annotations

import asyncio
import base64
import multiprocessing
import random
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.common import RESULTS, delete_queues, percentiles, publish, running_worker
from benchmarks.data import OPENERS, WORDS
from benchmarks.load import open_loop
from benchmarks.openai_server import Call, EmbeddingServer, hashed_encoder
from producer.client import RetrievalClient, RetrievalError, RetrievalTimeout
from schemas.logs import configure_logging
from schemas.messages import MemoryType, RetrievalRequest
from worker.cli import close_embedder, open_embedder
from worker.embedding.remote import RemoteEmbedder
from worker.outcomes import Answered, Outcome
from worker.pipeline import Dependencies, process
from worker.settings import WorkerSettings
from worker.store import Memory, SQLiteStore
from worker.vectors import Vectors

LATENCY_S = 0.08
CALLS_PER_MINUTE = 3000.0
DIMENSIONS = 384
MODEL = "text-embedding-3-small"  # any name: the server serves any
OWNERS = 20
PER_TYPE = 100
TYPES = (MemoryType.CONVERSATION, MemoryType.LONG_TERM, MemoryType.PROCEDURAL)
LIMITS = {memory_type.value: 5 for memory_type in TYPES}
LOADS = (10, 25, 50, 100, 200)
QUICK_LOADS = (10, 100)
SECONDS, QUICK_SECONDS = 10.0, 3.0
WARMUP_S = 1.0
TIMEOUT_S = 10.0  # a request's whole budget, both systems (the RPC timeout)
SDK_MAX_RETRIES = 2  # the OpenAI SDK's defaults
SDK_FIRST_BACKOFF_S, SDK_MOST_BACKOFF_S = 0.5, 8.0
SDK_RETRIED = {408, 409, 429}  # and every 5xx


@dataclass(frozen=True)
class Provider:
    """The simulated provider, and the warm-up each run gets."""

    latency_s: float = LATENCY_S
    calls_per_minute: float = CALLS_PER_MINUTE
    warmup_s: float = WARMUP_S

    def described(self) -> dict[str, Any]:
        return {
            "latency_ms_per_call": round(self.latency_s * 1000, 1),
            "calls_per_minute": self.calls_per_minute,
            "burst_calls": max(1.0, self.calls_per_minute / 60),
            "past_the_limit": "429 with Retry-After and retry-after-ms (after the latency)",
            "encoder": f"hashed_encoder({DIMENSIONS}): microseconds a call; the cost of a "
            "call is its fixed latency and its place in the rate limit only",
        }


Ask = Callable[[str, str], Awaitable[str | None]]  # (query, owner) -> None (ok) or error kind


def owner(index: int) -> str:
    return f"agent-{index:02d}"


def seed_memories(rng: random.Random) -> list[Memory]:
    """OWNERS x TYPES x PER_TYPE memories written in the words the queries use."""
    return [
        Memory(
            id=f"{o}-{t.value}-{i}",
            memory_id=owner(o),
            memory_type=t.value,
            content=f"{' '.join(rng.sample(WORDS, 4))} (note {i} of {owner(o)})",
            timestamp=1_790_000_000.0 + rng.uniform(0, 5_000_000),
            importance=rng.random(),
        )
        for o in range(OWNERS)
        for t in TYPES
        for i in range(PER_TYPE)
    ]


async def seed_store(path: Path) -> int:
    """The store, embedded here with the server's own encoder: seeding spends none of
    the provider's rate limit."""
    memories = seed_memories(random.Random(7))
    encode = hashed_encoder(DIMENSIONS)
    store = SQLiteStore(path, writable=True)
    for start in range(0, len(memories), 1000):
        chunk = memories[start : start + 1000]
        await store.upsert(chunk, encode([m.content for m in chunk]))
    await store.close()
    return len(memories)


def queries(count: int, salt: str) -> list[tuple[str, str]]:
    """`count` distinct (query, owner) pairs in the memories' words."""
    rng = random.Random(salt)
    return [
        (f"{rng.choice(OPENERS)} {' '.join(rng.sample(WORDS, 3))} ({salt} {i})",
         owner(rng.randrange(OWNERS)))
        for i in range(count)
    ]  # fmt: skip


@dataclass
class Tally:
    """What the caller saw of one run."""

    latencies_ms: list[float] = field(default_factory=list)  # completed ok
    errors: Counter[str] = field(default_factory=Counter)
    sends: list[float] = field(default_factory=list)  # perf_counter of each send

    def recorder(self, ask: Ask) -> Callable[[str, str], Awaitable[None]]:
        """`ask` for open_loop: it never raises; each request is counted once."""

        async def call(query: str, memory_id: str) -> None:
            started = time.perf_counter()
            self.sends.append(started)
            try:
                kind = await ask(query, memory_id)
            except Exception as exc:  # a bug of this benchmark is still counted
                kind = f"raised {type(exc).__name__}"
            if kind is None:
                self.latencies_ms.append((time.perf_counter() - started) * 1000)
            else:
                self.errors[kind] += 1

        return call


class _Failed(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass(frozen=True)
class _Queued:
    request: RetrievalRequest
    received: float


class Before:
    """The seed's retrieval: one embeddings call per query, as the OpenAI SDK makes it,
    then the worker's search and ranking in the caller's process.

    Each owner is an agent with its own client (as each agent process has its own SDK
    client). One client for all: at 200 req/s its httpx pool, which scans every
    connection for every queued request on each event, took a whole core by itself."""

    def __init__(self, base_url: str, store: SQLiteStore) -> None:
        self.base_url = base_url
        self.clients: dict[str, httpx.AsyncClient] = {}
        self.deps = Dependencies(embed=_given(np.zeros((0, DIMENSIONS), np.float32)), store=store)

    async def ask(self, query: str, memory_id: str) -> str | None:
        try:
            async with asyncio.timeout(TIMEOUT_S):
                vector = await self.embed_one(self.client(memory_id), query)
                request = RetrievalRequest(
                    request_id=uuid.uuid4().hex, query=query, memory_id=memory_id, limits=LIMITS
                )
                deps = replace(self.deps, embed=_given(vector[None, :]))
                [outcome] = await process([_Queued(request, time.monotonic())], deps)
        except TimeoutError:
            return "timeout"
        except _Failed as failed:
            return failed.kind
        return _error_of(outcome)

    def client(self, agent: str) -> httpx.AsyncClient:
        if agent not in self.clients:
            self.clients[agent] = httpx.AsyncClient(
                base_url=self.base_url,
                limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),  # SDK's
                timeout=httpx.Timeout(TIMEOUT_S, connect=5.0),
            )
        return self.clients[agent]

    async def embed_one(self, client: httpx.AsyncClient, text: str) -> Vectors:
        """One call with one input; retried as the SDK retries; _Failed after that."""
        body = {"model": MODEL, "input": [text], "encoding_format": "base64"}
        for retries_left in range(SDK_MAX_RETRIES, -1, -1):
            try:
                response = await client.post("/embeddings", json=body)
            except httpx.TimeoutException:
                kind, wait = "timeout", _sdk_wait(None, retries_left)
            except httpx.HTTPError:
                kind, wait = "connection", _sdk_wait(None, retries_left)
            else:
                if response.status_code == 200:
                    encoded = response.json()["data"][0]["embedding"]
                    return np.frombuffer(base64.b64decode(encoded), dtype="<f4")
                kind = (
                    "rate_limited"
                    if response.status_code == 429
                    else f"http_{response.status_code}"
                )
                if response.status_code not in SDK_RETRIED and response.status_code < 500:
                    break
                wait = _sdk_wait(response.headers, retries_left)
            if retries_left:
                await asyncio.sleep(wait)  # the SDK's own wait before a retry
        raise _Failed(kind)

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()


def _given(vectors: Vectors) -> Callable[..., Awaitable[Vectors]]:
    async def embed(texts: Sequence[str], deadline: float | None = None) -> Vectors:
        return vectors

    return embed


def _sdk_wait(headers: httpx.Headers | None, retries_left: int) -> float:
    """The OpenAI SDK's wait: retry-after-ms or Retry-After (seconds) when given and at
    most two minutes, else 0.5 s doubling per retry (at most 8 s) less up to 25 % jitter."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            seconds = float(headers.get(name, "")) / scale if headers is not None else None
        except ValueError:
            seconds = None
        if seconds is not None and 0 < seconds <= 120:
            return seconds
    done = SDK_MAX_RETRIES - retries_left
    return min(SDK_FIRST_BACKOFF_S * 2.0**done, SDK_MOST_BACKOFF_S) * (1 - 0.25 * random.random())


def _error_of(outcome: Outcome) -> str | None:
    if isinstance(outcome, Answered):
        error = outcome.response.error
        return None if error is None else str(error.code)
    return type(outcome).__name__.lower()


@asynccontextmanager
async def recallq_worker(
    server: ServerProcess, store: SQLiteStore, amqp_url: str | None
) -> AsyncIterator[tuple[Ask, RemoteEmbedder]]:
    """A fresh worker with provider openai at `server`, and its RPC `ask`."""
    settings = WorkerSettings(
        queue_prefix=f"recallq-remote-{uuid.uuid4().hex[:8]}", metrics_port=-1,
        store_url=f"sqlite:///{store.path}", embed_provider="openai", embed_model=MODEL,
        embed_base_url=server.base_url,
    )  # fmt: skip
    if amqp_url:
        settings = settings.model_copy(update={"amqp_url": amqp_url})
    embedder = await open_embedder(settings)  # as `recallq worker run` opens it
    assert isinstance(embedder, RemoteEmbedder)
    try:
        async with (
            running_worker(settings, embedder, store),
            RetrievalClient(settings, timeout=TIMEOUT_S) as client,
        ):
            yield _rpc(client), embedder
    finally:
        await close_embedder(embedder)
        await delete_queues(settings)


def _rpc(client: RetrievalClient) -> Ask:
    async def ask(query: str, memory_id: str) -> str | None:
        try:
            reply = await client.retrieve(query, memory_id, LIMITS, timeout=TIMEOUT_S)
        except RetrievalTimeout:
            return "timeout"
        except RetrievalError as exc:
            return str(exc.code)
        return None if reply.error is None else str(reply.error.code)

    return ask


async def measure(
    server: ServerProcess, provider: Provider, ask: Ask, rate: float, seconds: float
) -> dict[str, Any]:
    """One system at one offered load: a warm-up, then a clean record of the run."""
    # every agent once at least: its client's first call opens a connection
    count = max(int(rate * provider.warmup_s), OWNERS)
    warm = [(text, owner(i % OWNERS)) for i, (text, _) in enumerate(queries(count, f"w{rate}"))]
    await open_loop(Tally().recorder(ask), iter(warm), rate, count / rate)
    await server.do("wait_idle")
    await server.do("rate_limit", provider.calls_per_minute)  # full: every run starts alike
    await server.do("reset")
    tally = Tally()
    stream = iter(queries(int(rate * seconds) + 1, f"load{rate}"))  # the same for both
    cpu = time.process_time()
    _, elapsed = await open_loop(tally.recorder(ask), stream, rate, seconds)
    cpu = time.process_time() - cpu
    await server.do("wait_idle")
    result = summary(tally, rate, elapsed, await server.do("calls"))
    # this process: the load, and the before's clients and search or recallq's client and
    # worker (not the provider, nor RabbitMQ)
    result["caller_process_cpu_ms_per_request"] = round(cpu * 1000 / max(result["sent"], 1), 2)
    return result


def summary(tally: Tally, rate: float, elapsed: float, calls: list[Call]) -> dict[str, Any]:
    """The caller's side and the provider's side of one run."""
    sent = len(tally.sends)
    answered = [c for c in calls if c.status == 200]
    inputs = sum(c.inputs for c in answered)
    tokens = sum(_tokens(c) for c in answered)
    window = max(tally.sends) - min(tally.sends) if sent > 1 else 0.0
    return {
        "offered_rps": rate,
        "sent": sent,
        "sent_rps": round((sent - 1) / window, 1) if window else float(sent),
        "ok": len(tally.latencies_ms),
        "errors": dict(sorted(tally.errors.items())),
        "achieved_ok_rps": round(len(tally.latencies_ms) / elapsed, 1),
        "seconds": round(elapsed, 2),
        "latency_ms": percentiles(tally.latencies_ms),
        "calls": len(calls),
        "calls_per_request": round(len(calls) / max(sent, 1), 3),
        "inputs_per_call": round(inputs / max(len(answered), 1), 2),
        "tokens_per_request": round(tokens / max(sent, 1), 2),
        "http_429": sum(1 for c in calls if c.status == 429),
        "statuses": {str(k): v for k, v in sorted(Counter(c.status for c in calls).items())},
    }


def _tokens(call: Call) -> int:
    """The usage the server reported for an answered call (its rule: words + 1 an input)."""
    texts = call.body.get("input")
    texts = [texts] if isinstance(texts, str) else texts or []
    return sum(len(str(text).split()) + 1 for text in texts)


async def compare(
    loads: Sequence[int], seconds: float, provider: Provider, amqp_url: str | None
) -> dict[str, dict[str, Any]]:
    """Both systems at every load, on one seeded store and one provider."""
    runs: dict[str, dict[str, Any]] = {"before": {}, "recallq": {}}
    with tempfile.TemporaryDirectory() as scratch, ServerProcess(provider) as server:
        db = Path(scratch) / "remote-embed.db"
        await seed_store(db)
        store = SQLiteStore(db)  # read-only, shared: the systems never run at once
        await store.connect()
        before = Before(server.base_url, store)
        try:
            for rate in loads:
                runs["before"][str(rate)] = await measure(
                    server, provider, before.ask, rate, seconds
                )
                print_row("before", runs["before"][str(rate)])
                async with recallq_worker(server, store, amqp_url) as (ask, embedder):
                    hits = embedder.cache_stats.hits
                    result = await measure(server, provider, ask, rate, seconds)
                    result["query_cache_hits"] = embedder.cache_stats.hits - hits
                    result["allowed_calls_in_flight_after"] = embedder.allowed_concurrency
                runs["recallq"][str(rate)] = result
                print_row("recallq", result)
        finally:
            await before.aclose()
            await store.close()
    return runs


class ServerProcess:
    """The provider in a child process. On a thread of this one its HTTP work shares a
    core and the GIL with the callers: at the before's ~500 calls/s (200 req/s, most
    of them 429s retried) that queued the callers for seconds, which a real provider's
    own machines would not."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.base_url = ""
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        limits = (provider.latency_s, provider.calls_per_minute)
        self._process = context.Process(target=_serve, args=(child, *limits), daemon=True)

    def __enter__(self) -> ServerProcess:
        self._process.start()
        self.base_url = self._pipe.recv()
        return self

    def __exit__(self, *exc: object) -> None:
        self._ask("stop")
        self._process.join(timeout=30)

    async def do(self, name: str, *args: Any) -> Any:
        """The server's method `name` called (or its property read) in the child."""
        return await asyncio.to_thread(self._ask, name, *args)

    def _ask(self, name: str, *args: Any) -> Any:
        self._pipe.send((name, args))
        reply = self._pipe.recv()
        if isinstance(reply, Exception):
            raise reply
        return reply


def _serve(pipe: Connection, latency_s: float, calls_per_minute: float) -> None:
    """The child: one EmbeddingServer, driven over `pipe` until "stop"."""
    encode = hashed_encoder(DIMENSIONS)
    with EmbeddingServer(encode, latency_s=latency_s, calls_per_minute=calls_per_minute) as server:
        pipe.send(server.base_url)
        while (message := pipe.recv())[0] != "stop":
            name, args = message
            try:
                found = getattr(server, name)
                pipe.send(found(*args) if callable(found) else found)
            except Exception as exc:
                pipe.send(exc)
    pipe.send(None)


COLUMNS = ("system", "offered", "sent/s", "ok/s", "p50 ms", "p99 ms", "errors",
           "calls/req", "inputs/call", "tokens/req", "429s")  # fmt: skip


def cells(system: str, run: dict[str, Any]) -> list[str]:
    latency = run["latency_ms"]
    errors = ", ".join(f"{kind} {n}" for kind, n in run["errors"].items()) or "0"
    return [
        system, f"{run['offered_rps']:g}", f"{run['sent_rps']:g}", f"{run['achieved_ok_rps']:g}",
        f"{latency.get('p50', float('nan')):g}", f"{latency.get('p99', float('nan')):g}",
        errors, f"{run['calls_per_request']:.3f}", f"{run['inputs_per_call']:g}",
        f"{run['tokens_per_request']:g}", str(run["http_429"]),
    ]  # fmt: skip


def print_row(system: str, run: dict[str, Any]) -> None:
    print("  ".join(f"{cell:>11}" for cell in cells(system, run)), flush=True)


def markdown(results: dict[str, Any]) -> str:
    """The README's section: what was measured, and the table."""
    provider = results["provider"]
    lines = [
        f"Remote embeddings ({results['seconds_per_load']:g} s a load, open loop, "
        f"{provider['latency_ms_per_call']:g} ms a call, {provider['calls_per_minute']:g} "
        f"calls/min, burst {provider['burst_calls']:g}; {results['store']['memories']:,} "
        f"memories, 3 memory types a request; recallq with RECALLQ_EMBED_CONCURRENCY "
        f"{results['recallq_settings']['embed_concurrency']}):",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + " --- |" * len(COLUMNS),
    ]
    for rate in results["loads"]:
        for system in ("before", "recallq"):
            lines.append(
                "| " + " | ".join(cells(system, results["runs"][system][str(rate)])) + " |"
            )
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> Path:
    """ok/s and calls per request against the offered load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rps, calls) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    loads = results["loads"]
    rps.plot(loads, loads, ":", color="tab:gray", label="offered")
    for system, colour in (("before", "tab:gray"), ("recallq", "tab:blue")):
        runs = [results["runs"][system][str(rate)] for rate in loads]
        rps.plot(loads, [r["achieved_ok_rps"] for r in runs], "-o", color=colour, label=system)
        calls.plot(loads, [r["calls_per_request"] for r in runs], "-o", color=colour, label=system)
    rps.set(xlabel="offered (requests/s)", ylabel="answered ok (requests/s)")
    calls.set(xlabel="offered (requests/s)", ylabel="provider calls per request")
    for axes in (rps, calls):
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
    provider = results["provider"]
    figure.suptitle(f"{provider['latency_ms_per_call']:g} ms a call, "
                    f"{provider['calls_per_minute']:g} calls/min")  # fmt: skip
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


async def benchmark(
    loads: Sequence[int],
    seconds: float,
    results_dir: Path = RESULTS,
    *,
    provider: Provider | None = None,
    amqp_url: str | None = None,
    name: str = "remote-embed",
) -> Path:
    """Run, print, and write the JSON (and a PNG beside it); the JSON's path."""
    provider = provider or Provider()
    print("  ".join(f"{column:>11}" for column in COLUMNS), flush=True)
    started = time.perf_counter()
    runs = await compare(loads, seconds, provider, amqp_url)
    settings = WorkerSettings()
    results: dict[str, Any] = {
        "provider": provider.described(),
        "store": {"owners": OWNERS, "memory_types": [t.value for t in TYPES],
                  "memories": OWNERS * len(TYPES) * PER_TYPE, "dimensions": DIMENSIONS},
        "loads": list(loads),
        "seconds_per_load": seconds,
        "warmup_s": provider.warmup_s,
        "request_timeout_s": TIMEOUT_S,
        "before": "one call of one input per request, OpenAI SDK retry rules (2 retries), "
        "a client per agent (owner); search and ranking by worker.pipeline.process in the "
        "caller's process",
        "recallq_settings": {"embed_concurrency": settings.embed_concurrency,
                             "max_batch": settings.max_batch, "search": settings.search},
        "queries": "distinct texts in the memories' words: the query-vector cache hides no call",
        "tokens": "the server's usage (words + 1 an input) summed over answered calls / requests",
        "runs": runs,
        "wall_s": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    return publish(name, results, results_dir, plot, markdown)


def main(
    quick: bool = False,
    results_dir: Path | None = None,
    loads: Sequence[int] | None = None,
    latency_ms: float | None = None,
    calls_per_minute: float | None = None,
) -> int:
    """The command: the default loads (10 s each) or --quick's (3 s each)."""
    configure_logging("error")  # no line per batch, nor the worker's start-up warnings
    provider = Provider(
        LATENCY_S if latency_ms is None else latency_ms / 1000,
        CALLS_PER_MINUTE if calls_per_minute is None else calls_per_minute,
        WARMUP_S / 2 if quick else WARMUP_S,
    )
    asyncio.run(
        benchmark(
            loads or (QUICK_LOADS if quick else LOADS),
            QUICK_SECONDS if quick else SECONDS,
            results_dir or RESULTS,
            provider=provider,
            name="remote-embed-quick" if quick else "remote-embed",
        )
    )
    return 0
