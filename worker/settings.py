"""Worker settings: one object, built once at start and passed down."""

from __future__ import annotations

import os
import re
import socket
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from schemas.messages import SearchMode
from schemas.settings import ENCODE_HINT, BrokerSettings, host_port, url_authority
from worker.access.profiles import SCOPE_FIELDS, Profile, load_profile
from worker.embedding.backends import EncoderSpec
from worker.embedding.openai_api import OPENAI_URL, RemoteSpec, shown_url
from worker.errors import ConfigError

SQLITE_PREFIX = "sqlite:///"
MONGO_FORM = "mongodb://USER:PASSWORD@HOST:PORT,.../?OPTIONS or mongodb+srv://HOST/"
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
UNENCODED_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
STORE_FORM = "sqlite:///PATH (sqlite:///./recallq.db, sqlite:////var/lib/recallq.db) or mongodb://"


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def sqlite_path(store_url: str) -> str | None:
    """The path of an embedded store's URL (as open_store reads it), None for MongoDB."""
    return store_url.removeprefix(SQLITE_PREFIX) if store_url.startswith(SQLITE_PREFIX) else None


def check_store_url(url: str) -> str:
    """`url`, or ValueError saying what is wrong with it, before a model is loaded or a
    store opened. No DNS: a mongodb+srv name is looked up when the store connects."""
    if (path := sqlite_path(url)) is not None:
        check_sqlite_path(path)
    elif url.startswith(("mongodb://", "mongodb+srv://")):
        check_mongo_url(url)
    else:
        raise ValueError(f"not a store URL: expected {STORE_FORM}")
    return url


def check_sqlite_path(path: str) -> None:
    if not path:
        raise ValueError(f"no path after {SQLITE_PREFIX}: expected {STORE_FORM}")
    if path != path.strip() or CONTROL.search(path):
        raise ValueError("the path has surrounding whitespace or a control character")


def check_mongo_url(url: str) -> None:
    """What PyMongo refuses when it parses a URL (as it opens the store: a traceback,
    after the model has loaded), less its DNS lookups. Its authority ends at '?' or '/'."""
    userinfo, hosts, after = url_authority(url, MONGO_FORM, ends="/?")
    if userinfo is not None:
        if "@" in userinfo or userinfo.count(":") > 1 or UNENCODED_PERCENT.search(userinfo):
            raise ValueError("the user and password must be percent-encoded (RFC 3986)")
        if not userinfo.partition(":")[0]:
            raise ValueError("no user name before the '@'")
    names = hosts.split(",")
    if "" in names:
        raise ValueError(f"an empty host in the host list: expected {MONGO_FORM}")
    try:
        ports = [host_port(name)[1] for name in names]
    except ValueError:
        if userinfo is None and "@" in after:  # a '/' or '?' in the password ended it early
            raise ValueError(ENCODE_HINT) from None
        raise
    if url.startswith("mongodb+srv://") and (len(names) > 1 or ports[0] is not None):
        raise ValueError("a mongodb+srv:// URL names one host and no port")


def check_http_url(url: str) -> None:
    """ValueError naming RECALLQ_EMBED_BASE_URL unless `url` is http(s)://HOST[:PORT]/..."""
    shown = shown_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(f"RECALLQ_EMBED_BASE_URL has no valid host and port: {shown!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise ValueError(
            f"RECALLQ_EMBED_BASE_URL must be an http:// or https:// URL, not {shown!r}"
        )
    if url != url.strip() or CONTROL.search(url) or " " in url:
        raise ValueError("RECALLQ_EMBED_BASE_URL has whitespace or a control character")


