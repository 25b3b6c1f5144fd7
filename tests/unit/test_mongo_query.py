"""The MongoDB queries the store builds, checked structurally (no server needed)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from schemas.memory import FIELD_NAMES
from schemas.messages import MemoryType
from tests.mql import matches
from worker.store.base import Candidate, Memory
from worker.store.mongo_query import (
    DOCUMENT_FIELDS,
    READERS,
    attached_value,
    cosine_from_vector_score,
    index_dimensions,
    lexical_search_pipeline,
    num_candidates,
    tenant_filter,
    text_index_definition,
    to_document,
    to_memory,
    vector_filter,
    vector_index_definition,
    vector_search_pipeline,
    with_lexical,
)

QUERY = np.array([0.6, 0.8, 0.0], dtype=np.float32)


def test_vector_search_is_first_with_the_tenant_filter_inside_the_stage() -> None:
    pipeline = vector_search_pipeline("idx", QUERY, tenant_filter("agent:alice"), 12, exact=False)
    assert list(pipeline[0]) == ["$vectorSearch"]
    stage = pipeline[0]["$vectorSearch"]
    assert stage["index"] == "idx"
    assert stage["path"] == "embedding"
    assert stage["filter"] == {"memory_id": {"$eq": "agent:alice"}}
    assert stage["limit"] == 12
    assert stage["numCandidates"] == 240
    assert "exact" not in stage
    assert stage["queryVector"] == pytest.approx([0.6, 0.8, 0.0])
    assert all(type(x) is float for x in stage["queryVector"])  # BSON-encodable
    assert not any("$match" in step for step in pipeline), "filter after the stage drops hits"


def test_the_projection_leaves_the_embedding_out_and_reads_the_score() -> None:
    projection = vector_search_pipeline("idx", QUERY, tenant_filter("m"), 5, exact=False)[1][
        "$project"
    ]
    assert "embedding" not in projection
    assert projection["score"] == {"$meta": "vectorSearchScore"}
    assert projection["content"] == 1 and projection["memory_id"] == 1
    assert {field: 1 for field in DOCUMENT_FIELDS}.items() <= projection.items()


def test_exact_mode_asks_for_enn_without_num_candidates() -> None:
    stage = vector_search_pipeline("idx", QUERY, tenant_filter("m"), 5, exact=True)[0][
        "$vectorSearch"
    ]
    assert stage["exact"] is True
    assert "numCandidates" not in stage


def test_num_candidates_bounds() -> None:
    assert num_candidates(1) == 100
    assert num_candidates(50) == 1000
    assert num_candidates(400) == 8000
    assert num_candidates(5000) == 10_000


def test_num_candidates_follows_mongodbs_rule_within_the_stages_bounds() -> None:
    """20 x limit (at least 100) wherever the stage allows it; never under the limit."""
    for limit in range(1, 10_001):
        found = num_candidates(limit)
        assert limit <= found <= 10_000
        assert found == min(10_000, max(100, 20 * limit))


@pytest.mark.parametrize("hostile", [{"$ne": None}, {"$regex": ".*"}, ["a"], 7])
def test_the_tenant_filter_takes_strings_only(hostile: object) -> None:
    with pytest.raises(TypeError):
        tenant_filter(hostile)  # type: ignore[arg-type]


def test_an_operator_looking_string_stays_a_literal() -> None:
    assert tenant_filter('{"$ne": null}') == {"memory_id": {"$eq": '{"$ne": null}'}}


def test_vector_index_declares_the_filter_field() -> None:
    fields = vector_index_definition(384)["fields"]
    assert {"type": "filter", "path": "memory_id"} in fields
    vector = next(f for f in fields if f["type"] == "vector")
    assert vector == {
        "type": "vector",
        "path": "embedding",
        "numDimensions": 384,
        "similarity": "cosine",
    }


def test_score_conversion() -> None:
    assert cosine_from_vector_score(1.0) == 1.0
    assert cosine_from_vector_score(0.5) == 0.0
    assert cosine_from_vector_score(0.0) == -1.0


def test_documents_round_trip_and_memorizz_variants_are_read() -> None:
    memory = Memory(
        id="x1",
        memory_id="m",
        memory_type=MemoryType.ENTITY,
        content="c",
        timestamp=1_700_000_000.0,
        role="user",
        situational_tags=("t",),
        importance=0.7,
        last_accessed=1_700_000_100.0,
    )
    document = to_document(memory, np.ones(3, dtype=np.float32))
    assert document["_id"] == "x1" and document["embedding"] == [1.0, 1.0, 1.0]
    assert "summary_content" not in document and "memory_type" not in document
    assert document["situational_tags"] == ["t"] and document["last_accessed"] == 1_700_000_100.0
    assert to_memory(document, MemoryType.ENTITY) == memory
    bare = replace(memory, timestamp=None, role=None, situational_tags=None, last_accessed=None)
    assert set(to_document(bare, np.ones(3))) == {"_id", "memory_id", "content", "timestamp",
                                                  "importance", "embedding"}  # fmt: skip
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    for stamp in (when, when.replace(tzinfo=None), "2026-01-02T03:04:05"):
        loaded = to_memory({"_id": 1, "memory_id": "m", "timestamp": stamp}, MemoryType.ENTITY)
        assert loaded.timestamp == when.timestamp()
        assert loaded.id == "1"


def test_every_field_of_a_memory_is_read_from_a_document() -> None:
    """A field added to schemas.memory needs a reader here (id, memory_id and
    memory_type come from `_id`, the owner field and the collection)."""
    assert {"id", "memory_id", "memory_type", *READERS} == set(FIELD_NAMES)


def test_scope_filters_go_inside_the_vector_search_stage_beside_memory_id() -> None:
    scope = (("agent_id", "a1"), ("user_id", "alice"))
    [stage, _] = vector_search_pipeline(
        "vector_index", np.ones(4), tenant_filter("m", scope), 5, exact=False
    )
    assert stage["$vectorSearch"]["index"] == "vector_index"
    assert stage["$vectorSearch"]["filter"] == {
        "memory_id": {"$eq": "m"}, "agent_id": {"$eq": "a1"}, "user_id": {"$eq": "alice"},
    }  # fmt: skip
    fields = vector_index_definition(384, {"user_id", "thread_id"})["fields"]
    assert [f["path"] for f in fields if f["type"] == "filter"] == [
        "memory_id", "thread_id", "user_id",
    ]  # fmt: skip


@pytest.mark.parametrize("hostile", [{"$ne": None}, 5, None, ["alice"]])
def test_a_scope_value_must_be_a_string(hostile: object) -> None:
    with pytest.raises(TypeError):
        tenant_filter("m", [("user_id", hostile)])  # type: ignore[list-item]


def test_the_index_size_is_read_from_list_search_indexes_output() -> None:
    index = {"name": "vector_index", "queryable": True, "latestDefinition": {"fields": [
        {"type": "filter", "path": "memory_id"},
        {"type": "vector", "path": "embedding", "numDimensions": 256, "similarity": "cosine"},
    ]}}  # fmt: skip
    assert index_dimensions(index) == 256
    assert index_dimensions({"name": "x"}) is None


def test_an_owner_field_replaces_memory_id_and_a_scope_may_never_override_it() -> None:
    [stage, project] = vector_search_pipeline(
        "vector_index", np.ones(4), tenant_filter("agent-1", (("user_id", "alice"),), "agent_id"),
        5, exact=False, owner_field="agent_id",
    )  # fmt: skip
    assert stage["$vectorSearch"]["filter"] == {
        "agent_id": {"$eq": "agent-1"}, "user_id": {"$eq": "alice"},
    }  # fmt: skip
    assert project["$project"]["agent_id"] == 1
    with pytest.raises(TypeError, match="twice"):
        tenant_filter("alice", [("user_id", "bob")], owner_field="user_id")
    for hostile in ("$where", "a.b", ""):
        with pytest.raises(TypeError):
            tenant_filter("alice", (), owner_field=hostile)
    row = {"_id": 7, "agent_id": "agent-1", "content": "Porto"}
    assert to_memory(row, "toolbox", "agent_id").memory_id == "agent-1"


def test_the_atlas_lexical_pipeline_searches_the_owner_s_rows_only_and_takes_words() -> None:
    hostile = '"knee" AND content:* NEAR $where -pain \\u0000 {"$ne": null}'
    pipeline = lexical_search_pipeline(
        "recallq_text", hostile, tenant_filter("alice", (("user_id", "u1"),), "agent_id"), 20,
        owner_field="agent_id",
    )  # fmt: skip
    search = pipeline[0]["$search"]  # $search must be the first stage
    assert list(pipeline[0]) == ["$search"] and search["index"] == "recallq_text"
    compound = search["compound"]
    assert compound["must"] == [
        {"text": {"query": hostile, "path": ["content", "summary_content"]}}
    ]
    assert compound["filter"] == [
        {"equals": {"path": "agent_id", "value": "alice"}},
        {"equals": {"path": "user_id", "value": "u1"}},
    ]
    assert pipeline[1] == {"$limit": 20}
    projected = pipeline[2]["$project"]
    assert projected["lexical"] == {"$meta": "searchScore"} and projected["embedding"] == 1
    assert projected["agent_id"] == 1


def test_the_atlas_lexical_pipeline_refuses_what_the_vector_one_refuses() -> None:
    with pytest.raises(TypeError):
        tenant_filter("alice", (("agent_id", "bob"),), "agent_id")
    with pytest.raises(TypeError):
        tenant_filter({"$ne": None})  # type: ignore[arg-type]


def test_the_text_index_maps_text_stemmed_and_owners_as_tokens() -> None:
    fields = text_index_definition(["agent_id", "user_id"])["mappings"]["fields"]
    assert fields["content"] == {"type": "string", "analyzer": "lucene.english"}
    assert fields["summary_content"]["type"] == "string"
    assert {f for f, spec in fields.items() if spec == {"type": "token"}} == {
        "agent_id", "memory_id", "user_id"
    }  # fmt: skip


def test_a_vector_list_and_a_search_list_merge_with_both_ranks_and_scores() -> None:
    def document(id_: str, lexical: float, embedding: list[float] | None) -> dict[str, Any]:
        row = {"_id": id_, "memory_id": "alice", "content": f"c {id_}", "lexical": lexical}
        return row | ({"embedding": embedding} if embedding is not None else {})

    vector = [
        Candidate(to_memory({"_id": "a", "memory_id": "alice", "content": "c a"}, "t"), 0.9, 1),
        Candidate(to_memory({"_id": "b", "memory_id": "alice", "content": "c b"}, "t"), 0.5, 2),
    ]
    found = [
        document("c", 3.0, [0.0, 1.0, 0.0]),  # lexical only: its cosine computed here
        document("b", 2.0, [1.0, 0.0, 0.0]),  # in both lists
        document("d", 1.0, None),  # no embedding: left out, as exact search leaves it
    ]
    merged = with_lexical(vector, found, QUERY, "t", "memory_id")
    assert [(c.memory.id, c.vector_rank, c.lexical_rank) for c in merged] == [
        ("a", 1, None), ("b", 2, 2), ("c", None, 1)
    ]  # fmt: skip
    assert merged[0].lexical is None and merged[1].lexical == 2.0 and merged[1].score == 0.5
    assert abs(merged[2].score - 0.8) < 1e-6 and merged[2].lexical == 3.0


KB = "knowledge_base_id"
BOUNDARY = {"$or": [{"memory_id": {"$eq": "agent-1"}}, {KB: {"$in": ["kb-1", "kb-2"]}}]}


def test_attached_ids_widen_the_owner_with_memorizz_s_or_in_every_query() -> None:
    scope = (("namespace", "travel"), ("user_id", "alice"))
    attached = {"attached_field": KB, "attached_ids": ["kb-2", "kb-1", "kb-2"]}
    expected = {**BOUNDARY, "namespace": {"$eq": "travel"}, "user_id": {"$eq": "alice"}}
    assert tenant_filter("agent-1", scope, **attached) == expected  # the exact path's find
    [stage, project] = vector_search_pipeline(
        "vector_index", np.ones(4), tenant_filter("agent-1", scope, **attached), 5, exact=False,
        attached_field=KB,
    )  # fmt: skip
    assert stage["$vectorSearch"]["filter"] == expected
    assert project["$project"][KB] == 1 and project["$project"]["memory_id"] == 1
    [search, _, projected] = lexical_search_pipeline(
        "recallq_text", "river", tenant_filter("agent-1", scope, **attached), 7, attached_field=KB
    )
    assert search["$search"]["compound"]["filter"] == [
        {"compound": {"should": [
            {"equals": {"path": "memory_id", "value": "agent-1"}},
            {"in": {"path": KB, "value": ["kb-1", "kb-2"]}},
        ], "minimumShouldMatch": 1}},
        {"equals": {"path": "namespace", "value": "travel"}},
        {"equals": {"path": "user_id", "value": "alice"}},
    ]  # fmt: skip
    assert projected["$project"][KB] == 1
    # no ids: the owner's equality alone, as before
    assert tenant_filter("agent-1", (), attached_field=KB) == {"memory_id": {"$eq": "agent-1"}}


@pytest.mark.parametrize(
    "attached",
    [
        {"attached_field": KB, "attached_ids": [{"$ne": None}]},
        {"attached_field": KB, "attached_ids": [7]},
        {"attached_field": "$where", "attached_ids": ["kb-1"]},
        {"attached_field": "a.b", "attached_ids": ["kb-1"]},
        {"attached_field": "memory_id", "attached_ids": ["kb-1"]},  # the owner's field
        {"attached_field": "user_id", "attached_ids": ["kb-1"]},  # a scope field
        {"attached_field": None, "attached_ids": ["kb-1"]},
    ],
)
def test_attached_ids_are_string_literals_on_a_field_of_their_own(attached: Any) -> None:
    with pytest.raises(TypeError):
        tenant_filter("agent-1", (("user_id", "alice"),), **attached)


def test_a_chunk_found_through_an_attached_id_has_no_owner_and_keeps_its_attached_id() -> None:
    chunk = {"_id": "c1", KB: "kb-1", "content": "Porto sits on the Douro", "lexical": 2.0,
             "embedding": [0.0, 1.0, 0.0]}  # fmt: skip
    assert to_memory(chunk, "knowledge_base").memory_id == ""  # never a KeyError
    assert attached_value(chunk, KB) == "kb-1"
    assert attached_value(chunk, None) is None  # the group attached nothing
    assert attached_value({**chunk, KB: ["kb-1"]}, KB) is None  # not a string: not admitted
    [merged] = with_lexical([], [chunk], QUERY, "knowledge_base", "memory_id", KB)
    assert (merged.memory.memory_id, merged.attached, merged.lexical_rank) == ("", "kb-1", 1)


def memorizz_rows() -> list[dict[str, Any]]:
    """Every combination of the fields memorizz's knowledge-base filter reads, each field
    also missing (an ingested chunk has no memory_id; an agent-wide one no user_id)."""
    rows = []
    values = {"memory_id": ["agent-1", "agent-2", None], KB: ["kb-1", "kb-2", "kb-3", None],
              "user_id": ["alice", "bob", None], "namespace": ["travel", "food", None]}  # fmt: skip
    combos: list[dict[str, Any]] = [{}]
    for name, options in values.items():
        combos = [{**c, **({name: o} if o is not None else {})} for c in combos for o in options]
    for i, combo in enumerate(combos):
        rows.append({"_id": i, **combo})
    return rows


@pytest.mark.parametrize("ids", [[], ["kb-1"], ["kb-2", "kb-1"], ["kb-9"]])
@pytest.mark.parametrize("namespace", [None, "travel"])
def test_the_boundary_selects_what_memorizz_s_own_filter_selects(
    ids: list[str], namespace: str | None
) -> None:
    provider = pytest.importorskip("memorizz.memory_provider.mongodb.provider")
    rows = memorizz_rows()
    kwargs: dict[str, Any] = {"memory_id": "agent-1", "knowledge_base_ids": ids}
    scope: tuple[tuple[str, str], ...] = ()
    if namespace is not None:
        kwargs["namespace"], scope = namespace, (("namespace", namespace),)
    theirs = provider.MongoDBProvider._knowledge_base_search_filter(kwargs)
    ours = tenant_filter("agent-1", scope, attached_field=KB, attached_ids=ids)
    selected = [r["_id"] for r in rows if matches(r, ours)]
    assert selected == [r["_id"] for r in rows if matches(r, theirs)]
    assert selected  # the oracle selects something in every case
    # with user_id, memorizz also admits the agent-wide chunks (no user_id) of its
    # knowledge base; recallq's filters are equalities, so it returns those without them
    theirs = provider.MongoDBProvider._knowledge_base_search_filter({**kwargs, "user_id": "alice"})
    ours = tenant_filter("agent-1", (*scope, ("user_id", "alice")), attached_field=KB,
                         attached_ids=ids)  # fmt: skip
    wider = [r["_id"] for r in rows if matches(r, theirs)]
    assert [r["_id"] for r in rows if matches(r, ours)] == [
        i for i in wider if rows[i].get("user_id") == "alice"
    ]
    assert len(wider) > len([r for r in rows if matches(r, ours)])


MISSING = object()


def agent_rows() -> list[dict[str, Any]]:
    """Two agents' rows: each user's, the agent's with user_id null (as memorizz 0.17 writes
    them) and with no user_id at all (rows older than memorizz's user scope)."""
    users: list[Any] = ["alice", "bob", None, MISSING]
    return [
        {"_id": i, "agent_id": agent, **({} if user is MISSING else {"user_id": user})}
        for i, (agent, user) in enumerate((a, u) for a in ("agent-1", "agent-2") for u in users)
    ]


WIDE = {"$or": [{"user_id": {"$eq": "alice"}}, {"user_id": {"$exists": False}}]}


def test_agent_wide_widens_the_user_equality_to_the_agent_s_rows_in_every_query() -> None:
    scope = (("namespace", "travel"), ("user_id", "alice"))
    found = tenant_filter("agent-1", scope, "agent_id", agent_wide="user_id")
    assert found == {"agent_id": {"$eq": "agent-1"}, "namespace": {"$eq": "travel"},
                     "user_id": {"$in": ["alice", None]}}  # fmt: skip
    [stage, _] = vector_search_pipeline(
        "vector_index", np.ones(4),
        tenant_filter("agent-1", scope, "agent_id", agent_wide="user_id"), 5, exact=False,
        owner_field="agent_id",
    )  # fmt: skip
    # $vectorSearch filters on no null: the value, or no user_id in the index at all
    assert stage["$vectorSearch"]["filter"] == {
        **WIDE, "agent_id": {"$eq": "agent-1"}, "namespace": {"$eq": "travel"}
    }  # fmt: skip
    [search, _, _] = lexical_search_pipeline(
        "recallq_text", "river", tenant_filter("agent-1", scope, "agent_id", agent_wide="user_id"),
        7, owner_field="agent_id",
    )  # fmt: skip
    assert search["$search"]["compound"]["filter"] == [
        {"equals": {"path": "agent_id", "value": "agent-1"}},
        {"equals": {"path": "namespace", "value": "travel"}},
        {"compound": {"should": [
            {"equals": {"path": "user_id", "value": "alice"}},
            {"equals": {"path": "user_id", "value": None}},
            {"compound": {"mustNot": [{"exists": {"path": "user_id"}}]}},
        ], "minimumShouldMatch": 1}},
    ]  # fmt: skip
    # without it, or with the field not filtered on: the equality, as before
    assert tenant_filter("agent-1", scope, "agent_id")["user_id"] == {"$eq": "alice"}
    for field in ("thread_id", "agent_id", "$where"):  # never the owner, never unfiltered
        with pytest.raises(TypeError, match="agent_wide"):
            tenant_filter("agent-1", scope, "agent_id", agent_wide=field)


def test_with_attached_ids_the_two_alternatives_are_anded_in_the_vector_filter() -> None:
    attached: dict[str, Any] = {"attached_field": KB, "attached_ids": ["kb-1", "kb-2"]}
    boundary = tenant_filter("agent-1", (("user_id", "alice"),), **attached,
                             agent_wide="user_id")  # fmt: skip
    assert boundary == {**BOUNDARY, "user_id": {"$in": ["alice", None]}}
    assert vector_filter(boundary) == {"$and": [{"$or": BOUNDARY["$or"]}, WIDE]}
    assert vector_filter(BOUNDARY) == BOUNDARY  # nothing widened: unchanged
    boundary = tenant_filter("agent-1", (("user_id", "a"),), **attached, agent_wide="user_id")
    [search, _, _] = lexical_search_pipeline("i", "q", boundary, 3)
    should = [clause["compound"]["should"] for clause in search["$search"]["compound"]["filter"]]
    assert [len(parts) for parts in should] == [2, 3]  # owner or attached; user, null or none


@pytest.mark.parametrize("store", ["knowledge_base", "toolbox", "skillbox", "summaries"])
@pytest.mark.parametrize("user", ["alice", "bob"])
def test_the_widened_filter_admits_what_memorizz_s_user_scope_admits(store: str, user: str) -> None:
    base = pytest.importorskip("memorizz.memory_provider.base")
    provider = pytest.importorskip("memorizz.memory_provider.mongodb.provider")
    rows = agent_rows()
    scope = (("user_id", user),)
    agent_wide = "user_id" if store in base.AGENT_WIDE_STORES else None
    ours = tenant_filter("agent-1", scope, "agent_id", agent_wide=agent_wide)
    theirs = {"agent_id": "agent-1", **provider._mongo_user_id_predicate(user, store)}
    selected = [r["_id"] for r in rows if matches(r, ours)]
    assert selected == [r["_id"] for r in rows if matches(r, theirs)]
    assert selected == [
        r["_id"] for r in rows
        if r["agent_id"] == "agent-1" and base.user_scope_matches(r.get("user_id"), user, store)
    ]  # fmt: skip
    assert len(selected) == (3 if agent_wide else 1)  # the user's, null, none; or the user's
    # $vectorSearch: a null user_id is no filter value, so the index holds none for it
    indexed = [{k: v for k, v in r.items() if v is not None} for r in rows]
    vector = vector_filter(ours)
    assert [r["_id"] for r in indexed if matches(r, vector)] == selected


@pytest.mark.parametrize("ids", [[], ["kb-1"], ["kb-2", "kb-1"]])
def test_the_widened_knowledge_base_selects_what_memorizz_s_own_filter_selects(
    ids: list[str],
) -> None:
    provider = pytest.importorskip("memorizz.memory_provider.mongodb.provider")
    rows = memorizz_rows()
    theirs = provider.MongoDBProvider._knowledge_base_search_filter(
        {"memory_id": "agent-1", "knowledge_base_ids": ids, "user_id": "alice"}
    )
    ours = tenant_filter("agent-1", (("user_id", "alice"),), attached_field=KB,
                         attached_ids=ids, agent_wide="user_id")  # fmt: skip
    selected = [r["_id"] for r in rows if matches(r, ours)]
    assert selected == [r["_id"] for r in rows if matches(r, theirs)]
    assert any("user_id" not in rows[i] for i in selected)  # the agent's rows are in it
    assert all(rows[i].get("user_id") in ("alice", None) for i in selected)
    vector = vector_filter(ours)
    assert [r["_id"] for r in rows if matches(r, vector)] == selected  # no null stored here
