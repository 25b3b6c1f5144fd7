"""Prometheus metrics and the health endpoints, on RECALLQ_METRICS_PORT.

Each worker owns its registry (several workers can live in one test process).
`/metrics` is the Prometheus text format, `/healthz` says the process is alive,
`/readyz` says it is connected to the broker and the store with the model loaded.
A remote embedding provider's calls are counted here too (`EmbedCalls`), through the
observer hook the embedding layer offers (it cannot import this module).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from worker.store.base import SLOW_PATHS, SearchPaths
from worker.store.group_cache import GroupCacheStats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.batch_size = Histogram(
            "recallq_batch_size", "Requests per batch.", buckets=SIZE_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "recallq_batch_padded_tokens",
            "Padded tokens (longest x count) per batch.",
            buckets=(16, 64, 256, 1024, 4096, 16384, 65536),
            registry=r,
        )
        self.embed_seconds = Histogram(
            "recallq_embed_seconds", "Model time per batch.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.search_seconds = Histogram(
            "recallq_search_seconds",
            "Store time per batch (every group of the batch in one store call).",
            ["store_mode"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.request_seconds = Histogram(
            "recallq_request_seconds",
            "From delivery to reply, per request.",
            ["lane", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "recallq_queue_wait_seconds",
            "From delivery to dispatch in a batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._count_deliveries(r)
        self.embed_calls = EmbedCalls(r)
        self._cache_stats: Callable[[], tuple[int, int]] | None = None
        r.register(_CacheCollector(self))

    def _count_deliveries(self, r: CollectorRegistry) -> None:
        self.requests = Counter(
            "recallq_requests", "Requests answered, by status and error code.",
            ["status", "code"], registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "recallq_in_flight", "Requests delivered and not yet settled.", registry=r
        )
        self.unsettled_too_long = Counter(
            "recallq_unsettled_too_long",
            "Deliveries still unsettled after RECALLQ_UNSETTLED_LIMIT_S (a stuck stage).",
            registry=r,
        )
        self.redeliveries = Counter("recallq_redeliveries", "Requests delivered again.", registry=r)
        self.returned_replies = Counter(
            "recallq_returned_replies", "Replies the broker could not route.", registry=r
        )
        self.refused_replies = Counter(
            "recallq_refused_replies",
            "Replies the broker refused (nacked, or closed the channel over): the request "
            "is retried as a crash, then answered internal and dead-lettered.",
            registry=r,
        )
        self.rows_without_embedding = Counter(
            "recallq_rows_without_embedding",
            "Rows an exact search skipped: no embedding yet (memorizz back-fills them).",
            ["collection"], registry=r,
        )  # fmt: skip

    def watch_store_cache(self, stats: Callable[[], GroupCacheStats | None]) -> None:
        """A store's group cache, where it keeps one (the embedded store): size against
        its bound, and how often it hits."""
        self.registry.register(_StoreCacheCollector(stats))

    def watch_store_searches(self, paths: Callable[[], SearchPaths] | None) -> None:
        """A store's search paths (`MemoryStore.search_paths`), so a group that does not
        fit its cache or falls back to a slow path shows; None (a store that does not
        count them) exposes nothing."""
        if paths is not None:
            self.registry.register(_StoreSearchCollector(paths))

    def watch_cache(self, stats: Callable[[], tuple[int, int]]) -> None:
        """`stats()` gives (lookups, hits) of the embedding cache."""
        self._cache_stats = stats

    def cache_figures(self) -> tuple[int, int]:
        return self._cache_stats() if self._cache_stats else (0, 0)


class EmbedCalls:
    """A remote embedding provider's calls (worker.embedding.remote.EmbedObserver): how
    each ended, what it carried, how long it took, retries and rate limiting."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.calls = Counter(
            "recallq_embed_calls",
            "Calls to the remote embedding provider, by how each ended: ok, 429, 5xx, "
            "timeout, connection, invalid (an answer cut short or not JSON), refused.",
            ["status"], registry=r,
        )  # fmt: skip
        self.inputs = Counter(
            "recallq_embed_inputs", "Texts the remote provider embedded (calls answered ok).",
            registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "recallq_embed_tokens", "Tokens the remote provider counted (its usage): billed.",
            registry=r,
        )  # fmt: skip
        self.seconds = Histogram(
            "recallq_embed_call_seconds", "Duration of each call to the remote provider.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.retries = Counter(
            "recallq_embed_retries", "Calls to the remote provider tried again, by reason.",
            ["reason"], registry=r,
        )  # fmt: skip
        self.rate_limits = Counter(
            "recallq_embed_rate_limited",
            "429s that halved the calls allowed in flight (one per burst of 429s).",
            registry=r,
        )
        self.allowed = Gauge(
            "recallq_embed_concurrency_allowed",
            "Calls to the remote provider allowed in flight now: halved by 429s, regained "
            "one at a time as calls succeed (0: a local model).",
            registry=r,
        )

    def called(self, status: str, inputs: int, tokens: int | None, seconds: float) -> None:
        self.calls.labels(status=status).inc()
        self.seconds.observe(seconds)
        if status == "ok":
            self.inputs.inc(inputs)
            if tokens:
                self.tokens.inc(tokens)

    def retried(self, reason: str) -> None:
        self.retries.labels(reason=reason).inc()

    def rate_limited(self) -> None:
        self.rate_limits.inc()

    def watch_allowed(self, allowed: Callable[[], int]) -> None:
        self.allowed.set_function(allowed)


