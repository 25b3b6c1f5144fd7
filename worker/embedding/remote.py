"""A remote embedding provider speaking the OpenAI embeddings API (OpenAI, Azure
OpenAI, and the servers that copy it: Ollama, vLLM, TEI, Infinity, LM Studio).

Plain httpx rather than the openai SDK: a request's vector is worth something only
until its deadline, so every retry here is bounded by it (the SDK retries on its own
schedule, which would fight that), and the calls in flight adapt to the provider's
429s across all batches (`worker.embedding.limiter`), which one SDK call cannot see.

`embed` serves what it can from the query-vector cache, sends the rest in calls cut
to the provider's limits (inputs per call, tokens per call; a text over the per-input
limit is cut to it, as a local model cuts at its own), all calls at once under the
limiter. 429, 5xx, timeouts, connection errors and answers cut short are retried
with backoff until the deadline, then EmbeddingUnavailable says what the provider
did. 400/401/403/404 and vectors of the wrong count or size are the configuration's
fault: EmbeddingRefused names the setting to check, and the embedder reports itself
not usable (readiness 503) until a call succeeds again.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import numpy as np
import structlog

from schemas.backoff import delays
from worker.embedding import openai_api as api
from worker.embedding.base import CacheStats
from worker.embedding.cache import VectorCache
from worker.embedding.limiter import AdaptiveLimiter
from worker.embedding.openai_api import Answer, RemoteSpec
from worker.errors import ConfigError, EmbeddingRefused, EmbeddingUnavailable
from worker.vectors import Vectors

__all__ = ["CacheKey", "EmbedObserver", "RemoteEmbedder", "RemoteSpec"]

log = structlog.get_logger(__name__)
PROBE_TEXT = "recallq probe"
FIRST_RETRY_S = 0.1  # 5xx, timeouts, connection errors: backoff from here, doubling
MOST_RETRY_S = 2.0
CacheKey = tuple[str, str, int, str]  # provider, model, dimensions, text


class EmbedObserver(Protocol):
    """What the metrics hear of each call (worker.metrics implements it)."""

    def called(self, status: str, inputs: int, tokens: int | None, seconds: float) -> None:
        """One HTTP call ended: ok, 429, 5xx, timeout, connection, invalid or refused."""
        ...

    def retried(self, reason: str) -> None: ...

    def rate_limited(self) -> None:
        """A 429 halved the calls allowed in flight."""
        ...


class _Unobserved:
    def called(self, status: str, inputs: int, tokens: int | None, seconds: float) -> None:
        pass

    def retried(self, reason: str) -> None:
        pass

    def rate_limited(self) -> None:
        pass


@dataclass(frozen=True)
class _Failure:
    """A call that may succeed if tried again."""

    reason: str  # the metric label: 429, 5xx, timeout, connection, invalid, dimensions
    what: str  # for messages: what the provider did
    retry_after: float | None = None


class _GaveUp(EmbeddingUnavailable):
    def __init__(self, message: str, last: str) -> None:
        super().__init__(message)
        self.last = last


class RemoteEmbedder:
    def __init__(
        self,
        spec: RemoteSpec,
        client: httpx.AsyncClient | None = None,
        dimensions: int = 0,
        cache: VectorCache[CacheKey] | None = None,
    ) -> None:
        """Not probed: `connect` is the way in (it learns `dimensions`; until then, any
        size of vector is taken). `cache` may be shared: its keys name the provider,
        model and size."""
        self.spec = spec
        self.dimensions = dimensions
        self.description = self._describe()
        self.max_inputs: int | None = spec.max_inputs
        self.max_call_tokens: int | None = spec.max_call_tokens
        self.observer: EmbedObserver = _Unobserved()  # set by the worker's metrics
        self._cache = cache if cache is not None else VectorCache[CacheKey](spec.cache_size)
        self.cache_stats: CacheStats = self._cache.stats
        self._limiter = AdaptiveLimiter(spec.concurrency)
        self._client = client or httpx.AsyncClient(
            limits=httpx.Limits(max_connections=spec.concurrency + 2), follow_redirects=False
        )
        self._url = api.endpoint(spec)
        self._refused: str | None = None  # why the provider refuses the configuration
        self._send_dimensions = True  # False once the server refused `dimensions` (400)

    @classmethod
    async def connect(
        cls,
        spec: RemoteSpec,
        client: httpx.AsyncClient | None = None,
        cache: VectorCache[CacheKey] | None = None,
    ) -> RemoteEmbedder:
        """An embedder that has made one call: the provider answers, and its vector size
        is known (and equals RECALLQ_EMBED_DIMENSIONS when set). ConfigError in one line
        otherwise, after waiting up to connect_wait_s for a provider not reachable yet."""
        embedder = cls(spec, client, cache=cache)
        try:
            await embedder._probe()
        except BaseException:
            await embedder.aclose()
            raise
        log.info(
            "embedding provider ready",
            provider=spec.provider,
            model=spec.model,
            url=spec.where,
            dimensions=embedder.dimensions,
        )
        return embedder

    @property
    def lanes(self) -> int:
        return self.spec.concurrency

    @property
    def usable(self) -> bool:
        return self._refused is None

    @property
    def allowed_concurrency(self) -> int:
        """Calls allowed in flight now (halved by 429s, regained as calls succeed)."""
        return self._limiter.allowed

    def count_tokens(self, text: str) -> int:
        """UTF-8 bytes, at most the per-input limit: never fewer than a tokenizer counts."""
        return min(self.spec.max_input_tokens, len(text.encode()))

    async def embed(self, texts: Sequence[str], deadline: float | None = None) -> Vectors:
        """One unit-length row per text; `deadline` (epoch seconds; None: retry_s from
        now) bounds the retries. EmbeddingUnavailable past it, EmbeddingRefused when the
        provider refuses the configuration."""
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        give_up = time.monotonic() + (
            self.spec.retry_s if deadline is None else deadline - time.time()
        )
        keys = {text: self._key(text) for text in texts}  # distinct texts
        cached = self._cache.lookup(keys.values())
        found = {text: cached[key] for text, key in keys.items() if key in cached}
        missing = [text for text in keys if text not in found]
        if missing:
            vectors = await self._embed_all(missing, give_up)
            found.update(zip(missing, vectors, strict=True))
            self._cache.remember([keys[text] for text in missing], vectors)
        return np.ascontiguousarray(np.stack([found[text] for text in texts]), dtype=np.float32)

    def close(self) -> None:
        """Nothing to do without a loop; `aclose` closes the connections."""

    async def aclose(self) -> None:
        await self._client.aclose()

    def _key(self, text: str) -> CacheKey:
        return (self.spec.provider, self.spec.model, self.dimensions, text)

    def calls_for(self, texts: Sequence[str]) -> list[list[str]]:
        """`texts`, each cut to the per-input limit, in calls of at most max_inputs
        texts and max_call_tokens estimated tokens."""
        calls: list[list[str]] = []
        tokens = 0
        for text in texts:
            cut = api.truncated(text, self.spec.max_input_tokens)
            cost = len(cut.encode())
            if (
                not calls
                or len(calls[-1]) >= self.spec.max_inputs
                or (tokens + cost > self.spec.max_call_tokens)
            ):
                calls.append([])
                tokens = 0
            calls[-1].append(cut)
            tokens += cost
        return calls

    async def _embed_all(self, texts: list[str], give_up: float) -> Vectors:
        calls = self.calls_for(texts)
        if len(calls) == 1:
            return await self._call(calls[0], give_up)
        return np.vstack(await _all_or_none([self._call(call, give_up) for call in calls]))

    async def _probe(self) -> None:
        wait = max(self.spec.connect_wait_s, self.spec.timeout_s)
        try:
            vectors = await self._call([PROBE_TEXT], time.monotonic() + wait, probing=True)
        except EmbeddingRefused as exc:
            raise ConfigError(str(exc)) from None
        except _GaveUp as exc:
            raise ConfigError(
                f"cannot get vectors from the embedding provider at {self.spec.where} within "
                f"{wait:g} s ({exc.last}): check RECALLQ_EMBED_BASE_URL and that the provider "
                "is up (RECALLQ_CONNECT_WAIT_S sets the wait)"
            ) from None
        # parse_answer held the vectors to RECALLQ_EMBED_DIMENSIONS, when set
        self.dimensions = vectors.shape[1]
        self.description = self._describe()

    def _describe(self) -> str:
        """What logs and `worker init` show: provider, model, size, URL (never the key)."""
        spec = self.spec
        return f"{spec.provider} {spec.model} ({self.dimensions} dims) at {spec.where}"

    async def _call(self, texts: list[str], give_up: float, *, probing: bool = False) -> Vectors:
        """One API call's vectors, retried (with backoff, under the limiter) until
        `give_up` (monotonic)."""
        started, attempts = time.monotonic(), 0
        last: _Failure | None = None
        backoff = delays(FIRST_RETRY_S, MOST_RETRY_S)
        while True:
            try:
                async with self._limiter.slot(give_up) as epoch:
                    attempts += 1
                    result = await self._attempt(texts, give_up)
                    wait = self._after(result, epoch, backoff)
            except TimeoutError:  # no slot before the deadline
                raise self._gave_up(attempts, last, started) from None
            if isinstance(result, Answer):
                return result.vectors
            last = result
            if time.monotonic() + wait >= give_up:
                raise self._gave_up(attempts, last, started)
            self.observer.retried(result.reason)
            report = log.warning if probing else log.debug
            report(
                "embedding provider failed; retrying",
                url=self.spec.where,
                error=result.what,
                retry_in_s=round(wait, 2),
            )
            if result.reason != "429":  # a 429's wait is the limiter's, for every call
                await asyncio.sleep(wait)

    def _after(self, result: Answer | _Failure, epoch: int, backoff: Iterator[float]) -> float:
        """Tell the limiter how the call went; the seconds before trying again."""
        if isinstance(result, Answer):
            self._limiter.succeeded()
            self._accepted()
            return 0.0
        if result.reason == "dimensions":  # asked again at once, without them
            return 0.0
        if result.reason == "429":
            wait, halved = self._limiter.rate_limited(epoch, result.retry_after)
            if halved:
                self.observer.rate_limited()
            return wait
        return next(backoff) * (0.5 + random.random() / 2)

    async def _attempt(self, texts: list[str], give_up: float) -> Answer | _Failure:
        """One HTTP call; raises EmbeddingRefused when the provider refuses it."""
        timeout = max(min(self.spec.timeout_s, give_up - time.monotonic()), 0.001)
        body = api.request_body(self.spec, texts, send_dimensions=self._send_dimensions)
        started = time.monotonic()
        status, tokens = "ok", None
        try:
            async with asyncio.timeout(timeout):
                response = await self._client.post(
                    self._url,
                    content=json.dumps(body).encode(),
                    headers=api.headers(self.spec),
                    timeout=timeout,
                )
            result = self._answer(response, len(texts))
            status = "ok" if isinstance(result, Answer) else result.reason
            tokens = result.tokens if isinstance(result, Answer) else None
            return result
        except (TimeoutError, httpx.TimeoutException):
            status = "timeout"
            return _Failure("timeout", f"no answer within {timeout:.1f} s")
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            status = "refused"
            where = f"the embedding provider URL {self.spec.where!r}"
            raise self._refuse(
                f"{where} is not one ({exc}): check RECALLQ_EMBED_BASE_URL"
            ) from None
        except httpx.HTTPError as exc:
            status = "connection"
            return _Failure("connection", f"{type(exc).__name__}: {_first_line(exc)}")
        except EmbeddingRefused:
            status = "refused"
            raise
        finally:
            self.observer.called(status, len(texts), tokens, time.monotonic() - started)

    def _answer(self, response: httpx.Response, count: int) -> Answer | _Failure:
        code = response.status_code
        if code == 429:
            after = api.retry_after(response.headers, time.time())
            said = "" if after is None else f", Retry-After {after:g} s"
            return _Failure("429", f"HTTP 429 (rate limited{said})", after)
        if code >= 500 or code == 408:
            return _Failure("5xx", f"HTTP {code}")
        if code in (400, 422) and self.spec.dimensions and self._send_dimensions:
            return self._without_dimensions(code)
        if not 200 <= code < 300:
            message = api.provider_message(response.content, self.spec.api_key)
            raise self._refuse(api.refusal(self.spec, code, message))
        try:
            asked = self.dimensions or self.spec.dimensions or None
            return api.parse_answer(response.content, count, asked)
        except api.Malformed as exc:
            return _Failure("invalid", f"an embeddings answer {exc}")
        except api.WrongShape as exc:
            raise self._refuse(api.shape_refusal(self.spec, str(exc))) from None

    def _without_dimensions(self, code: int) -> _Failure:
        """As memorizz does: a server that does not take `dimensions` is asked again at
        once without it, and its vectors are cut here (parse_answer) to the size memorizz
        stored. Should the 400 be for something else, the next answer refuses."""
        self._send_dimensions = False
        dimensions = self.spec.dimensions
        log.warning("the embedding provider refused `dimensions`; cutting its vectors",
                    url=self.spec.where, dimensions=dimensions)  # fmt: skip
        return _Failure("dimensions", f"HTTP {code} with dimensions={dimensions}", 0.0)

    def _refuse(self, message: str) -> EmbeddingRefused:
        """The refusal to raise; logged when the provider turns from accepting to refusing
        (or refuses for another reason)."""
        if self._refused != message:
            log.error("embedding provider refuses the configuration; not ready", error=message)
        self._refused = message
        return EmbeddingRefused(message)

    def _accepted(self) -> None:
        if self._refused is not None:
            log.warning(
                "embedding provider accepts the configuration again; ready", url=self.spec.where
            )
        self._refused = None

    def _gave_up(self, attempts: int, last: _Failure | None, started: float) -> _GaveUp:
        took = time.monotonic() - started
        if last is None:
            what = (
                f"no call could start ({self._limiter.in_flight} in flight, "
                f"{self._limiter.allowed} allowed after 429s)"
            )
            return _GaveUp(
                f"the embedding provider at {self.spec.where} gave no vectors in time: {what}", what
            )
        return _GaveUp(
            f"the embedding provider at {self.spec.where} gave no vectors in time: "
            f"{attempts} attempt{'s' if attempts > 1 else ''} in {took:.1f} s, the last: "
            f"{last.what}",
            last.what,
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no detail"


async def _all_or_none(calls: list[Coroutine[Any, Any, Vectors]]) -> list[Vectors]:
    """Every call's vectors, in order; the first failure cancels the rest and is raised
    (a refusal before a timeout: it says more)."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(call) for call in calls]
    except ExceptionGroup as failed:
        errors = failed.exceptions
        refused = [e for e in errors if isinstance(e, EmbeddingRefused)]
        unavailable = [e for e in errors if isinstance(e, EmbeddingUnavailable)]
        if refused or unavailable:
            raise (refused or unavailable)[0] from None
        raise errors[0] from None
    return [task.result() for task in tasks]
