"""The MongoDB store: PyMongo's AsyncMongoClient, $vectorSearch or exact scoring.

Modes: `vector` runs one $vectorSearch per query (MongoDB has no batched
vector search); `exact` fetches a group's documents by owner on a B-tree
index and scores them with the same matrix code as SQLite; `auto` probes the
server at connect and picks vector only where $vectorSearch answers and every
collection's index is queryable. Driver errors become StoreUnavailable.

Exact mode keeps no group between batches: a server without Atlas has no cheap,
correct way to learn that an owner's rows changed (change streams need a replica
set, and memorizz updates rows in place, so counts and the largest _id miss its
writes). Each batch fetches the group again, so a group over
RECALLQ_MONGO_EXACT_MAX_ROWS is refused (ExactTooLarge, its requests only) after
a bounded count, never fetched.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import structlog
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReplaceOne
from pymongo.errors import OperationFailure, PyMongoError
from pymongo.operations import SearchIndexModel

from schemas.messages import ErrorCode
from worker.access.profiles import MEMORY_ID, Profile
from worker.errors import ConfigError, RecallqError, StoreMismatch, StoreUnavailable
from worker.store.base import (
    Candidate,
    GroupResult,
    GroupsRefused,
    Memory,
    SearchGroup,
    SearchPaths,
    Vectors,
)
from worker.store.exact import dimension_mismatch, score_group
from worker.store.mongo_query import (
    TEXT_INDEX,
    attached_value,
    cosine_from_vector_score,
    embedding_matrix,
    index_dimensions,
    lexical_search_pipeline,
    projection,
    tenant_filter,
    text_index_definition,
    to_document,
    to_memory,
    vector_index_definition,
    vector_search_pipeline,
    with_lexical,
)

if TYPE_CHECKING:
    from worker.settings import WorkerSettings

log = structlog.get_logger(__name__)
T = TypeVar("T")

# Servers without Atlas Search: CommandNotSupported (community 8.x, SecantusDB),
# "Unrecognized pipeline stage" (older servers), SearchNotEnabled.
NO_VECTOR_SEARCH_CODES = {115, 40324, 31082, 6047401}
BTREE_INDEX = "memory_id_timestamp"
DIMENSION_SAMPLE = 5  # embeddings per collection checked against the model at start
# What a group over RECALLQ_MONGO_EXACT_MAX_ROWS is told (ExactTooLarge), per mode.
EXACT_ADVICE = (
    "use RECALLQ_MONGO_SEARCH=vector (Atlas, or MongoDB 8.2+ with mongot) "
    "or raise RECALLQ_MONGO_EXACT_MAX_ROWS"
)
LEXICAL_ADVICE = (
    "run `recallq worker init` so that $search serves it, ask with search=vector, "
    "or raise RECALLQ_MONGO_EXACT_MAX_ROWS"
)


@dataclass(frozen=True, slots=True)
class MongoOptions:
    """How the store searches and talks to the server: RECALLQ_MONGO_* and
    RECALLQ_SEARCH_CONCURRENCY (worker.settings describes each)."""

    search: Literal["auto", "vector", "exact"]
    vector_index: str
    vector_exact: bool
    exact_max_rows: int
    query_timeout_ms: int
    index_wait_s: float
    search_concurrency: int
    max_pool_size: int
    min_pool_size: int
    max_connecting: int
    server_selection_timeout_ms: int
    connect_timeout_ms: int
    socket_timeout_ms: int

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> MongoOptions:
        return cls(
            search=settings.mongo_search,
            vector_index=settings.mongo_vector_index,
            vector_exact=settings.mongo_vector_exact,
            exact_max_rows=settings.mongo_exact_max_rows,
            query_timeout_ms=settings.mongo_query_timeout_ms,
            index_wait_s=settings.mongo_index_wait_s,
            search_concurrency=settings.search_concurrency,
            max_pool_size=settings.mongo_max_pool_size,
            min_pool_size=settings.mongo_min_pool_size,
            max_connecting=settings.mongo_max_connecting,
            server_selection_timeout_ms=settings.mongo_server_selection_timeout_ms,
            connect_timeout_ms=settings.mongo_connect_timeout_ms,
            socket_timeout_ms=settings.mongo_socket_timeout_ms,
        )


class MongoStore:
    """`profile`: the memory types served, their collections and owner fields;
    `dimensions` and `model`: the embedder's (`model` names it in errors)."""

    def __init__(
        self,
        *,
        url: str,
        database: str,
        profile: Profile,
        dimensions: int,
        options: MongoOptions,
        model: str,
    ) -> None:
        self._options = options
        self._database = database
        self._dimensions = dimensions
        self._profile = profile
        # Only the collections this deployment maps: a memorizz database has no
        # recallq-only collections, and the probe must not ask for them.
        self._collections = profile.distinct_collections
        self._model = model
        self.on_skipped: Callable[[str, int], None] = lambda collection, rows: None
        self._client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            url,
            appname="recallq",
            maxPoolSize=options.max_pool_size,
            minPoolSize=options.min_pool_size,
            maxConnecting=options.max_connecting,
            serverSelectionTimeoutMS=options.server_selection_timeout_ms,
            connectTimeoutMS=options.connect_timeout_ms,
            socketTimeoutMS=options.socket_timeout_ms,
        )
        self._db = self._client[database]
        self._gate = asyncio.Semaphore(options.search_concurrency)
        self.usable = True
        self.mode: Literal["vector", "exact"] = "exact"
        self.reason = "not connected yet"
        # Where lexical candidates come from in vector mode: Atlas Search ($search, when
        # its index is queryable on every collection) or the worker, over the owner's rows.
        self.lexical: Literal["atlas", "worker"] = "worker"
        self._paths: SearchPaths = Counter()
        self._warned: set[tuple[str, str, str]] = set()  # (collection, owner field, owner)

    async def connect(self) -> None:
        """Check the stored embeddings fit the model, then choose the search mode: forced
        by settings, or probed (auto)."""
        await self._guarded(self._check_dimensions)
        wanted = self._options.search
        if wanted == "exact":
            self.mode, self.reason = "exact", "RECALLQ_MONGO_SEARCH=exact"
        else:
            missing = await self._guarded(self._vector_search_missing)
            if missing and wanted == "vector":
                raise ConfigError(f"RECALLQ_MONGO_SEARCH=vector, but {missing}")
            self.mode = "exact" if missing else "vector"
            self.reason = missing or "$vectorSearch answers and every index is queryable"
        if self.mode == "vector" and await self._guarded(self._text_index_queryable):
            self.lexical = "atlas"
        log.info("mongo search mode", mode=self.mode, reason=self.reason, lexical=self.lexical)

    async def check(self) -> None:
        """Nothing to look at: PyMongo monitors the servers, and a failing search is
        answered store_unavailable."""

    async def search(self, groups: Sequence[SearchGroup]) -> list[GroupResult]:
        """Every group concurrently. A group refused (ExactTooLarge) fails alone: the others
        are served, and GroupsRefused carries each group's result or error; any other error
        (StoreUnavailable) is the whole call's, as before."""
        outcomes = await asyncio.gather(*(self._served(group) for group in groups))
        served = [outcome for outcome in outcomes if not isinstance(outcome, RecallqError)]
        if len(served) < len(outcomes):
            raise GroupsRefused(outcomes)
        return served

    async def _served(self, group: SearchGroup) -> GroupResult | RecallqError:
        try:
            return await self._one_group(group)
        except ExactTooLarge as exc:
            return exc

    def _one_group(self, group: SearchGroup) -> Awaitable[GroupResult]:
        """Vector mode serves vector candidates by $vectorSearch and lexical ones by $search
        where its index is queryable, else (and in exact mode) both in the worker over the
        owner's rows."""
        if self.mode == "vector" and not any(group.lexical_ks):
            self._paths["vector"] += 1
            return self._vector_group(group)
        if self.mode == "vector" and self.lexical == "atlas":
            self._paths["hybrid"] += 1
            return self._hybrid_group(group)
        return self._exact_group(group)

    async def upsert(self, memories: Sequence[Memory], embeddings: Vectors) -> None:
        by_type: dict[str, list[ReplaceOne[dict[str, Any]]]] = {}
        for memory, vector in zip(memories, embeddings, strict=True):
            document = to_document(memory, vector)
            operation = ReplaceOne({"_id": memory.id}, document, upsert=True)
            by_type.setdefault(memory.memory_type, []).append(operation)
        for memory_type, operations in by_type.items():
            collection = self._db[memory_type]
            await self._guarded(partial(collection.bulk_write, operations, ordered=False))

    async def ensure_indexes(self) -> None:
        """B-tree (owner, timestamp) for each owner and attached field of each collection
        (an attached search's $or uses one per side); vector indexes where the server has
        them."""
        for name in self._collections:
            collection = self._db[name]
            for owner in self._profile.owner_fields(name):
                keys = [(owner, ASCENDING), ("timestamp", DESCENDING)]
                index = BTREE_INDEX if owner == MEMORY_ID else f"{owner}_timestamp"
                await self._guarded(partial(collection.create_index, keys, name=index))
        if self._options.search == "exact":
            return
        try:
            for name in self._collections:
                await self._guarded(partial(self._create_vector_index, name))
                await self._guarded(partial(self._create_text_index, name))
        except _NoVectorSearch as exc:
            if self._options.search == "vector":
                raise ConfigError(f"RECALLQ_MONGO_SEARCH=vector, but {exc}") from None
            log.info("no vector search on this server; exact search only", reason=str(exc))
            return
        await self._wait_until_queryable()

    def describe(self) -> dict[str, Any]:
        return {
            "store": "mongodb",
            "database": self._database,
            "mode": self.mode,
            "reason": self.reason,
            "vector_exact": self._options.vector_exact,
            "lexical": self.lexical,
        }

    def search_paths(self) -> SearchPaths:
        """Groups searched: `exact`, `vector`, `hybrid`, `too_large` (refused)."""
        return self._paths

    def cache_stats(self) -> None:
        """No group cache: every search asks the server (the module says why)."""
        return None

    async def close(self) -> None:
        await self._client.close()

    async def _exact_group(self, group: SearchGroup) -> GroupResult:
        """The group's rows scored here, once a count bounded by the cap (on the B-tree
        index, no document shipped) says they are within it; the fetch is bounded too, so
        rows written between the two cannot take it past the cap."""
        collection = self._db[group.collection]
        owner, attached_field = group.owner_field, group.attached_field
        query = group_boundary(group)
        fields = projection(owner, embedding=True, attached_field=attached_field)
        timeout_ms, cap = self._options.query_timeout_ms, self._options.exact_max_rows
        count = partial(collection.count_documents, query, limit=cap + 1, maxTimeMS=timeout_ms)
        if (counted := await self._guarded(count)) > cap:
            raise self._too_large(group, counted)

        async def fetch() -> list[dict[str, Any]]:
            cursor = collection.find(query, fields).limit(cap + 1)
            return await cursor.max_time_ms(timeout_ms).to_list(None)

        fetched = await self._guarded(fetch)
        if len(fetched) > cap:
            raise self._too_large(group, len(fetched))
        self._paths["exact"] += 1
        documents = [d for d in fetched if isinstance(d.get("embedding"), list)]
        if len(documents) < len(fetched):  # not embedded yet (memorizz back-fills them)
            self.on_skipped(group.collection, len(fetched) - len(documents))
        memories = [to_memory(d, group.collection, owner) for d in documents]
        attached = [attached_value(d, attached_field) for d in documents]
        try:
            matrix = embedding_matrix(documents, self._dimensions)
        except ValueError:
            raise StoreMismatch(f"{group.collection}: embeddings of unequal length") from None
        return score_group(memories, matrix, group, attached)

    def _too_large(self, group: SearchGroup, counted: int) -> ExactTooLarge:
        """The refusal of a group over the cap: counted, and logged once per owner (by a
        hash: logs carry no memory_id)."""
        self._paths["too_large"] += 1
        cap = self._options.exact_max_rows
        key = (group.collection, group.owner_field, group.owner)
        if key not in self._warned:
            self._warned.add(key)
            log.warning(
                "owner over RECALLQ_MONGO_EXACT_MAX_ROWS: its requests are refused in exact "
                "mode; use RECALLQ_MONGO_SEARCH=vector or raise the cap",
                collection=group.collection, owner_field=group.owner_field,
                owner_sha256=owner_digest(group.owner), rows_at_least=counted, cap=cap,
            )  # fmt: skip
        return ExactTooLarge(group.collection, counted, cap, vector_mode=self.mode == "vector")

    async def _vector_group(self, group: SearchGroup) -> GroupResult:
        boundary = group_boundary(group)
        searches = [self._vector_query(group, boundary, row) for row in range(len(group.ks))]
        return list(await asyncio.gather(*searches))

    async def _hybrid_group(self, group: SearchGroup) -> GroupResult:
        boundary = group_boundary(group)

        async def one(row: int) -> list[Candidate]:
            vector = self._vector_query(group, boundary, row)
            lexical = self._lexical_query(group, boundary, row)
            listed, found = await asyncio.gather(vector, lexical)
            return with_lexical(
                listed, found, group.vectors[row], group.collection, group.owner_field,
                group.attached_field,
            )  # fmt: skip

        return list(await asyncio.gather(*(one(row) for row in range(len(group.ks)))))

    async def _lexical_query(
        self, group: SearchGroup, boundary: dict[str, Any], row: int
    ) -> list[dict[str, Any]]:
        """$search's BM25 list for one query (Atlas's statistics are the collection's, not
        the owner's as in the worker's own index)."""
        if not group.lexical_k(row):
            return []
        pipeline = lexical_search_pipeline(
            TEXT_INDEX,
            group.queries[row],
            boundary,
            group.lexical_k(row),
            owner_field=group.owner_field,
            attached_field=group.attached_field,
        )
        return await self._aggregate(group.collection, pipeline)

    async def _aggregate(
        self, collection: str, pipeline: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        timeout_ms = self._options.query_timeout_ms

        async def run() -> list[dict[str, Any]]:
            cursor = await self._db[collection].aggregate(pipeline, maxTimeMS=timeout_ms)
            return await cursor.to_list(None)

        return await self._guarded(run)

    async def _vector_query(
        self, group: SearchGroup, boundary: dict[str, Any], row: int
    ) -> list[Candidate]:
        pipeline = vector_search_pipeline(
            self._options.vector_index,
            group.vectors[row],
            boundary,
            group.ks[row],
            exact=self._options.vector_exact,
            owner_field=group.owner_field,
            attached_field=group.attached_field,
        )
        found = await self._aggregate(group.collection, pipeline) if group.ks[row] else []
        return [
            Candidate(
                to_memory(d, group.collection, group.owner_field),
                cosine_from_vector_score(d["score"]),
                vector_rank=rank,
                attached=attached_value(d, group.attached_field),
            )
            for rank, d in enumerate(found, start=1)
        ]

    async def _guarded(self, call: Callable[[], Awaitable[T]]) -> T:
        """Bound concurrency; turn driver failures into the worker's store errors."""
        async with self._gate:
            try:
                return await call()
            except OperationFailure as exc:
                if exc.code in NO_VECTOR_SEARCH_CODES:
                    raise _NoVectorSearch(
                        f"server has no vector search (code {exc.code})"
                    ) from None
                raise StoreUnavailable(f"mongodb: {exc.code} {exc.details}") from None
            except PyMongoError as exc:
                raise StoreUnavailable(f"mongodb: {type(exc).__name__}: {_short(exc)}") from None

    async def _check_dimensions(self) -> None:
        """Refuse data the model cannot search: a sample of each mapped collection's
        embeddings must have the model's dimensions (rows without one are skipped)."""
        found: dict[str, list[int]] = {}
        for name in self._collections:
            cursor = self._db[name].find({"embedding": {"$exists": True}}, {"embedding": 1})
            sample = await cursor.limit(DIMENSION_SAMPLE).to_list(None)
            sizes = {len(d["embedding"]) for d in sample if isinstance(d.get("embedding"), list)}
            if sizes - {self._dimensions}:
                found[name] = sorted(sizes)
        if found:
            raise ConfigError(dimension_mismatch(found, self._dimensions, self._model))

    async def _vector_search_missing(self) -> str | None:
        """Why $vectorSearch cannot serve, or None when every collection can."""
        for name in self._collections:
            collection = self._db[name]
            try:
                cursor = await collection.list_search_indexes(self._options.vector_index)
                indexes = await cursor.to_list(None)
            except OperationFailure as exc:
                if exc.code in NO_VECTOR_SEARCH_CODES or "Atlas" in str(exc):
                    return f"server has no vector search (code {exc.code})"
                # e.g. NamespaceNotFound before `worker init` created the collections
                return f"cannot list vector indexes of {name}: {exc}"
            for index in indexes:
                size = index_dimensions(index)
                if size is not None and size != self._dimensions:
                    raise ConfigError(
                        dimension_mismatch({f"{name} index": [size]}, self._dimensions, self._model)
                    )
            if not any(index.get("queryable") for index in indexes):
                return f"vector index not queryable on {name} (run `worker init`)"
        return None

    async def _text_index_queryable(self) -> bool:
        """Whether $search can serve the lexical side: its index queryable everywhere."""
        for name in self._collections:
            cursor = await self._db[name].list_search_indexes(TEXT_INDEX)
            if not any(index.get("queryable") for index in await cursor.to_list(None)):
                return False
        return True

    async def _create_text_index(self, name_of_collection: str) -> None:
        collection = self._db[name_of_collection]
        if await (await collection.list_search_indexes(TEXT_INDEX)).to_list(None):
            return
        fields = [*self._profile.owner_fields(name_of_collection), *self._profile.scope_fields]
        model = SearchIndexModel(text_index_definition(fields), name=TEXT_INDEX, type="search")
        await collection.create_search_index(model)
        log.info("text index created", collection=name_of_collection, index=TEXT_INDEX)

    async def _create_vector_index(self, name_of_collection: str) -> None:
        collection = self._db[name_of_collection]
        name = self._options.vector_index
        existing = await (await collection.list_search_indexes(name)).to_list(None)
        if existing:
            return
        filter_fields = [
            *self._profile.owner_fields(name_of_collection),
            *self._profile.scope_fields,
        ]
        model = SearchIndexModel(
            vector_index_definition(self._dimensions, filter_fields),
            name=name,
            type="vectorSearch",
        )
        await collection.create_search_index(model)
        log.info("vector index created", collection=name_of_collection, index=name)

    async def _wait_until_queryable(self) -> None:
        deadline = time.monotonic() + self._options.index_wait_s
        while (missing := await self._guarded(self._vector_search_missing)) is not None:
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"{missing} after {self._options.index_wait_s:.0f} s; "
                    "check the search node (mongot) and raise RECALLQ_MONGO_INDEX_WAIT_S"
                )
            log.info("waiting for vector indexes", reason=missing)
            await asyncio.sleep(2.0)
        log.info("vector indexes queryable")


