"""Store profiles: which memory types a deployment serves and where each one lives."""

from __future__ import annotations

import numpy as np
import pytest

from schemas.messages import RetrievalRequest
from worker.errors import ConfigError, InvalidMessage
from worker.profiles import load_profile
from worker.search import build_groups


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
    collections = load_profile("memorizz").collections
    requests = [
        request("a", {"long_term_memory": 2, "toolbox": 1}),
        request("b", {"knowledge_base": 5}),
        request("c", {"knowledge_base": 1}, memory_id="other"),
    ]
    vectors = np.eye(3, 4, dtype=np.float32)
    groups, slots = build_groups(requests, vectors, 1, collections)
    by_key = {(g.memory_type, g.memory_id): (g, s) for g, s in zip(groups, slots, strict=True)}
    group, members = by_key[("knowledge_base", "m")]
    assert members == [(0, "long_term_memory"), (1, "knowledge_base")]
    assert group.ks == (2, 5)
    assert set(by_key) == {("knowledge_base", "m"), ("toolbox", "m"), ("knowledge_base", "other")}
