"""Store profiles: which memory types a deployment serves and where each one lives."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from schemas.messages import RetrievalRequest
from worker.access.profiles import load_profile
from worker.errors import ConfigError, InvalidMessage
from worker.search import build_groups
from worker.settings import WorkerSettings


def request(request_id: str, limits: dict[str, int], memory_id: str = "m") -> RetrievalRequest:
    return RetrievalRequest(request_id=request_id, query="q", memory_id=memory_id, limits=limits)


def test_the_memorizz_profile_maps_memorizz_names_and_keeps_long_term_as_an_alias() -> None:
    profile = load_profile("memorizz")
    assert profile.collection("knowledge_base") == "knowledge_base"
    assert profile.collection("long_term_memory") == "knowledge_base"
    assert {"toolbox", "skillbox", "workflow_memory", "entity_memory"} <= set(profile.memory_types)
    assert "procedural_memory" not in profile.memory_types
    assert len(profile.distinct_collections) == len(profile.memory_types) - 1


def test_an_unknown_memory_type_is_refused_naming_the_ones_served() -> None:
    with pytest.raises(InvalidMessage, match=r"'procedural_memory'.*memorizz profile.*toolbox"):
        load_profile("memorizz").check(["knowledge_base", "procedural_memory"])
    load_profile("recallq").check(["procedural_memory", "long_term_memory"])


def test_settings_add_and_override_mappings_and_refuse_malformed_ones() -> None:
    profile = load_profile("recallq", "notes=agent_notes, long_term_memory=facts")
    assert profile.collection("notes") == "agent_notes"
    assert profile.collection("long_term_memory") == "facts"
    for bad in ("notes", "Notes=x", "notes=$x", "a=b=c"):
        with pytest.raises(ConfigError, match="RECALLQ_MEMORY_TYPES"):
            load_profile("recallq", bad)
    with pytest.raises(ConfigError, match="RECALLQ_STORE_PROFILE"):
        load_profile("mem0")


def test_an_alias_and_its_collection_share_one_search_and_keep_their_own_limits() -> None:
    profile = load_profile("recallq", "facts=long_term_memory")
    requests = [
        request("a", {"facts": 2, "summaries": 1}),
        request("b", {"long_term_memory": 5}),
        request("c", {"long_term_memory": 1}, memory_id="other"),
    ]
    vectors = np.eye(3, 4, dtype=np.float32)
    groups, slots = build_groups(requests, vectors, 1, profile)
    by_key = {(g.collection, g.owner): (g, s) for g, s in zip(groups, slots, strict=True)}
    group, members = by_key[("long_term_memory", "m")]
    assert members == [(0, "facts"), (1, "long_term_memory")]
    assert group.ks == (2, 5)
    assert set(by_key) == {
        ("long_term_memory", "m"), ("summaries", "m"), ("long_term_memory", "other")
    }  # fmt: skip


def test_memorizz_rows_written_without_memory_id_are_owned_by_the_field_they_carry() -> None:
    profile = load_profile("memorizz", scope_fields="user_id")
    owners = {t: profile.owner(t) for t in profile.memory_types}
    assert owners == {
        "conversation_memory": "memory_id", "entity_memory": "memory_id",
        "long_term_memory": "memory_id", "knowledge_base": "knowledge_base_id",
        "workflow_memory": "agent_id", "toolbox": "agent_id", "skillbox": "agent_id",
        "summaries": "user_id", "short_term_memory": "user_id",
    }  # fmt: skip
    assert profile.owner_fields("knowledge_base") == ["knowledge_base_id", "memory_id"]
    assert profile.check(["toolbox", "workflow_memory"], ["user_id"]) == "agent_id"
    # long_term_memory and knowledge_base: one collection, two owners, two searches
    groups, _ = build_groups(
        [request("a", {"long_term_memory": 1}), request("b", {"knowledge_base": 1})],
        np.eye(2, 4, dtype=np.float32), 1, profile,
    )  # fmt: skip
    assert sorted(g.owner_field for g in groups) == ["knowledge_base_id", "memory_id"]


def test_one_request_names_one_owner_and_never_filters_on_it() -> None:
    profile = load_profile("memorizz", scope_fields="user_id,agent_id")
    with pytest.raises(InvalidMessage, match=r"conversation_memory by memory_id.*summaries by"):
        profile.check(["conversation_memory", "summaries"])
    with pytest.raises(InvalidMessage, match="'user_id' is the owner field here"):
        profile.check(["summaries"], ["user_id"])


def test_settings_name_owner_fields_and_the_embedded_store_refuses_them() -> None:
    profile = load_profile("recallq", "notes=agent_notes:agent_id, facts=long_term_memory")
    assert profile.owner("notes") == "agent_id"
    assert profile.owner("facts") == "memory_id"
    with pytest.raises(ConfigError, match="RECALLQ_MEMORY_TYPES"):
        load_profile("recallq", "notes=agent_notes:$where")
    with pytest.raises(ConfigError, match="embedded store keeps memories by memory_id only"):
        WorkerSettings(store_url="sqlite:///x.db", store_profile="memorizz").profile()


@pytest.mark.parametrize(
    "filters", [{"user_id": {"$ne": None}}, {"user_id": 5}, {"$where": "1"}, {"user_id": ""}]
)
def test_filters_are_string_equalities_on_field_names(filters: dict[str, object]) -> None:
    body = {"request_id": "r", "query": "q", "memory_id": "m", "limits": {"toolbox": 1}}
    with pytest.raises(ValidationError):
        RetrievalRequest.model_validate_json(json.dumps({**body, "filters": filters}))


def test_only_listed_scope_fields_pass_and_the_embedded_store_has_none() -> None:
    mongo = load_profile("memorizz", scope_fields="user_id,agent_id")
    mongo.check(["toolbox"], ["user_id"])
    with pytest.raises(InvalidMessage, match=r"'thread_id'.*scope fields: agent_id, user_id"):
        mongo.check(["toolbox"], ["user_id", "thread_id"])
    sqlite = WorkerSettings(store_url="sqlite:///x.db").profile()
    with pytest.raises(InvalidMessage, match="no scopes"):
        sqlite.check(["long_term_memory"], ["user_id"])
    with pytest.raises(ConfigError, match="RECALLQ_SCOPE_FIELDS"):
        load_profile("recallq", scope_fields="user_id,$where")
