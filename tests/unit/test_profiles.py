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
        "long_term_memory": "memory_id", "knowledge_base": "memory_id",
        "workflow_memory": "agent_id", "toolbox": "agent_id", "skillbox": "agent_id",
        "summaries": "user_id", "short_term_memory": "user_id",
    }  # fmt: skip
    attached = {t: f for t in profile.memory_types if (f := profile.attached_field(t))}
    assert attached == {"knowledge_base": "knowledge_base_id",
                        "long_term_memory": "knowledge_base_id"}  # fmt: skip
    # worker init indexes (and declares as filter fields) the attached field too
    assert profile.owner_fields("knowledge_base") == ["knowledge_base_id", "memory_id"]
    assert profile.owner_fields("conversation_memory") == ["memory_id"]
    assert profile.check(["toolbox", "workflow_memory"], ["user_id"]) == "agent_id"
    # the agent's facts and its conversation: one owner, one request (issue 24)
    assert profile.check(["knowledge_base", "conversation_memory"]) == "memory_id"
    # long_term_memory and knowledge_base: one collection, one owner, one search
    groups, slots = build_groups(
        [request("a", {"long_term_memory": 1}), request("b", {"knowledge_base": 1})],
        np.eye(2, 4, dtype=np.float32), 1, profile,
    )  # fmt: skip
    assert [(g.collection, g.owner_field) for g in groups] == [("knowledge_base", "memory_id")]
    assert slots == [[(0, "long_term_memory"), (1, "knowledge_base")]]


def attaching(request_id: str, limits: dict[str, int], ids: list[str] | None,
              memory_id: str = "m") -> RetrievalRequest:  # fmt: skip
    return RetrievalRequest(request_id=request_id, query="q", memory_id=memory_id,
                            limits=limits, knowledge_base_ids=ids)  # fmt: skip


def test_attached_ids_widen_only_the_types_with_an_attached_field() -> None:
    profile = load_profile("memorizz", scope_fields="user_id,knowledge_base_id")
    requests = [
        attaching("a", {"knowledge_base": 2, "conversation_memory": 3}, ["kb-2", "kb-1", "kb-2"]),
        attaching("b", {"long_term_memory": 1}, ["kb-1", "kb-2"]),  # the same ids: one search
        attaching("c", {"knowledge_base": 1}, ["kb-1"]),  # other ids: a search of its own
        attaching("d", {"knowledge_base": 1}, []),  # none attached: the owner's alone
        attaching("e", {"knowledge_base": 1}, None),
    ]
    groups, slots = build_groups(requests, np.eye(5, 4, dtype=np.float32), 1, profile)
    found = {(g.collection, g.attached_field, g.attached_ids): s
             for g, s in zip(groups, slots, strict=True)}  # fmt: skip
    assert found == {
        ("knowledge_base", "knowledge_base_id", ("kb-1", "kb-2")): [
            (0, "knowledge_base"), (1, "long_term_memory")],
        ("conversation_memory", None, ()): [(0, "conversation_memory")],
        ("knowledge_base", "knowledge_base_id", ("kb-1",)): [(2, "knowledge_base")],
        ("knowledge_base", None, ()): [(3, "knowledge_base"), (4, "knowledge_base")],
    }  # fmt: skip
    assert {g.owner for g in groups} == {"m"}


def test_attached_ids_need_a_type_that_takes_them_and_are_never_a_filter_too() -> None:
    profile = load_profile("memorizz", scope_fields="user_id,knowledge_base_id")
    assert profile.check(["knowledge_base", "conversation_memory"], [], ["kb-1"]) == "memory_id"
    assert profile.attached_field_of(["conversation_memory", "knowledge_base"]) == (
        "knowledge_base_id"
    )
    assert profile.attached_field_of(["conversation_memory"]) is None
    with pytest.raises(InvalidMessage, match=r"none of conversation_memory.*knowledge_base by"):
        profile.check(["conversation_memory"], [], ["kb-1"])
    with pytest.raises(InvalidMessage, match="'knowledge_base_id' is the attached field here"):
        profile.check(["knowledge_base"], ["knowledge_base_id"], ["kb-1"])
    profile.check(["knowledge_base"], ["knowledge_base_id"])  # a filter alone narrows
    with pytest.raises(InvalidMessage, match="one request per owner"):  # owners still apply
        profile.check(["knowledge_base", "toolbox"], [], ["kb-1"])
    sqlite = WorkerSettings(store_url="sqlite:///x.db").profile()  # recallq: nothing attaches
    with pytest.raises(InvalidMessage, match=r"none of long_term_memory.*recallq profile\): none"):
        sqlite.check(["long_term_memory"], [], ["kb-1"])
    sqlite.check(["long_term_memory"], [], [])  # an empty list attaches nothing


