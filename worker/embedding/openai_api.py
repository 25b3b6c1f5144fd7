"""The OpenAI embeddings API on the wire: what a call sends, what an answer means.

Pure functions, no I/O, so every rule here is tested without a server: the URL and
headers (OpenAI's Bearer key, Azure's api-key and api-version), the body, the vectors
of an answer (a list of floats or base64 of little-endian float32, put in `index`
order, made unit length), Retry-After, and the one line a refusal is explained in.
The API key never leaves `headers`: messages name the setting, never its value.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import numpy as np

from worker.vectors import Vectors

OPENAI_URL = "https://api.openai.com/v1"
Provider = Literal["openai", "azure"]
Encoding = Literal["base64", "float"]
MESSAGE_CHARS = 200  # most of a provider's own error message quoted in a refusal


@dataclass(frozen=True)
class RemoteSpec:
    """A remote embedding provider and how to call it (WorkerSettings.remote_spec())."""

    provider: Provider
    model: str
    base_url: str = OPENAI_URL
    dimensions: int = 0  # asked of the API; 0 = not sent, the model's own size
    api_key: str = field(default="", repr=False)
    api_version: str = "2024-10-21"  # azure
    encoding: Encoding = "base64"
    timeout_s: float = 10.0  # one call
    retry_s: float = 10.0  # a call without a deadline is retried this long
    concurrency: int = 4
    max_inputs: int = 2048
    max_input_tokens: int = 8191
    max_call_tokens: int = 300_000
    cache_size: int = 10_000
    connect_wait_s: float = 60.0  # at start, how long an unreachable provider is waited for

    @property
    def where(self) -> str:
        """The base URL as messages show it (no user info)."""
        return shown_url(self.base_url)


class Malformed(Exception):
    """An answer that is not an embeddings answer (cut short, not JSON): retried."""


class WrongShape(Exception):
    """Vectors of the wrong count or size: a configuration problem, not retried."""


@dataclass(frozen=True)
class Answer:
    vectors: Vectors  # unit-length float32 rows, in input order
    tokens: int | None  # usage.total_tokens (else prompt_tokens) when the provider says


def shown_url(url: str) -> str:
    """`url` without user info (a key in a URL is never shown)."""
    scheme, sep, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme}{sep}{host.rpartition('@')[2]}{slash}{path}"


def endpoint(spec: RemoteSpec) -> str:
    """POST here: {base}/embeddings; Azure under the deployment (the model names it when
    the base URL is the resource's), with ?api-version=."""
    base = spec.base_url.rstrip("/")
    if spec.provider == "openai":
        return f"{base}/embeddings"
    if "/deployments/" not in base:
        base = f"{base}/openai/deployments/{spec.model}"
    return f"{base}/embeddings?api-version={spec.api_version}"


def headers(spec: RemoteSpec) -> dict[str, str]:
    found = {"Content-Type": "application/json", "Accept": "application/json"}
    if spec.api_key:
        if spec.provider == "azure":
            found["api-key"] = spec.api_key
        else:
            found["Authorization"] = f"Bearer {spec.api_key}"
    return found


def request_body(
    spec: RemoteSpec, texts: list[str], *, send_dimensions: bool = True
) -> dict[str, Any]:
    """The call's JSON; `dimensions` only when set and the server takes it."""
    body: dict[str, Any] = {"input": texts, "model": spec.model, "encoding_format": spec.encoding}
    if spec.dimensions and send_dimensions:
        body["dimensions"] = spec.dimensions
    return body


def truncated(text: str, max_tokens: int) -> str:
    """`text` cut to `max_tokens` UTF-8 bytes at a character boundary (the token estimate
    is UTF-8 bytes, never fewer than BPE or WordPiece count), as a local model cuts a
    text at its own limit instead of refusing it."""
    raw = text.encode()
    return text if len(raw) <= max_tokens else raw[:max_tokens].decode("utf-8", "ignore")


def parse_answer(body: bytes, count: int, dimensions: int | None) -> Answer:
    """The vectors of an answer to `count` inputs, checked against `dimensions` (None:
    learn it). Malformed for an answer that is not one, WrongShape for wrong sizes.

    Longer vectors than `dimensions` are cut to it and made unit length again: what
    OpenAI's text-embedding-3 does when asked for fewer dimensions, and what memorizz
    does to the vectors of a server that ignores `dimensions` (Ollama, vLLM), so the
    query vectors match the stored ones."""
    try:
        document = json.loads(body)
        items = sorted(document["data"], key=lambda item: int(item["index"]))
        rows = [_row(item["embedding"]) for item in items]
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise Malformed(f"cut short or not one ({type(exc).__name__})") from None
    if len(rows) != count:
        raise WrongShape(f"{len(rows)} vectors for {count} inputs")
    sizes = {len(row) for row in rows}
    if dimensions and min(sizes, default=0) > dimensions:
        rows = [row[:dimensions] for row in rows]
        sizes = {dimensions}
    expected = dimensions or (sizes.pop() if len(sizes) == 1 else None)
    if expected is None or any(len(row) != expected for row in rows):
        raise WrongShape(
            f"vectors of {'/'.join(map(str, sorted({len(r) for r in rows})))} "
            f"dimensions where {dimensions or 'one size'} was expected"
        )
    matrix = np.asarray(rows, dtype=np.float32).reshape(count, expected)
    if not np.isfinite(matrix).all():
        raise Malformed("with NaN or infinite values")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return Answer(np.ascontiguousarray(matrix / np.maximum(norms, 1e-12)), _tokens(document))


def _row(embedding: Any) -> Vectors:
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding, validate=True), dtype="<f4")
    if not isinstance(embedding, list):
        raise TypeError("an embedding is a list of numbers or a base64 string")
    return np.asarray(embedding, dtype=np.float64)