class WorkerSettings(BrokerSettings):
    store_url: str = Field(
        default="sqlite:///./recallq.db",
        description="Memory store: sqlite:///PATH (embedded) or mongodb://...",
    )
    embed_provider: Literal["local", "openai", "azure"] = Field(
        default="local",
        description="local = a sentence-transformers model in the worker; openai = any "
        "OpenAI-compatible embeddings API (OpenAI, Ollama, vLLM, TEI, Infinity, LM Studio) at "
        "RECALLQ_EMBED_BASE_URL; azure = Azure OpenAI (api-key header, api-version).",
    )
    embed_model: str = Field(
        default="",
        description="local: sentence-transformers model name or path, empty = bundled "
        "all-MiniLM-L6-v2; openai/azure: the model (Azure: deployment) the API is asked for.",
    )
    embed_base_url: str = Field(
        default="",
        description="openai/azure: the API's base URL, to which /embeddings is added; empty = "
        "https://api.openai.com/v1. Azure: https://RESOURCE.openai.azure.com/openai/deployments/"
        "DEPLOYMENT.",
    )
    embed_dimensions: int = Field(
        default=0,
        ge=0,
        le=65536,
        description="openai/azure: `dimensions` asked of the API (text-embedding-3 models "
        "shorten their vectors); 0 = not sent, the model's own size.",
    )
    embed_api_key: SecretStr = Field(
        default=SecretStr(""),
        description="openai/azure: the API key (Authorization: Bearer, Azure: api-key); never "
        "logged. Empty = RECALLQ_EMBED_API_KEY_FILE, or no key (a local server).",
    )
    embed_api_key_file: str = Field(
        default="", description="openai/azure: a file holding the API key (a mounted secret)."
    )
    embed_api_version: str = Field(
        default="2024-10-21", description="azure: the api-version query parameter."
    )
    embed_encoding: Literal["base64", "float"] = Field(
        default="base64",
        description="openai/azure: encoding_format asked for; base64 is a quarter of the bytes "
        "(what the OpenAI SDK asks for); float for servers without it.",
    )
    embed_timeout_s: float = Field(
        default=10.0, gt=0, description="openai/azure: longest wait for one API call."
    )
    embed_retry_s: float = Field(
        default=10.0,
        gt=0,
        description="openai/azure: how long a failing provider is retried for a request "
        "without a deadline (with one, until its deadline).",
    )
    embed_concurrency: int = Field(
        default=4,
        ge=1,
        le=256,
        description="openai/azure: most API calls in flight; halved on each 429, regained "
        "one at a time as calls succeed.",
    )
    embed_max_inputs: int = Field(
        default=2048,
        ge=1,
        description="openai/azure: most inputs in one call (OpenAI 2048; TEI's default 32).",
    )
    embed_max_input_tokens: int = Field(
        default=8191,
        ge=1,
        description="openai/azure: most tokens of one input (OpenAI 8191); a longer text is "
        "cut to it, as a local model cuts at its own limit.",
    )
    embed_max_call_tokens: int = Field(
        default=300_000,
        ge=1,
        description="openai/azure: most tokens in one call, all inputs together (OpenAI "
        "300,000). Tokens are estimated as UTF-8 bytes: never fewer than a tokenizer counts.",
    )
    embed_device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        default="auto", description="Device for the embedder; auto = cuda, then mps, then cpu."
    )
    embed_backend: Literal["auto", "onnx", "torch"] = Field(
        default="auto",
        description="auto = ONNX Runtime on CPU, sentence-transformers (fp16) on CUDA.",
    )
    embed_quantize: Literal["none", "int8"] = Field(
        default="none", description="int8 = dynamically quantised ONNX graph (faster, less exact)."
    )
    embed_export_dir: str = Field(
        default="", description="ONNX export cache; empty = $XDG_CACHE_HOME/recallq/onnx."
    )
    embed_lanes: int = Field(
        default=0,
        ge=0,
        le=64,
        description="Model copies encoding side by side; 0 = one per CPU (ONNX on CPU), else 1.",
    )
    embed_threads: int = Field(
        default=0,
        ge=0,
        le=256,
        description="ONNX Runtime intra-op threads per lane; 0 = CPUs / lanes.",
    )
    embed_spinning: bool = Field(
        default=False, description="Let idle ONNX Runtime threads spin (uses CPU the broker needs)."
    )
    embed_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="OS nice value of the model's threads: above 0 they yield the CPU to the "
        "event loop and, on a shared host, to the broker.",
    )
    embed_cache_size: int = Field(
        default=10_000, ge=0, description="Recent query vectors kept (LRU); 0 = no cache."
    )
    max_batch: int = Field(default=64, ge=1, le=4096, description="Most requests in one batch.")
    max_batch_tokens: int = Field(
        default=16384, ge=1, description="Most padded tokens (longest x count) in one batch."
    )
    max_wait_ms: float = Field(
        default=0.0, ge=0.0, description="Wait this long for a fuller batch; 0 = greedy."
    )
    batch_sort_window: int = Field(
        default=4,
        ge=1,
        description="Under backlog, batch similar lengths from this many batches' worth; 1 = FIFO.",
    )
    bulk_top_up: int = Field(
        default=8,
        ge=0,
        description="Bulk requests added to a batch with interactive ones (bulk-only: max_batch).",
    )
    prefetch: int = Field(
        default=0, ge=0, description="Unacked interactive deliveries; 0 = 2 x max_batch."
    )
    bulk_prefetch: int = Field(
        default=0, ge=0, description="Unacked bulk deliveries; 0 = 2 x max_batch."
    )
    search_concurrency: int = Field(
        default=32, ge=1, le=1000, description="Store queries in flight at once (MongoDB)."
    )
    store_retry_s: float = Field(
        default=10.0,
        gt=0,
        description="How long store errors are retried for a request without a deadline.",
    )
    sqlite_cache_mb: float = Field(
        default=512.0,
        ge=0,
        description="Embedded store: MiB of loaded (type, memory_id) groups kept; LRU beyond.",
    )
    sqlite_index_min_rows: int = Field(
        default=50_000,
        ge=0,
        description="Embedded store: a (type, memory_id) group of at least this many "
        "memories gets a memory-mapped vector file and an HNSW index, written by ingest and "
        "init; 0 = none (every group is loaded into the cache).",
    )
    sqlite_search: Literal["auto", "exact"] = Field(
        default="auto",
        description="Embedded store, groups with a vector file: auto = HNSW candidates "
        "re-scored exactly, where the index passed its recall check; exact = every row scored.",
    )
    store_profile: Literal["recallq", "memorizz"] = Field(
        default="recallq",
        description="Memory types served and their collections: recallq (what recallq "
        "ingests) or memorizz (a memorizz database as memorizz writes it).",
    )
    memory_types: str = Field(
        default="",
        description="Extra or replaced mappings over the profile's: `type=collection`, "
        "`type=collection:owner_field` (the field that must equal the request's memory_id; "
        "default memory_id) or `type=collection:owner_field:attached_field` (the field "
        "`knowledge_base_ids` matches), comma-separated.",
    )
    scope_fields: str = Field(
        default=SCOPE_FIELDS,
        description="Fields a request's `filters` may name (MongoDB; the embedded store has "
        "no scopes). Declared as filter fields of the vector index by `worker init`.",
    )
    mongo_database: str = Field(
        default="recallq",
        pattern=r"^[A-Za-z0-9_-]{1,63}$",
        description="MongoDB database holding one collection per memory type.",
    )
    mongo_search: Literal["auto", "vector", "exact"] = Field(
        default="auto",
        description="vector = $vectorSearch, exact = score in the worker, auto = probe at start.",
    )
    mongo_vector_exact: bool = Field(
        default=False, description="Ask $vectorSearch for exact (ENN) instead of approximate."
    )
    mongo_exact_max_rows: int = Field(
        default=10_000,
        ge=1,
        description="MongoDB: the most rows of one search group the worker fetches and scores "
        "itself (exact mode; in vector mode, a lexical side without a queryable $search "
        "index); a larger group's requests are answered store_unavailable, not retryable, "
        "saying what to change.",
    )
    mongo_vector_index: str = Field(
        default="recallq_vector",
        description="Name of the vector search index per collection (memorizz profile: "
        "vector_index, memorizz's name, unless set).",
    )
    mongo_max_pool_size: int = Field(default=100, ge=1, description="PyMongo maxPoolSize.")
    mongo_min_pool_size: int = Field(default=0, ge=0, description="PyMongo minPoolSize.")
    mongo_max_connecting: int = Field(
        default=8, ge=1, description="PyMongo maxConnecting: connections opened at once."
    )
    mongo_server_selection_timeout_ms: int = Field(
        default=5000, ge=1, description="PyMongo serverSelectionTimeoutMS."
    )
    mongo_connect_timeout_ms: int = Field(default=5000, ge=1, description="connectTimeoutMS.")
    mongo_socket_timeout_ms: int = Field(default=10000, ge=1, description="socketTimeoutMS.")
    mongo_query_timeout_ms: int = Field(
        default=5000, ge=1, description="maxTimeMS of every find and aggregate."
    )
    mongo_index_wait_s: float = Field(
        default=300.0, gt=0, description="`worker init`: longest wait for a queryable index."
    )
    candidate_factor: int = Field(
        default=4,
        ge=1,
        le=20,
        description="Candidates per hit from each list (vector, lexical), re-ranked by signal.",
    )
    search: SearchMode = Field(
        default="hybrid",
        description="Search mode of requests that name none: hybrid (measured best, README "
        "Retrieval quality), vector or lexical. On MongoDB, lexical candidates are scored in "
        "the worker over the owner's rows: vector keeps $vectorSearch's cost on large owners.",
    )
    max_message_bytes: int = Field(
        default=65_536, ge=1024, description="Larger request bodies are refused as invalid."
    )
    max_reply_bytes: int = Field(
        default=4 * 2**20,
        ge=4096,
        description="Larger replies become an invalid_request error (keep under the broker's).",
    )
    tenant_policy: str = Field(
        default="",
        description="JSON file: which AMQP user may read which memory_ids; empty = no isolation.",
    )
    metrics_port: int = Field(
        default=9464,
        ge=-1,
        le=65535,
        description="/metrics, /healthz, /readyz; 0 = any free port, -1 = off.",
    )
    worker_id: str = Field(default_factory=_default_worker_id, description="Shown in replies.")
    event_loop: Literal["auto", "asyncio", "uvloop"] = Field(
        default="auto", description="auto = uvloop where it is installed, else asyncio."
    )
    shutdown_grace_s: float = Field(
        default=30.0,
        gt=0,
        description="Longest wait for in-flight batches on SIGTERM; then they are cancelled.",
    )
    unsettled_limit_s: float = Field(
        default=120.0,
        gt=0,
        description="A delivery unsettled this long is logged, counted and makes /readyz 503.",
    )

    @field_validator("store_url")
    @classmethod
    def _store_url_parses(cls, url: str) -> str:
        return check_store_url(url)

    def encoder_spec(self) -> EncoderSpec:
        return EncoderSpec(
            model=self.embed_model,
            device=self.embed_device,
            backend=self.embed_backend,
            quantize=self.embed_quantize,
            cache_dir=self.embed_export_dir,
            lanes=self.embed_lanes,
            threads=self.embed_threads,
            spinning=self.embed_spinning,
            nice=self.embed_nice,
        )

    def remote_spec(self) -> RemoteSpec:
        """The remote provider's spec (openai/azure), with the API key read from
        RECALLQ_EMBED_API_KEY_FILE where RECALLQ_EMBED_API_KEY is empty."""
        if self.embed_provider == "local":
            raise ConfigError("RECALLQ_EMBED_PROVIDER=local has no remote provider")
        return RemoteSpec(
            provider=self.embed_provider,
            model=self.embed_model,
            base_url=self.embed_base_url or OPENAI_URL,
            dimensions=self.embed_dimensions,
            api_key=self._api_key(),
            api_version=self.embed_api_version,
            encoding=self.embed_encoding,
            timeout_s=self.embed_timeout_s,
            retry_s=self.embed_retry_s,
            concurrency=self.embed_concurrency,
            max_inputs=self.embed_max_inputs,
            max_input_tokens=self.embed_max_input_tokens,
            max_call_tokens=self.embed_max_call_tokens,
            cache_size=self.embed_cache_size,
            connect_wait_s=self.connect_wait_s,
        )

    def remote_label(self) -> str:
        """How errors name a remote provider's model ("" for the local one): its
        provider, model and URL, never its key."""
        if self.embed_provider == "local":
            return ""
        where = shown_url(self.embed_base_url or OPENAI_URL)
        return f"{self.embed_provider} {self.embed_model} at {where}"

    def _api_key(self) -> str:
        key = self.embed_api_key.get_secret_value()
        if key or not self.embed_api_key_file:
            return key.strip()
        try:
            with open(os.path.expanduser(self.embed_api_key_file), encoding="utf-8") as handle:
                return handle.read().strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the API key file {self.embed_api_key_file} "
                f"({exc.strerror or type(exc).__name__}): check RECALLQ_EMBED_API_KEY_FILE"
            ) from None

    def profile(self) -> Profile:
        """The store profile (raises ConfigError for a bad RECALLQ_MEMORY_TYPES)."""
        embedded = self.store_url.startswith("sqlite")
        profile = load_profile(
            self.store_profile, self.memory_types, "" if embedded else self.scope_fields
        )
        if embedded and profile.owners:
            raise ConfigError(
                "the embedded store keeps memories by memory_id only: owner fields "
                f"{dict(profile.owners)} need MongoDB (RECALLQ_STORE_URL=mongodb://...)"
            )
        return profile

    @model_validator(mode="after")
    def _memorizz_index_name(self) -> WorkerSettings:
        # memorizz names its Atlas vector index `vector_index`; an explicit setting wins.
        if self.store_profile == "memorizz" and "mongo_vector_index" not in self.model_fields_set:
            self.mongo_vector_index = "vector_index"
        return self

    @model_validator(mode="after")
    def _remote_provider(self) -> WorkerSettings:
        if self.embed_provider == "local":
            return self
        if not self.embed_model:
            raise ValueError(
                f"RECALLQ_EMBED_PROVIDER={self.embed_provider} needs RECALLQ_EMBED_MODEL: the "
                "model (Azure: the deployment) the API is asked for, e.g. text-embedding-3-small"
            )
        if self.embed_provider == "azure" and not self.embed_base_url:
            raise ValueError(
                "RECALLQ_EMBED_PROVIDER=azure needs RECALLQ_EMBED_BASE_URL: "
                "https://RESOURCE.openai.azure.com (or .../openai/deployments/DEPLOYMENT)"
            )
        if self.embed_base_url:
            check_http_url(self.embed_base_url)
        return self

    @model_validator(mode="after")
    def _fill_prefetch(self) -> WorkerSettings:
        # A prefetch below the batch size silently caps every batch (Ray Serve #43288).
        if self.prefetch == 0:
            self.prefetch = 2 * self.max_batch
        if self.bulk_prefetch == 0:
            self.bulk_prefetch = 2 * self.max_batch
        return self