def test_settings_name_attached_fields_and_an_entry_replaces_the_whole_mapping() -> None:
    profile = load_profile("recallq", "notes=agent_notes:memory_id:notebook_id")
    assert (profile.owner("notes"), profile.attached_field("notes")) == ("memory_id", "notebook_id")
    assert profile.owner_fields("agent_notes") == ["memory_id", "notebook_id"]
    memorizz = load_profile("memorizz", "knowledge_base=kb_chunks")
    assert memorizz.attached_field("knowledge_base") is None  # replaced: nothing attached
    assert memorizz.attached_field("long_term_memory") == "knowledge_base_id"
    kept = load_profile("memorizz", "knowledge_base=kb_chunks::knowledge_base_id")
    assert kept.owner("knowledge_base") == "memory_id"
    assert kept.attached_field("knowledge_base") == "knowledge_base_id"
    for bad in ("n=c:memory_id:memory_id", "n=c:a:$x", "n=c:a:b:c", "n=c::Kb"):
        with pytest.raises(ConfigError, match="RECALLQ_MEMORY_TYPES"):
            load_profile("recallq", bad)


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


def test_the_memorizz_profile_marks_memorizz_s_agent_wide_stores_by_collection() -> None:
    profile = load_profile("memorizz", scope_fields="user_id,namespace")
    wide = {t: f for t in profile.memory_types if (f := profile.agent_wide_field(t))}
    assert wide == {"knowledge_base": "user_id", "long_term_memory": "user_id",
                    "toolbox": "user_id", "skillbox": "user_id"}  # fmt: skip
    base = pytest.importorskip("memorizz.memory_provider.base")
    assert {profile.collection(t) for t in wide} == set(base.AGENT_WIDE_STORES)
    assert dict(load_profile("recallq", scope_fields="user_id").agent_wide) == {}
    # only a type whose user field is filtered on is widened
    assert profile.widened(["knowledge_base", "conversation_memory"], ["user_id"]) == [
        "knowledge_base"
    ]
    assert profile.widened(["toolbox", "skillbox"], ["user_id"]) == ["skillbox", "toolbox"]
    assert profile.widened(["knowledge_base"], ["namespace"]) == []
    assert profile.widened(["summaries", "workflow_memory"], ["user_id"]) == []
    # the marking follows the collection: a type moved elsewhere loses it, one mapped
    # onto an agent-wide collection has it
    moved = load_profile("memorizz", "knowledge_base=kb_chunks, tools=toolbox:agent_id")
    assert moved.agent_wide_field("knowledge_base") is None
    assert moved.agent_wide_field("long_term_memory") == "user_id"
    assert moved.agent_wide_field("tools") == "user_id"
    assert moved.agent_wide_field("unknown") is None


def scoped(request_id: str, limits: dict[str, int], filters: dict[str, str],
           agent_wide: bool, memory_id: str = "m") -> RetrievalRequest:  # fmt: skip
    return RetrievalRequest(request_id=request_id, query="q", memory_id=memory_id,
                            limits=limits, filters=filters, agent_wide=agent_wide)  # fmt: skip


def test_an_agent_wide_search_is_never_shared_with_a_strict_one() -> None:
    profile = load_profile("memorizz", scope_fields="user_id,namespace")
    alice, travel = {"user_id": "alice"}, {"namespace": "travel"}
    requests = [
        scoped("a", {"knowledge_base": 1, "conversation_memory": 1}, alice, True),
        scoped("b", {"long_term_memory": 1, "conversation_memory": 1}, alice, False),
        scoped("c", {"knowledge_base": 1}, travel, True),  # no user filter: nothing widened
        scoped("d", {"knowledge_base": 1}, travel, False),
        scoped("e", {"toolbox": 1, "skillbox": 1}, alice, True, memory_id="agent-1"),
    ]
    groups, slots = build_groups(requests, np.eye(5, 4, dtype=np.float32), 1, profile)
    found = {(g.collection, g.filters, g.agent_wide): s for g, s in zip(groups, slots, strict=True)}
    by_user, by_place = (("user_id", "alice"),), (("namespace", "travel"),)
    assert found == {
        ("knowledge_base", by_user, "user_id"): [(0, "knowledge_base")],
        ("conversation_memory", by_user, None): [(0, "conversation_memory"),
                                                 (1, "conversation_memory")],
        ("knowledge_base", by_user, None): [(1, "long_term_memory")],
        ("knowledge_base", by_place, None): [(2, "knowledge_base"), (3, "knowledge_base")],
        ("toolbox", by_user, "user_id"): [(4, "toolbox")],
        ("skillbox", by_user, "user_id"): [(4, "skillbox")],
    }  # fmt: skip
    # the recallq profile marks nothing: the option changes no search there
    recallq = load_profile("recallq", scope_fields="user_id")
    plain = [scoped("f", {"long_term_memory": 1}, alice, True),
             scoped("g", {"long_term_memory": 1}, alice, False)]  # fmt: skip
    groups, slots = build_groups(plain, np.eye(2, 4, dtype=np.float32), 1, recallq)
    assert [(g.agent_wide, s) for g, s in zip(groups, slots, strict=True)] == [
        (None, [(0, "long_term_memory"), (1, "long_term_memory")])
    ]