def _short(exc: PyMongoError) -> str:
    """The driver's reason without its topology dump (one line for logs and people)."""
    text = str(exc)
    for tail in (", Timeout: ", " (configured timeouts"):
        text = text.split(tail)[0]
    return text


class _NoVectorSearch(StoreUnavailable):
    """The server has no Atlas Search: use exact search."""


class ExactTooLarge(RecallqError):
    """Exact mode refused a group over RECALLQ_MONGO_EXACT_MAX_ROWS: answered to that
    group's requests as `store_unavailable`, not retryable (as EmbeddingRefused is for the
    embedder: retrying cannot help until a setting changes). Not a StoreUnavailable, so
    nothing retries it."""

    code = ErrorCode.STORE_UNAVAILABLE
    retryable = False

    def __init__(self, collection: str, counted: int, cap: int, *, vector_mode: bool) -> None:
        """`vector_mode`: refused in vector mode, where only a lexical side without a
        queryable $search index is scored in the worker: the advice differs."""
        found = f"{collection}: this owner has at least {counted:,} memories"
        if vector_mode:
            message = f"{found}, over the {cap:,} the worker scores for a lexical side; "
        else:
            message = f"{found}, over exact mode's {cap:,}; "
        super().__init__(message + (LEXICAL_ADVICE if vector_mode else EXACT_ADVICE))
        self.collection, self.counted, self.cap = collection, counted, cap


def owner_digest(owner: str) -> str:
    """How logs name an owner: a short SHA-256 (compare with one computed from an id)."""
    return hashlib.sha256(owner.encode()).hexdigest()[:16]


def group_boundary(group: SearchGroup) -> dict[str, Any]:
    """The group's tenant filter (owner, attached ids, scope): built once per group and
    used alike by find, $vectorSearch and $search."""
    return tenant_filter(
        group.owner, group.filters, group.owner_field,
        attached_field=group.attached_field, attached_ids=group.attached_ids,
        agent_wide=group.agent_wide,
    )  # fmt: skip