def _tokens(document: dict[str, Any]) -> int | None:
    usage = document.get("usage")
    if not isinstance(usage, dict):
        return None
    tokens = usage.get("total_tokens", usage.get("prompt_tokens"))
    return tokens if isinstance(tokens, int) else None


def retry_after(found: dict[str, str] | Any, now_wall: float) -> float | None:
    """Seconds the provider asks to wait: retry-after-ms (Azure, OpenAI), else
    Retry-After in seconds or as an HTTP date; None when it says nothing usable."""
    millis = _number(found.get("retry-after-ms"))
    if millis is not None:
        return max(millis / 1000, 0.0)
    value = found.get("retry-after")
    if value is None:
        return None
    seconds = _number(value)
    if seconds is not None:
        return max(seconds, 0.0)
    try:
        return max(parsedate_to_datetime(value).timestamp() - now_wall, 0.0)
    except (TypeError, ValueError, IndexError):
        return None


def _number(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def provider_message(body: bytes, secret: str) -> str:
    """The provider's own error message (OpenAI's error.message, else the body's start),
    on one line, short, with the key scrubbed out should a provider echo it."""
    try:
        document = json.loads(body)
        error = document.get("error", document) if isinstance(document, dict) else document
        text = error.get("message", error) if isinstance(error, dict) else error
        text = text if isinstance(text, str) else json.dumps(text)
    except (ValueError, AttributeError):
        text = body.decode("utf-8", "replace")
    text = " ".join(text.split())
    if secret:
        text = text.replace(secret, "***")
    return text[:MESSAGE_CHARS] + ("..." if len(text) > MESSAGE_CHARS else "")


def refusal(spec: RemoteSpec, status: int, message: str) -> str:
    """One line for a refused call, naming the setting to check."""
    said = f"HTTP {status}" + (f": {message}" if message else "")
    where = f"the embedding provider at {spec.where}"
    if status in (401, 403):
        return (
            f"{where} refused the API key ({said}): check RECALLQ_EMBED_API_KEY "
            "(or RECALLQ_EMBED_API_KEY_FILE)"
        )
    if status == 404:
        return (
            f"{where} has no embeddings endpoint or no model {spec.model!r} ({said}): "
            "check RECALLQ_EMBED_BASE_URL and RECALLQ_EMBED_MODEL"
        )
    if status == 413:
        return (
            f"{where} refused a call as too large ({said}): check RECALLQ_EMBED_MAX_INPUTS "
            "and RECALLQ_EMBED_MAX_CALL_TOKENS"
        )
    if status in (400, 422):
        return (
            f"{where} refused the request for model {spec.model!r} ({said}): check "
            "RECALLQ_EMBED_MODEL and RECALLQ_EMBED_DIMENSIONS"
        )
    return f"{where} refused the call ({said}): check RECALLQ_EMBED_BASE_URL"


def shape_refusal(spec: RemoteSpec, problem: str) -> str:
    """One line for an answer of the wrong shape."""
    where = f"the embedding provider {spec.provider} at {spec.where} (model {spec.model!r})"
    if "inputs" in problem:
        return (
            f"{where} answered {problem}: check RECALLQ_EMBED_MAX_INPUTS (its limit on "
            "inputs per call) and that RECALLQ_EMBED_BASE_URL is an embeddings API"
        )
    return f"{where} answered {problem}: check RECALLQ_EMBED_DIMENSIONS"
