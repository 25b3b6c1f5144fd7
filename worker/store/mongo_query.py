"""MongoDB documents and queries, as pure functions: testable without a server.

Documents follow memorizz: one collection per memory type, `_id` (the memory's
id), `embedding` (array of floats) and a memory's other fields under their own
names (schemas.memory), the optional ones only where set. memorizz's rows name
some of them otherwise (worker.store.fields reads every variant).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from schemas.memory import FIELD_NAMES, MEMORY_FIELDS
from worker.store.base import Candidate, Memory, Vectors
from worker.store.fields import (
    ACCESS_FIELDS,
    IMPORTANCE_FIELDS,
    TEXT_FIELDS,
    TIME_FIELDS,
    read_content,
    read_importance,
    read_last_accessed,
    read_time,
)

MAX_NUM_CANDIDATES = 10_000
# A memory's fields as a document holds them: its id is `_id`, its memory type the
# collection's name.
DOCUMENT_FIELDS = tuple(name for name in FIELD_NAMES if name not in ("id", "memory_type"))
ALWAYS_WRITTEN = tuple(f.name for f in MEMORY_FIELDS if f.required and f.name in DOCUMENT_FIELDS)
# What a Memory is read from: its fields and the other names memorizz gives them.
READ_FIELDS = tuple(
    dict.fromkeys(
        (*DOCUMENT_FIELDS, "metadata", *TIME_FIELDS, *ACCESS_FIELDS, *IMPORTANCE_FIELDS,
         *TEXT_FIELDS)
    )
)  # fmt: skip


def tenant_filter(
    memory_id: str,
    scope: Sequence[tuple[str, str]] = (),
    owner_field: str = "memory_id",
    *,
    attached_field: str | None = None,
    attached_ids: Sequence[str] = (),
    agent_wide: str | None = None,
) -> dict[str, Any]:
    """The owner equality (`owner_field` = the request's memory_id) and the scope
    equalities, as a find() filter; `$eq` makes every value a literal even if it were an
    operator document (validation already allows only strings). A field named twice is
    refused: a scope value must never replace the owner's. With attached ids, the owner
    equality becomes memorizz's knowledge-base boundary, `$or` of it and `attached_field
    $in ids` (its _knowledge_base_search_filter), the scope still ANDed on top. With
    `agent_wide` (a scope field), that field's equality becomes memorizz's user scope in
    an agent-wide store, `$in [value, null]`: null matches a null or missing field."""
    clauses = [(owner_field, memory_id), *scope]
    attached = [(attached_field, i) for i in attached_ids] if attached_field is not None else []
    if attached_ids and attached_field is None:
        raise TypeError("attached ids need an attached field")
    _check_fields([*clauses, *attached])
    named = [field for field, _ in clauses] + ([attached_field] if attached else [])
    if len(set(named)) < len(named):
        raise TypeError(f"filter names {owner_field!r} or {attached_field!r} twice")
    if agent_wide is not None and agent_wide not in {field for field, _ in scope}:
        raise TypeError(f"agent_wide {agent_wide!r} must name a scope field of the filter")
    found: dict[str, Any] = {field: {"$eq": value} for field, value in clauses}
    if agent_wide is not None:  # the user's rows and the agent's (no user)
        found[agent_wide] = {"$in": [found[agent_wide]["$eq"], None]}
    if attached:
        owner = {owner_field: found.pop(owner_field)}
        ids = sorted({value for _, value in attached})
        found = {"$or": [owner, {attached_field: {"$in": ids}}], **found}
    return found


def _check_fields(clauses: Sequence[tuple[str | None, object]]) -> None:
    """Every clause a string value on a plain field: no operator, no path, no nothing."""
    for field, value in clauses:
        if not isinstance(value, str) or not field or field.startswith("$") or "." in field:
            raise TypeError(f"filter {field!r} must be a string equality on a plain field")


def vector_filter(boundary: Mapping[str, Any]) -> dict[str, Any]:
    """A tenant_filter as $vectorSearch's pre-filter, whose documented values are
    booleans, dates, objectIds, numbers, strings and UUIDs, not null: a widened field's
    `$in [value, null]` becomes `$or` of its `$eq` and `$exists: false` (documented there),
    ANDed with the attached ids' `$or` where there is one. memorizz writes its agent-wide
    rows with user_id null: that they count as missing, a null being no filter value the
    index holds, is assumed here, not checked on Atlas."""
    found: dict[str, Any] = {}
    alternatives: list[list[dict[str, Any]]] = []
    for field, condition in boundary.items():
        if field == "$or":
            alternatives.append(list(condition))
        elif None in condition.get("$in", ()):
            [value] = [v for v in condition["$in"] if v is not None]
            alternatives.append([{field: {"$eq": value}}, {field: {"$exists": False}}])
        else:
            found[field] = condition
    if len(alternatives) == 1:
        return {"$or": alternatives[0], **found}
    if alternatives:
        return {"$and": [{"$or": parts} for parts in alternatives], **found}
    return found


def projection(
    owner_field: str, *, embedding: bool, attached_field: str | None = None
) -> dict[str, Any]:
    """The fields a Memory is read from, the owner and attached fields among them."""
    extra = (attached_field,) if attached_field else ()
    fields = (*READ_FIELDS, owner_field, *extra, *(("embedding",) if embedding else ()))
    return {field: 1 for field in fields}


def num_candidates(limit: int) -> int:
    """MongoDB's advice: at least 20 x limit, here never under 100 nor under `limit`, at
    most 10,000 (the stage's bounds: limit <= numCandidates <= 10,000)."""
    # https://www.mongodb.com/docs/atlas/atlas-vector-search/vector-search-stage/ ("numCandidates
    # Selection"): at least 20 x limit as the starting point; larger indexes, low limits and
    # quantized vectors may need more. A filtered search is HNSW restricted to the filter's
    # documents, and where fewer of them match than numCandidates (decided per segment) it
    # scores them all, exactly (MongoDB's answer in its forum, thread 321689): a large owner
    # is searched approximately over its own rows, a small one exactly. Nothing in the
    # guidance asks more for a large owner than 20 x limit; our index is not quantized.
    return min(MAX_NUM_CANDIDATES, max(100, 20 * limit, limit))


def vector_search_pipeline(
    index: str,
    query: Vectors,
    boundary: dict[str, Any],
    limit: int,
    *,
    exact: bool,
    owner_field: str = "memory_id",
    attached_field: str | None = None,
) -> list[dict[str, Any]]:
    """$vectorSearch first, the group's tenant_filter `boundary` inside the stage ($or,
    $in, $exists are allowed there), the embedding left out."""
    stage: dict[str, Any] = {
        "index": index,
        "path": "embedding",
        "queryVector": [float(x) for x in query],
        "filter": vector_filter(boundary),
        "limit": limit,
    }
    if exact:
        stage["exact"] = True
    else:
        stage["numCandidates"] = num_candidates(limit)
    fields = projection(owner_field, embedding=False, attached_field=attached_field)
    fields["score"] = {"$meta": "vectorSearchScore"}
    return [{"$vectorSearch": stage}, {"$project": fields}]


def vector_index_definition(dimensions: int, filter_fields: Iterable[str] = ()) -> dict[str, Any]:
    """The vector field and, as filter fields, memory_id and every owner and scope field."""
    vector = {"type": "vector", "path": "embedding", "numDimensions": dimensions,
              "similarity": "cosine"}  # fmt: skip
    paths = sorted({"memory_id", *filter_fields})
    filters = [{"type": "filter", "path": path} for path in paths]
    return {"fields": [vector, *filters]}


TEXT_INDEX = "recallq_text"  # the Atlas Search (BM25) index beside the vector index
TEXT_PATHS = ("content", "summary_content")


def text_index_definition(filter_fields: Iterable[str] = ()) -> dict[str, Any]:
    """An Atlas Search index for the lexical side: the text fields with Lucene's English
    analyzer (stemmed, as the worker's own BM25), memory_id and every owner and scope
    field as `token` (what `equals` needs)."""
    fields: dict[str, Any] = {
        path: {"type": "string", "analyzer": "lucene.english"} for path in TEXT_PATHS
    }
    fields |= {path: {"type": "token"} for path in sorted({"memory_id", *filter_fields})}
    return {"mappings": {"dynamic": False, "fields": fields}}


def lexical_search_pipeline(
    index: str,
    text: str,
    boundary: dict[str, Any],
    limit: int,
    *,
    owner_field: str = "memory_id",
    attached_field: str | None = None,
) -> list[dict[str, Any]]:
    """$search first, BM25 over the text fields; the group's tenant_filter `boundary`
    (the owner, or with attached ids a compound `should` of the owner and `in` the ids;
    the scope, a widened field as a `should` of its value, null and not there) as
    filters inside the stage (they do not score). The `text` operator takes the query as
    words, never as query syntax (`queryString` would parse AND, quotes, fields)."""
    search = {
        "index": index,
        "compound": {
            "must": [{"text": {"query": text, "path": list(TEXT_PATHS)}}],
            "filter": [_search_clause(f, v) for f, v in boundary.items()],
        },
    }
    fields = projection(owner_field, embedding=True, attached_field=attached_field)
    fields["lexical"] = {"$meta": "searchScore"}  # and the embedding: a lexical-only hit's cosine
    return [{"$search": search}, {"$limit": limit}, {"$project": fields}]


def _search_clause(field: str, value: Any) -> dict[str, Any]:
    """One clause of tenant_filter as an Atlas Search operator: `$eq` -> equals, `$in` ->
    in, `$or` -> compound should (one must match); a widened field's `$in [value, null]`
    -> a should of equals value, equals null (a null field) and mustNot exists (none)."""
    if field == "$or":
        should = [_search_clause(f, v) for part in value for f, v in part.items()]
        return {"compound": {"should": should, "minimumShouldMatch": 1}}
    if "$in" in value and None in value["$in"]:
        [wanted] = [v for v in value["$in"] if v is not None]
        should = [
            {"equals": {"path": field, "value": wanted}},
            {"equals": {"path": field, "value": None}},
            {"compound": {"mustNot": [{"exists": {"path": field}}]}},
        ]
        return {"compound": {"should": should, "minimumShouldMatch": 1}}
    if "$in" in value:
        return {"in": {"path": field, "value": list(value["$in"])}}
    return {"equals": {"path": field, "value": value["$eq"]}}


def with_lexical(
    vector: Sequence[Candidate],
    found: Sequence[dict[str, Any]],
    query: Vectors,
    collection: str,
    owner_field: str,
    attached_field: str | None = None,
) -> list[Candidate]:
    """One query's candidates from its $vectorSearch list and its $search list (documents
    with `lexical`, the searchScore, and `embedding`): the vector list, each with its
    lexical rank and BM25 where $search found it too, then the lexical-only documents,
    their cosine computed here (one without a usable embedding is left out, as exact
    search leaves it out)."""
    ranks = {str(d["_id"]): (rank, d) for rank, d in enumerate(found, start=1)}
    merged = [
        replace(
            c, lexical=float(ranks[c.memory.id][1]["lexical"]), lexical_rank=ranks[c.memory.id][0]
        )
        if c.memory.id in ranks
        else c
        for c in vector
    ]
    seen = {c.memory.id for c in vector}
    for id_, (rank, document) in ranks.items():
        embedding = document.get("embedding")
        if id_ in seen or not isinstance(embedding, list) or len(embedding) != len(query):
            continue
        row = embedding_matrix([document], len(query))[0]
        cosine = float(row @ query)
        memory = to_memory(document, collection, owner_field)
        attached = attached_value(document, attached_field)
        merged.append(Candidate(memory, cosine, None, float(document["lexical"]), rank, attached))
    return merged


def index_dimensions(index: Mapping[str, Any]) -> int | None:
    """numDimensions of a search index's vector field, as listSearchIndexes reports it."""
    definition = index.get("latestDefinition") or index.get("definition") or {}
    for field in definition.get("fields", []):
        if isinstance(field, dict) and field.get("type") == "vector":
            size = field.get("numDimensions")
            return size if isinstance(size, int) else None
    return None


def cosine_from_vector_score(score: float) -> float:
    """Atlas reports cosine similarity as (1 + cos) / 2."""
    return 2.0 * score - 1.0


def to_document(memory: Memory, embedding: Vectors) -> dict[str, Any]:
    document: dict[str, Any] = {"_id": memory.id}
    for name in DOCUMENT_FIELDS:
        value = getattr(memory, name)
        if isinstance(value, tuple):
            value = list(value) or None
        if value is not None or name in ALWAYS_WRITTEN:
            document[name] = value
    document["embedding"] = [float(x) for x in embedding]
    return document


def _text(name: str) -> Callable[[Mapping[str, Any]], str | None]:
    def read(document: Mapping[str, Any]) -> str | None:
        value = document.get(name)
        return value if isinstance(value, str) else None

    return read


def _tags(document: Mapping[str, Any]) -> tuple[str, ...] | None:
    tags = document.get("situational_tags")
    return tuple(str(tag) for tag in tags) if isinstance(tags, list) else None


# How each field of a Memory is read from a document, beside `id` (from `_id`),
# `memory_id` (from the owner field) and `memory_type` (the collection).
READERS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "content": read_content,
    "timestamp": read_time,
    "summary_content": _text("summary_content"),
    "role": _text("role"),
    "situational_tags": _tags,
    "importance": read_importance,
    "last_accessed": read_last_accessed,
}


def to_memory(document: dict[str, Any], collection: str, owner_field: str = "memory_id") -> Memory:
    """The memory a document holds; its memory_id is its owner field's value, "" where it
    has none (a knowledge-base chunk found through an attached id carries only its
    knowledge_base_id: the candidate's `attached` holds that)."""
    owner = document.get(owner_field)
    return Memory(
        id=str(document["_id"]),
        memory_id="" if owner is None else str(owner),
        memory_type=collection,
        **{name: read(document) for name, read in READERS.items()},
    )


def attached_value(document: Mapping[str, Any], attached_field: str | None) -> str | None:
    """The document's attached field (None without one, or where no ids were attached)."""
    if attached_field is None:
        return None
    value = document.get(attached_field)
    return value if isinstance(value, str) else None


def embedding_matrix(documents: list[dict[str, Any]], dimensions: int) -> Vectors:
    """Row-normalised float32 embeddings: documents written by other tools may not be."""
    if not documents:
        return np.zeros((0, dimensions), dtype=np.float32)
    matrix = np.asarray([doc["embedding"] for doc in documents], dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True).astype(np.float32)
    normalised: Vectors = matrix / np.maximum(norms, np.float32(1e-12))
    return normalised
