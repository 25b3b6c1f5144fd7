"""recallq's hits as the documents memorizz's provider returns.

A hit carries what recallq ranks by, not the row: memorizz's callers read the row's
own fields (content dicts, thread ids, metadata, embeddings for deduplication). So
the rows of the hits are read back from the wrapped provider's database, one query per
collection, in recallq's order, with the `score` memorizz's $vectorSearch adds: Atlas'
vectorSearchScore, (1 + cosine) / 2 for a cosine index.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId

from schemas.messages import MemoryHit


def collection_of(store: str) -> str:
    """memorizz's collection of a memory type name (its older long_term_memory alias too)."""
    return "knowledge_base" if store == "long_term_memory" else store


def id_keys(ids: Sequence[str]) -> list[Any]:
    """Each id as recallq reports it (str of `_id`) and as the ObjectId it may be stored as."""
    keys: list[Any] = []
    for value in ids:
        keys.append(value)
        with contextlib.suppress(InvalidId, TypeError):
            keys.append(ObjectId(value))
    return keys


def read_rows(
    database: Any, hits: Mapping[str, Sequence[MemoryHit]], include_embedding: bool
) -> dict[str, dict[str, dict[str, Any]]]:
    """collection -> str(_id) -> row, for every hit: one find per collection."""
    wanted: dict[str, list[str]] = {}
    for store, found in hits.items():
        wanted.setdefault(collection_of(store), []).extend(hit.id for hit in found)
    projection = None if include_embedding else {"embedding": 0}
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for collection, ids in wanted.items():
        cursor = database[collection].find({"_id": {"$in": id_keys(ids)}}, projection)
        rows[collection] = {str(row["_id"]): row for row in cursor}
    return rows


def as_documents(
    store: str, hits: Sequence[MemoryHit], rows: Mapping[str, Mapping[str, dict[str, Any]]]
) -> list[dict[str, Any]]:
    """The rows of `hits`, best first, each with memorizz's `score`; a row deleted since
    the search is left out, as a later search would leave it out."""
    found = rows.get(collection_of(store), {})
    documents = []
    for hit in hits:
        row = found.get(hit.id)
        if row is not None:
            documents.append({**row, "score": (1.0 + hit.score) / 2.0})
    return documents
