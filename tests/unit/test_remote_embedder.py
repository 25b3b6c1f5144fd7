"""The remote embedder against the OpenAI-compatible test server (a cheap deterministic
encoder, no model): the vectors, the wire forms (base64 and float, dimensions, Azure),
dedup and the cache, calls cut to the provider's limits, rate limiting (Retry-After,
AIMD), retries within the deadline, refusals that name the setting, and the key kept
out of every message and log line."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from benchmarks.openai_server import Call, EmbeddingServer, Fault, hashed_encoder
from schemas.settings import settings_error_line
from worker.embedding import openai_api as api
from worker.embedding.cache import VectorCache
from worker.embedding.limiter import AdaptiveLimiter
from worker.embedding.remote import CacheKey, RemoteEmbedder, RemoteSpec
from worker.errors import ConfigError, EmbeddingRefused, EmbeddingUnavailable
from worker.settings import WorkerSettings

KEY = "sk-test-7c1e0f52a9"
NATIVE = 32
encode = hashed_encoder(NATIVE)


def oracle(texts: list[str], dimensions: int = 0) -> np.ndarray:
    """What the provider's vectors must be: the encoder's rows, cut to `dimensions` and
    made unit length again (text-embedding-3's shortening)."""
    rows = encode(texts)[:, :dimensions] if dimensions else encode(texts)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture
def server() -> Iterator[EmbeddingServer]:
    with EmbeddingServer(encode, api_key=KEY, models=["small"]) as running:
        yield running


def spec_for(server: EmbeddingServer, **overrides: Any) -> RemoteSpec:
    values: dict[str, Any] = {
        "provider": "openai", "model": "small", "base_url": server.base_url, "api_key": KEY,
        "timeout_s": 5.0, "retry_s": 5.0, "connect_wait_s": 2.0,
    }  # fmt: skip
    return RemoteSpec(**{**values, **overrides})


@pytest.fixture
async def embedder(server: EmbeddingServer) -> AsyncIterator[RemoteEmbedder]:
    connected = await RemoteEmbedder.connect(spec_for(server))
    server.reset()  # the probe call
    yield connected
    await connected.aclose()


class Recorder:
    """An observer that keeps what the metrics would hear. `saw_429` is set as the
    embedder hears a 429, before it tells its limiter (nothing runs in between)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int | None]] = []
        self.retries: list[str] = []
        self.halvings = 0
        self.saw_429 = asyncio.Event()

    def called(self, status: str, inputs: int, tokens: int | None, seconds: float) -> None:
        self.calls.append((status, inputs, tokens))
        if status == "429":
            self.saw_429.set()

    def retried(self, reason: str) -> None:
        self.retries.append(reason)

    def rate_limited(self) -> None:
        self.halvings += 1


def most_at_once(calls: list[Call]) -> int:
    """The most calls the server was answering at one time."""
    events = sorted([(c.received, 1) for c in calls] + [(c.answered, -1) for c in calls])
    level = most = 0
    for _, step in events:
        level += step
        most = max(most, level)
    return most


# -- vectors and wire forms ------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["base64", "float"])
@pytest.mark.parametrize("dimensions", [0, 12])
async def test_vectors_are_the_providers_in_input_order(
    server: EmbeddingServer, encoding: str, dimensions: int
) -> None:
    spec = spec_for(server, encoding=encoding, dimensions=dimensions)
    embedder = await RemoteEmbedder.connect(spec)
    texts = [f"memory number {i}" for i in range(9)]  # the server lists data in reverse
    vectors = await embedder.embed(texts)
    await embedder.aclose()
    assert embedder.dimensions == (dimensions or NATIVE)
    assert vectors.dtype == np.float32 and vectors.shape == (9, embedder.dimensions)
    assert np.allclose(vectors, oracle(texts, dimensions), atol=1e-6)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    body = server.calls[-1].body
    assert body["encoding_format"] == encoding and body["model"] == "small"
    assert body.get("dimensions") == (dimensions or None)  # sent only when set
    assert server.calls[-1].headers["authorization"] == f"Bearer {KEY}"


async def test_unnormalised_rows_are_made_unit_length() -> None:
    raw = b'{"data": [{"index": 0, "embedding": [3.0, 4.0]}], "usage": {"prompt_tokens": 2}}'
    answer = api.parse_answer(raw, 1, None)
    assert np.allclose(answer.vectors, [[0.6, 0.8]]) and answer.tokens == 2
    with pytest.raises(api.Malformed):
        api.parse_answer(b'{"data": [{"index": 0, "embedding": "not base64!"}]}', 1, None)
    with pytest.raises(api.Malformed):
        api.parse_answer(b'{"data": [{"index": 0, "embedding": [NaN, 1.0]}]}', 1, None)


async def test_azure_calls_the_deployment_with_api_version_and_an_api_key_header(
    server: EmbeddingServer,
) -> None:
    server.models = {"dep-small"}
    for base_url in (server.azure_url("dep-small"), f"http://127.0.0.1:{server.port}"):
        spec = spec_for(server, provider="azure", model="dep-small", base_url=base_url,
                        api_version="2024-10-21")  # fmt: skip
        embedder = await RemoteEmbedder.connect(spec)
        vectors = await embedder.embed(["a question"])
        await embedder.aclose()
        assert np.allclose(vectors, oracle(["a question"]), atol=1e-6)
        call = server.calls[-1]
        assert call.path == "/openai/deployments/dep-small/embeddings?api-version=2024-10-21"
        assert call.headers["api-key"] == KEY and "authorization" not in call.headers


# -- dedup, cache, cutting calls -----------------------------------------------------------


async def test_repeated_texts_cost_one_input_and_cached_texts_no_call(
    embedder: RemoteEmbedder, server: EmbeddingServer
) -> None:
    first = await embedder.embed(["alpha", "beta", "alpha"])
    assert [c.inputs for c in server.calls] == [2]
    assert np.array_equal(first[0], first[2])
    again = await embedder.embed(["beta", "alpha"])
    assert server.count() == 1  # both from the cache
    assert np.array_equal(again, first[[1, 0]])
    assert (embedder.cache_stats.lookups, embedder.cache_stats.hits) == (4, 2)


async def test_the_cache_key_names_the_model_and_the_size(server: EmbeddingServer) -> None:
    shared: VectorCache[CacheKey] = VectorCache(100)
    full = await RemoteEmbedder.connect(spec_for(server), cache=shared)
    short = await RemoteEmbedder.connect(spec_for(server, dimensions=8), cache=shared)
    server.reset()
    a = await full.embed(["the same text"])
    b = await short.embed(["the same text"])
    await full.aclose()
    await short.aclose()
    assert server.count() == 2  # the short one did not take the full one's vector
    assert a.shape == (1, NATIVE) and b.shape == (1, 8)
    assert np.allclose(b, oracle(["the same text"], 8), atol=1e-6)


async def test_calls_are_cut_to_max_inputs_and_max_call_tokens(server: EmbeddingServer) -> None:
    spec = spec_for(server, max_inputs=3, max_call_tokens=25)
    embedder = await RemoteEmbedder.connect(spec)
    server.reset()
    by_inputs = [f"t{i}" for i in range(7)]  # 2 bytes each: only max_inputs cuts
    vectors = await embedder.embed(by_inputs)
    assert sorted(c.inputs for c in server.calls) == [1, 3, 3]
    assert np.allclose(vectors, oracle(by_inputs), atol=1e-6)
    server.reset()
    by_tokens = [f"ten bytes{i}" for i in range(5)]  # 10 bytes each: 2 fit in 25
    vectors = await embedder.embed(by_tokens)
    await embedder.aclose()
    assert sorted(c.inputs for c in server.calls) == [1, 2, 2]
    assert np.allclose(vectors, oracle(by_tokens), atol=1e-6)


async def test_a_text_over_the_input_limit_is_cut_at_a_character_boundary(
    server: EmbeddingServer,
) -> None:
    embedder = await RemoteEmbedder.connect(spec_for(server, max_input_tokens=9))
    text = "ééééééé"  # 7 characters, 14 UTF-8 bytes: 4 whole characters fit in 9
    vectors = await embedder.embed([text])
    await embedder.aclose()
    assert server.calls[-1].body["input"] == ["éééé"]
    assert np.allclose(vectors, oracle(["éééé"]), atol=1e-6)
    assert embedder.count_tokens(text) == 9 and embedder.count_tokens("abc") == 3


# -- rate limiting -------------------------------------------------------------------------


@pytest.mark.parametrize("as_ms", [False, True])
async def test_no_call_starts_before_retry_after(
    embedder: RemoteEmbedder, server: EmbeddingServer, as_ms: bool
) -> None:
    recorder = Recorder()
    embedder.observer = recorder
    server.inject(Fault("rate_limited", retry_after=0.4, retry_after_ms=as_ms), calls=1)
    first = asyncio.ensure_future(embedder.embed(["wave 0"]))
    await asyncio.wait_for(recorder.saw_429.wait(), 5)  # the embedder has heard it
    texts = [f"wave {i}" for i in range(1, 6)]
    others = await asyncio.gather(*(embedder.embed([text]) for text in texts))
    vectors = np.vstack([await first, *others])
    assert np.allclose(vectors, oracle(["wave 0", *texts]), atol=1e-6)
    [refused] = [c for c in server.calls if c.status == 429]
    later = [c for c in server.calls if c is not refused]
    assert len(later) == 6  # the retry and the five that waited with it
    assert all(c.received >= refused.answered + 0.4 - 0.01 for c in later)


def test_retry_after_reads_milliseconds_seconds_and_http_dates() -> None:
    now = 1_800_000_000.0
    date = format_datetime(datetime.fromtimestamp(now + 3, UTC), usegmt=True)
    assert api.retry_after({"retry-after-ms": "250", "retry-after": "9"}, now) == 0.25
    assert api.retry_after({"retry-after": "2"}, now) == 2.0
    assert api.retry_after({"retry-after": date}, now) == pytest.approx(3.0, abs=1.0)
    assert api.retry_after({"retry-after": "soon"}, now) is None
    assert api.retry_after({}, now) is None


def test_aimd_halves_once_per_burst_and_regains_one_slot_per_round() -> None:
    clock = [100.0]
    limiter = AdaptiveLimiter(8, clock=lambda: clock[0], jitter=lambda: 0.0)
    wait, halved = limiter.rate_limited(epoch=0, retry_after=None)
    assert halved and limiter.allowed == 4 and wait == pytest.approx(0.125)
    _, again = limiter.rate_limited(epoch=0, retry_after=2.0)  # sent before the halving
    assert not again and limiter.allowed == 4 and limiter.not_before == 102.0
    limiter.rate_limited(epoch=1, retry_after=0.0)
    assert limiter.allowed == 2
    regained = []
    for _ in range(2 + 3 + 4 + 5 + 6 + 7 + 10):
        limiter.succeeded()
        regained.append(limiter.allowed)
    assert regained[1] == 3 and regained[4] == 4 and limiter.allowed == 8  # never past most


async def test_a_429_halves_the_calls_in_flight_and_successes_win_them_back(
    server: EmbeddingServer,
) -> None:
    embedder = await RemoteEmbedder.connect(spec_for(server, concurrency=8))
    recorder = Recorder()
    embedder.observer = recorder
    server.latency_s = 0.3  # long enough for every call of a wave to overlap
    server.reset()
    await asyncio.gather(*(embedder.embed([f"before {i}"]) for i in range(16)))
    before = most_at_once(server.calls)
    server.inject(Fault("rate_limited", retry_after=0.05), calls=1)
    await embedder.embed(["the refused one"])
    halved = embedder.allowed_concurrency
    server.reset()
    await asyncio.gather(*(embedder.embed([f"after {i}"]) for i in range(16)))
    during = most_at_once(server.calls)  # 4 at first, one more after each round of 4+
    server.latency_s = 0.0
    for i in range(30):
        await embedder.embed([f"regain {i}"])
    await embedder.aclose()
    assert before == 8 and halved == 4 and recorder.halvings == 1
    assert during <= 6, f"{during} calls at once after halving to 4"
    assert embedder.allowed_concurrency == 8
    assert recorder.retries == ["429"]


# -- retries and deadlines -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (Fault("error", status=500), "5xx"),
        (Fault("error", status=503), "5xx"),
        (Fault("truncated"), "invalid"),
        (Fault("slow", delay_s=2.0), "timeout"),
    ],
)
async def test_transient_failures_are_retried_until_an_answer(
    server: EmbeddingServer, fault: Fault, reason: str
) -> None:
    embedder = await RemoteEmbedder.connect(spec_for(server, timeout_s=0.3))
    recorder = Recorder()
    embedder.observer = recorder
    server.inject(fault, calls=2)
    vectors = await embedder.embed(["retry me"])
    await embedder.aclose()
    assert np.allclose(vectors, oracle(["retry me"]), atol=1e-6)
    assert recorder.retries == [reason, reason]
    assert [status for status, _, _ in recorder.calls] == [reason, reason, "ok"]
    assert recorder.calls[-1][2] == 3  # the usage's tokens, counted from the answer
    assert embedder.usable


@pytest.mark.parametrize(
    ("fault", "said"),
    [
        (Fault("error", status=500), "HTTP 500"),
        (Fault("slow", delay_s=5.0), "no answer within"),
        (Fault("rate_limited"), "HTTP 429"),
    ],
)
async def test_a_provider_that_never_recovers_fails_at_the_deadline_not_after(
    embedder: RemoteEmbedder, server: EmbeddingServer, fault: Fault, said: str
) -> None:
    server.inject(fault)
    started = time.monotonic()
    with pytest.raises(EmbeddingUnavailable) as failed:
        await embedder.embed(["never answered"], deadline=time.time() + 0.8)
    took = time.monotonic() - started
    assert not isinstance(failed.value, EmbeddingRefused) and failed.value.retryable
    assert took <= 0.8 + 0.5, f"gave up {took:.2f} s after the call, deadline 0.8 s"
    assert "gave no vectors in time" in str(failed.value) and said in str(failed.value)
    assert "attempt" in str(failed.value)
    assert embedder.usable  # a provider in trouble is not a refused configuration


async def test_a_retry_after_past_the_deadline_fails_at_once(
    embedder: RemoteEmbedder, server: EmbeddingServer
) -> None:
    server.inject(Fault("rate_limited", retry_after=30))
    started = time.monotonic()
    with pytest.raises(EmbeddingUnavailable, match="Retry-After 30 s"):
        await embedder.embed(["later"], deadline=time.time() + 5)
    assert time.monotonic() - started < 2
    assert server.count() == 1


async def test_without_a_deadline_calls_are_retried_for_retry_s(server: EmbeddingServer) -> None:
    embedder = await RemoteEmbedder.connect(spec_for(server, retry_s=0.6))
    server.inject(Fault("error", status=502))
    started = time.monotonic()
    with pytest.raises(EmbeddingUnavailable, match="HTTP 502"):
        await embedder.embed(["ingest this"])
    await embedder.aclose()
    assert time.monotonic() - started <= 0.6 + 0.5
    assert server.count(502) >= 2


# -- refusals ------------------------------------------------------------------------------


def break_key(server: EmbeddingServer) -> None:
    server.api_key = "sk-a-different-key"  # the server echoes the key it was given


def forget_model(server: EmbeddingServer) -> None:
    server.models = {"another-model"}


REFUSALS = {
    "401": (break_key, ["RECALLQ_EMBED_API_KEY", "HTTP 401"]),
    "404": (forget_model, ["RECALLQ_EMBED_BASE_URL", "RECALLQ_EMBED_MODEL", "HTTP 404"]),
    "400": (
        lambda s: s.inject(Fault("error", status=400)),
        ["RECALLQ_EMBED_MODEL", "RECALLQ_EMBED_DIMENSIONS", "error processing your request"],
    ),
    "wrong-count": (
        lambda s: s.inject(Fault("wrong_count")),
        ["0 vectors for 1 inputs", "RECALLQ_EMBED_MAX_INPUTS"],
    ),
    "wrong-size": (
        lambda s: s.inject(Fault("wrong_size")),
        ["31 dimensions where 32", "RECALLQ_EMBED_DIMENSIONS"],
    ),
}


@pytest.mark.parametrize("case", REFUSALS)
async def test_a_refusal_names_the_setting_and_makes_the_embedder_unusable_until_a_success(
    embedder: RemoteEmbedder, server: EmbeddingServer, case: str
) -> None:
    refuse, says = REFUSALS[case]
    with capture_logs() as logs:
        refuse(server)
        for attempt in range(2):
            with pytest.raises(EmbeddingRefused) as refused:
                await embedder.embed([f"refused {attempt}"])
            assert not embedder.usable
        server.api_key, server.models = KEY, {"small"}
        server.heal()
        await embedder.embed(["accepted again"])
    message = str(refused.value)
    assert all(part in message for part in says), message
    assert "\n" not in message and not refused.value.retryable
    assert server.count() == 3  # a refusal is not retried
    assert embedder.usable
    events = [entry["event"] for entry in logs]
    assert events.count("embedding provider refuses the configuration; not ready") == 1
    assert events.count("embedding provider accepts the configuration again; ready") == 1
    assert KEY not in message and KEY not in repr(logs)
    assert "sk-a-different-key" not in repr(logs)


async def test_the_key_is_in_no_message_log_or_description(server: EmbeddingServer) -> None:
    server.api_key = None
    with capture_logs() as logs:
        embedder = await RemoteEmbedder.connect(spec_for(server))
        server.api_key = "sk-other"
        with pytest.raises(EmbeddingRefused) as refused:
            await embedder.embed(["x"])
        await embedder.aclose()
    # the server echoes the key it was given, the client's: scrubbed from the message
    assert "Incorrect API key provided: ***" in str(refused.value)
    for text in (str(refused.value), repr(logs), embedder.description, repr(embedder.spec)):
        assert KEY not in text


# -- starting --------------------------------------------------------------------------------


async def test_start_learns_the_size_and_describes_the_provider(server: EmbeddingServer) -> None:
    embedder = await RemoteEmbedder.connect(spec_for(server))
    await embedder.aclose()
    assert embedder.dimensions == NATIVE and embedder.lanes == 4
    assert embedder.description == f"openai small ({NATIVE} dims) at {server.base_url}"
    assert (embedder.max_inputs, embedder.max_call_tokens) == (2048, 300_000)


async def test_start_refuses_a_provider_whose_size_differs_from_the_setting(
    server: EmbeddingServer,
) -> None:
    server.inject(Fault("wrong_size"))  # as a server that ignores `dimensions` would
    with pytest.raises(ConfigError) as refused:
        await RemoteEmbedder.connect(spec_for(server, dimensions=16))
    message = str(refused.value)
    assert "15 dimensions where 16 was expected" in message
    assert "RECALLQ_EMBED_DIMENSIONS" in message and "'small'" in message and "openai" in message


async def test_start_refuses_a_wrong_key_at_once_in_one_line(server: EmbeddingServer) -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError) as refused:
        await RemoteEmbedder.connect(spec_for(server, api_key="sk-wrong-one", connect_wait_s=30))
    assert time.monotonic() - started < 2  # not waited out: it will not mend
    assert "RECALLQ_EMBED_API_KEY" in str(refused.value) and "\n" not in str(refused.value)
    assert "sk-wrong-one" not in str(refused.value)


async def test_start_waits_for_an_unreachable_provider_then_names_the_url(
    server: EmbeddingServer,
) -> None:
    port = server.port
    server.stop()  # nothing listens there now
    spec = spec_for(server, base_url=f"http://127.0.0.1:{port}/v1", connect_wait_s=0.6,
                    timeout_s=0.2)  # fmt: skip
    started = time.monotonic()
    with pytest.raises(ConfigError) as refused:
        await RemoteEmbedder.connect(spec)
    assert time.monotonic() - started <= 0.6 + 0.5
    message = str(refused.value)
    assert "RECALLQ_EMBED_BASE_URL" in message and f"127.0.0.1:{port}" in message
    assert "ConnectError" in message and "\n" not in message


# -- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"embed_provider": "openai"}, "needs RECALLQ_EMBED_MODEL"),
        ({"embed_provider": "azure", "embed_model": "dep"}, "needs RECALLQ_EMBED_BASE_URL"),
        ({"embed_provider": "openai", "embed_model": "m", "embed_base_url": "ftp://h/v1"},
         "RECALLQ_EMBED_BASE_URL must be an http:// or https:// URL"),
        ({"embed_provider": "openai", "embed_model": "m", "embed_base_url": "http://h:x/v1"},
         "RECALLQ_EMBED_BASE_URL has no valid host and port"),
    ],
)  # fmt: skip
def test_settings_refuse_a_remote_provider_they_cannot_call(
    values: dict[str, str], says: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        WorkerSettings(**values)  # type: ignore[arg-type]
    assert says in settings_error_line(refused.value)


def test_the_spec_reads_the_key_file_and_never_shows_the_key(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(f"{KEY}\n")
    settings = WorkerSettings(
        embed_provider="openai", embed_model="small", embed_api_key_file=str(key_file),
        embed_dimensions=256, embed_concurrency=3, embed_cache_size=7, connect_wait_s=4,
    )  # fmt: skip
    spec = settings.remote_spec()
    assert spec.api_key == KEY and spec.base_url == "https://api.openai.com/v1"
    assert (spec.dimensions, spec.concurrency, spec.cache_size, spec.connect_wait_s) == (
        256, 3, 7, 4.0,
    )  # fmt: skip
    assert KEY not in repr(spec) and KEY not in repr(settings)
    assert settings.remote_label() == "openai small at https://api.openai.com/v1"
    missing = settings.model_copy(update={"embed_api_key_file": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="RECALLQ_EMBED_API_KEY_FILE"):
        missing.remote_spec()
    assert WorkerSettings().remote_label() == ""  # the local model


async def test_start_refuses_a_url_httpx_cannot_call_in_one_line() -> None:
    spec = RemoteSpec("openai", "small", base_url="http://127.0.0.1:port/v1", connect_wait_s=5)
    with pytest.raises(ConfigError, match="RECALLQ_EMBED_BASE_URL") as refused:
        await RemoteEmbedder.connect(spec)
    assert "Invalid port" in str(refused.value)


@pytest.mark.parametrize("behaviour", ["ignore", "refuse"])
async def test_a_server_that_cannot_shorten_gives_the_vectors_memorizz_stored(
    behaviour: Literal["ignore", "refuse"],
) -> None:
    """memorizz, asked for 16 dimensions of a server that ignores `dimensions` or refuses
    it (400), asks without it and cuts the full vectors to 16, unit length: the stored
    vectors. recallq's query vectors must be those, or nothing it returns is right."""
    with EmbeddingServer(encode, dimensions=behaviour) as server:
        embedder = await RemoteEmbedder.connect(spec_for(server, api_key="", dimensions=16))
        try:
            texts = ["tea with lemon", "the night train to Porto"]
            vectors = await embedder.embed(texts)
            assert embedder.dimensions == 16
            np.testing.assert_allclose(vectors, oracle(texts, 16), atol=1e-6)
            later = [call.body.get("dimensions") for call in server.calls[-1:]]
            assert later == ([16] if behaviour == "ignore" else [None])
            assert embedder.usable
        finally:
            await embedder.aclose()
