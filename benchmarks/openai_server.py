"""An OpenAI-compatible embeddings server for tests and benchmarks, with faults on demand.

It serves `POST /v1/embeddings` and Azure's `/openai/deployments/{name}/embeddings
?api-version=...` over any `encode(texts) -> rows` function (a cheap deterministic
one for unit tests, the bundled model for integration tests), on a thread of the
calling process: `with EmbeddingServer(encode) as server: ... server.base_url`.

Like OpenAI's text-embedding-3 it honours `dimensions` by truncating and
re-normalising, answers `encoding_format` float or base64 (little-endian float32) and
reports `usage`. The faults a provider shows in production can be switched on and off
while it runs (`inject`, `heal`): 429 with or without Retry-After, 5xx, slow answers,
JSON cut short, the wrong number of vectors, the wrong vector size; for the next N
calls, a fraction of calls or a time window. A wrong API key gets 401 where a key is
expected. For benchmarks: a fixed latency per call and a calls-per-minute limit (429
with Retry-After past it). Every call is recorded (thread-safe) for assertions.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import numpy as np

Encode = Callable[[list[str]], np.ndarray]
FaultKind = Literal["rate_limited", "error", "slow", "truncated", "wrong_count", "wrong_size"]
AZURE_PATH = re.compile(r"^/openai/deployments/([^/]+)/embeddings$")


@dataclass(frozen=True)
class Fault:
    """What to do instead of (or before) answering. `retry_after`: the 429's Retry-After
    in seconds (None: no header); `retry_after_ms`: send retry-after-ms too (Azure's);
    `status`: an error's status; `delay_s`: how long a slow answer sleeps first."""

    kind: FaultKind
    retry_after: float | None = None
    retry_after_ms: bool = False
    status: int = 500
    delay_s: float = 0.0


@dataclass
class _Active:
    fault: Fault
    calls: int | None  # calls left to hit; None: no count
    fraction: float
    until: float | None  # monotonic end of the window; None: no window


@dataclass(frozen=True)
class Call:
    """One request as the server saw it."""

    path: str
    inputs: int
    status: int
    received: float  # monotonic, when the request was read
    answered: float  # monotonic, just before the answer was written
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def hashed_encoder(dimensions: int = 32) -> Encode:
    """A cheap deterministic encoder (no model): each text's own pseudo-random unit
    vector, seeded by its SHA-256, so equal texts give equal rows in any process."""

    def encode(texts: list[str]) -> np.ndarray:
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            rows.append(np.random.default_rng(seed).standard_normal(dimensions))
        matrix = np.asarray(rows, dtype=np.float32).reshape(len(texts), dimensions)
        unit: np.ndarray = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
        return unit

    return encode


def local_model_encoder() -> Encode:
    """The bundled all-MiniLM-L6-v2 as the worker runs it on CPU (ONNX Runtime), one
    call at a time (the server's handler threads share it)."""
    from worker.embedding.backends import EncoderSpec, load_encoder, resolved

    encoder = load_encoder(resolved(EncoderSpec(device="cpu", lanes=1, threads=1)))
    lock = threading.Lock()

    def encode(texts: list[str]) -> np.ndarray:
        with lock:
            return np.asarray(encoder.encode(texts), dtype=np.float32)

    return encode


class EmbeddingServer:
    def __init__(
        self,
        encode: Encode,
        *,
        port: int = 0,
        api_key: str | None = None,
        models: Sequence[str] | None = None,
        latency_s: float = 0.0,
        calls_per_minute: float = 0.0,
        max_inputs: int = 2048,
        seed: int = 0,
        dimensions: Literal["honour", "ignore", "refuse"] = "honour",
    ) -> None:
        """`api_key`: the key a call must carry (None: any); `models`: the models served
        (None: any name); `calls_per_minute`: 0 = no limit; `dimensions`: what it does
        with the request's `dimensions`: honour it (OpenAI's text-embedding-3), ignore it
        (full vectors) or refuse it with 400 (servers whose model cannot shorten)."""
        self.dimensions = dimensions
        self.encode = encode
        self.api_key = api_key
        self.models = set(models) if models is not None else None
        self.latency_s = latency_s
        self.max_inputs = max_inputs
        self._port = port
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._healed = threading.Event()  # wakes slow answers: set by heal and stop
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self._random = random.Random(seed)
        self._active: _Active | None = None
        self._calls: list[Call] = []
        self._bucket = _Bucket(calls_per_minute)
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> EmbeddingServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        self._stopping.clear()
        self._httpd = _Server(("127.0.0.1", self._port), _Handler, self)
        self._port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=partial(self._httpd.serve_forever, poll_interval=0.05),
            name="openai-server",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving: sleepers wake, open connections close, every thread is joined."""
        if self._httpd is None:
            return
        self._stopping.set()
        self._healed.set()
        self._httpd.shutdown()
        self._httpd.close_connections()
        self._httpd.server_close()  # joins the handler threads
        if self._thread is not None:
            self._thread.join()
        self._httpd = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    def azure_url(self, deployment: str) -> str:
        return f"http://127.0.0.1:{self._port}/openai/deployments/{deployment}"

    # -- faults and limits, settable while it runs -------------------------------------

    def inject(
        self,
        fault: Fault,
        *,
        calls: int | None = None,
        fraction: float = 1.0,
        seconds: float | None = None,
    ) -> None:
        """`fault` for the next `calls` calls, a `fraction` of calls and/or `seconds`
        from now (none of them: every call until `heal`)."""
        until = None if seconds is None else time.monotonic() + seconds
        with self._lock:
            self._active = _Active(fault, calls, fraction, until)

    def heal(self) -> None:
        """No fault from now on; slow answers still sleeping answer now."""
        with self._lock:
            self._active = None
            self._healed.set()
            self._healed = threading.Event()

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Until no call is being answered (a slow one of an earlier test would be
        recorded as this test's); TimeoutError past `timeout`."""
        with self._idle:
            if not self._idle.wait_for(lambda: self._in_flight == 0, timeout):
                raise TimeoutError(f"{self._in_flight} calls still being answered")

    def rate_limit(self, calls_per_minute: float, burst: float | None = None) -> None:
        """At most `calls_per_minute` (0: no limit), `burst` calls at once (default:
        one second's worth, at least one); past it 429 with Retry-After."""
        with self._lock:
            self._bucket = _Bucket(calls_per_minute, burst)

    # -- what happened ---------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def count(self, status: int | None = None) -> int:
        with self._lock:
            return sum(1 for c in self._calls if status is None or c.status == status)

    @property
    def inputs(self) -> int:
        """Texts embedded (calls answered 200)."""
        with self._lock:
            return sum(c.inputs for c in self._calls if c.status == 200)

    @property
    def statuses(self) -> Counter[int]:
        with self._lock:
            return Counter(c.status for c in self._calls)

    def reset(self) -> None:
        """Forget the calls recorded so far."""
        with self._lock:
            self._calls.clear()

    # -- answering (called on the handler threads) -------------------------------------

    def answer(self, path: str, headers: dict[str, str], raw: bytes) -> _Reply:
        received = time.monotonic()
        with self._lock:
            self._in_flight += 1
        body: dict[str, Any] = {}
        try:
            body = json.loads(raw) if raw else {}
            reply = self._reply(path, headers, body)
        except (ValueError, TypeError) as exc:
            reply = _error(400, f"invalid request: {exc}", "invalid_request_error")
        inputs = body.get("input") if isinstance(body, dict) else None
        count = len(inputs) if isinstance(inputs, list) else 1 if isinstance(inputs, str) else 0
        record = Call(path, count, reply.status, received, time.monotonic(), headers, body)
        with self._lock:
            self._calls.append(record)
            self._in_flight -= 1
            self._idle.notify_all()
        return reply

    def _reply(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> _Reply:
        refused = self._refusal(path, headers, body)
        if refused is not None:
            return refused
        if self.latency_s:
            self._stopping.wait(self.latency_s)
        limited = self._rate_limited()
        if limited is not None:
            return limited
        fault, healed = self._fault()
        if fault is not None and fault.kind == "slow":
            healed.wait(fault.delay_s)
        elif fault is not None and fault.kind == "rate_limited":
            return _too_many(fault.retry_after, fault.retry_after_ms)
        elif fault is not None and fault.kind == "error":
            return _error(fault.status, "The server had an error processing your request.")
        return self._embeddings(body, fault)

    def _refusal(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> _Reply | None:
        """404 for a path or model not served, 401 for a wrong key, 400 for a bad body."""
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        parts = urlsplit(path)
        azure = AZURE_PATH.match(parts.path)
        if parts.path != "/v1/embeddings" and azure is None:
            return _error(404, f"no route {parts.path}", "not_found")
        if azure is not None and "api-version" not in parse_qs(parts.query):
            return _error(404, "Resource not found (no api-version)", "not_found")
        if self.api_key is not None:
            given = headers.get("api-key") if azure else None
            if azure is None:
                given = headers.get("authorization", "").removeprefix("Bearer ")
            if given != self.api_key:
                return _error(401, f"Incorrect API key provided: {given}.", "invalid_api_key")
        model = azure.group(1) if azure else body.get("model")
        if self.models is not None and model not in self.models:
            return _error(404, f"The model `{model}` does not exist", "model_not_found")
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return _error(400, "'input' must be a non-empty string or array of strings")
        if len(texts) > self.max_inputs:
            return _error(400, f"'input' has {len(texts)} items, at most {self.max_inputs}")
        return None

    def _rate_limited(self) -> _Reply | None:
        with self._lock:
            wait = self._bucket.take(time.monotonic())
        return None if wait is None else _too_many(wait, True)

    def _fault(self) -> tuple[Fault | None, threading.Event]:
        """The fault this call meets (counted against the fault's calls), and the event
        that ends a slow answer's sleep."""
        with self._lock:
            return self._met(), self._healed

    def _met(self) -> Fault | None:
        active = self._active
        if active is None:
            return None
        if active.until is not None and time.monotonic() >= active.until:
            self._active = None
            return None
        if active.fraction < 1.0 and self._random.random() >= active.fraction:
            return None
        if active.calls is not None:
            active.calls -= 1
            if active.calls <= 0:
                self._active = None
        return active.fault

    def _embeddings(self, body: dict[str, Any], fault: Fault | None) -> _Reply:
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        vectors = np.asarray(self.encode(list(texts)), dtype=np.float32)
        dimensions = body.get("dimensions")
        if dimensions is not None and self.dimensions == "refuse":
            return _error(400, "This model does not take the 'dimensions' parameter.")
        if dimensions is not None and self.dimensions == "honour":
            if not isinstance(dimensions, int) or not 1 <= dimensions <= vectors.shape[1]:
                return _error(400, f"This model does not support {dimensions} dimensions.")
            vectors = vectors[:, :dimensions]
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        kind = fault.kind if fault is not None else None
        if kind == "wrong_count":
            vectors = vectors[:-1]
        elif kind == "wrong_size":
            vectors = vectors[:, :-1]
        encoding = body.get("encoding_format", "float")
        data = [
            {"object": "embedding", "index": i, "embedding": _encoded(row, encoding)}
            for i, row in reversed(list(enumerate(vectors)))  # out of order: index says
        ]
        tokens = sum(len(text.split()) + 1 for text in texts)
        document = {"object": "list", "data": data, "model": body.get("model", ""),
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip
        raw = json.dumps(document).encode()
        if kind == "truncated":
            raw = raw[: len(raw) // 2]
        return _Reply(200, raw, {"Content-Type": "application/json"})


def _encoded(row: np.ndarray, encoding: str) -> Any:
    if encoding == "base64":
        return base64.b64encode(row.astype("<f4").tobytes()).decode()
    return [float(x) for x in row]


def _error(status: int, message: str, code: str = "invalid_request_error") -> _Reply:
    document = {"error": {"message": message, "type": code, "param": None, "code": code}}
    return _Reply(status, json.dumps(document).encode(), {"Content-Type": "application/json"})


def _too_many(retry_after: float | None, as_ms: bool) -> _Reply:
    reply = _error(429, "Rate limit reached for requests", "rate_limit_exceeded")
    if retry_after is not None:
        reply.headers["Retry-After"] = f"{retry_after:g}"
        if as_ms:
            reply.headers["retry-after-ms"] = str(math.ceil(retry_after * 1000))
    return reply


class _Bucket:
    """A token bucket: `per_minute` calls a minute, `burst` at once."""

    def __init__(self, per_minute: float, burst: float | None = None) -> None:
        self.rate = per_minute / 60
        self.burst = burst if burst is not None else max(1.0, self.rate)
        self.tokens = self.burst
        self.at = time.monotonic()

    def take(self, now: float) -> float | None:
        """None when a call may go; else the seconds until one may."""
        if self.rate <= 0:
            return None
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return None
        return (1 - self.tokens) / self.rate


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close joins them: a clean stop
    block_on_close = True
    request_queue_size = 128  # socketserver's 5 drops connects of a burst of calls

    def __init__(
        self, address: tuple[str, int], handler: type[_Handler], owner: EmbeddingServer
    ) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, handler)

    def close_connections(self) -> None:
        """Wake handler threads waiting on a kept-alive connection."""
        with self.connections_lock:
            for connection in self.connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects
    # Headers and body go out in two writes: with Nagle's algorithm the body waits for
    # the client's delayed ACK (~40 ms: an 80 ms call measured 82 or 124 ms).
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        headers = {name.lower(): value for name, value in self.headers.items()}
        reply = self.server.owner.answer(self.path, headers, raw)
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
        except OSError:
            self.close_connection = True  # the client went away

    def log_message(self, format: str, *args: Any) -> None:
        return