class _CacheCollector:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[GaugeMetricFamily]:
        lookups, hits = self._metrics.cache_figures()
        yield GaugeMetricFamily(
            "recallq_embed_cache_hit_ratio",
            "Share of query texts served from the embedding cache.",
            value=hits / lookups if lookups else 0.0,
        )
        yield GaugeMetricFamily(
            "recallq_embed_cache_lookups", "Query texts looked up in the cache.", value=lookups
        )


class _StoreCacheCollector:
    def __init__(self, stats: Callable[[], GroupCacheStats | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        s = self._stats()
        if s is None:  # a store without a group cache
            return
        prefix = "recallq_store_cache"
        yield GaugeMetricFamily(f"{prefix}_bytes", "Bytes of groups held.", value=s.bytes)
        yield GaugeMetricFamily(f"{prefix}_groups", "Groups held.", value=s.groups)
        yield GaugeMetricFamily(
            f"{prefix}_hit_ratio", "Share of group lookups served from memory.",
            value=s.hits / s.lookups if s.lookups else 0.0,
        )  # fmt: skip
        yield CounterMetricFamily(f"{prefix}_lookups", "Group lookups.", value=s.lookups)
        yield CounterMetricFamily(f"{prefix}_hits", "Lookups served from memory.", value=s.hits)
        yield CounterMetricFamily(
            f"{prefix}_evictions", "Groups dropped to stay under the byte bound.", value=s.evictions
        )
        yield CounterMetricFamily(
            f"{prefix}_oversize",
            "Groups the cache refused to keep, larger than its whole byte bound (served).",
            value=s.oversize,
        )  # fmt: skip


class _StoreSearchCollector:
    """Read at scrape time from the store's live counter: nothing to keep in step."""

    def __init__(self, paths: Callable[[], SearchPaths]) -> None:
        self._paths = paths

    def collect(self) -> Iterable[CounterMetricFamily]:
        # dict() copies in one step: the store's thread may add a path mid-scrape.
        taken = dict(self._paths())
        searches = CounterMetricFamily(
            "recallq_store_searches", "Groups searched, by the path the store took.",
            labels=["path"],
        )  # fmt: skip
        for path in sorted(taken):
            searches.add_metric([path], taken[path])
        yield searches
        # Always a sample, 0 before any: rate() then sees the first slow search too.
        yield CounterMetricFamily(
            "recallq_store_slow_searches",
            f"Groups searched by a slow or refused path ({', '.join(sorted(SLOW_PATHS))}).",
            value=sum(n for path, n in taken.items() if path in SLOW_PATHS),
        )


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return


class HealthServer:
    """/metrics, /healthz and /readyz on a daemon thread."""

    def __init__(self, metrics: Metrics, ready: Callable[[], bool], port: int) -> None:
        metrics_app = make_wsgi_app(metrics.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
            path = environ.get("PATH_INFO", "")
            if path == "/healthz":
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"alive\n"]
            if path == "/readyz":
                ok = ready()
                start_response("200 OK" if ok else "503 Service Unavailable", [])
                return [b"ready\n" if ok else b"not ready\n"]
            result: list[bytes] = metrics_app(environ, start_response)
            return result

        self._server: WSGIServer = make_server("0.0.0.0", port, app, handler_class=_QuietHandler)
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="recallq-metrics", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
