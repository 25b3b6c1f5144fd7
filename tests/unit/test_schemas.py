"""The wire contract: what a request may and may not be."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.export import COMMITTED_DIR, render_schemas
from schemas.messages import MemoryType, RetrievalRequest, RetrievalResponse
from schemas.settings import BrokerSettings
from schemas.topology import Layout, Topology
from worker.settings_table import render_permissions, render_settings_table

GOOD: dict[str, Any] = {
    "request_id": "r-1",
    "query": "  where did I park?  ",
    "memory_id": "agent:alice",
    "limits": {"conversation_memory": 5, "long_term_memory": 1},
}


def parse(**changes: Any) -> RetrievalRequest:
    body = {**GOOD, **changes}
    return RetrievalRequest.model_validate_json(json.dumps(body))


def test_good_request_is_parsed_and_query_stripped() -> None:
    request = parse(deadline_ms=1_800_000_000_000, min_score=0.2, weights={"recency": 0.0})
    assert request.query == "where did I park?"
    assert request.limits == {MemoryType.CONVERSATION: 5, MemoryType.LONG_TERM: 1}
    assert request.weights is not None and request.weights.recency == 0.0
    assert request.weights.relevance == 1.0


def test_a_request_id_of_255_bytes_fits_and_the_latest_deadline_is_accepted() -> None:
    request = parse(request_id="é" * 127 + "x", deadline_ms=253_402_300_799_999)  # 255 bytes
    assert len(request.request_id.encode()) == 255


@pytest.mark.parametrize("field", ["request_id", "query", "memory_id"])
def test_python_callers_cannot_pass_lone_surrogates_either(field: str) -> None:
    body = {**GOOD, field: "bad \ud800"}
    with pytest.raises(ValidationError, match=r"(?i)unicode"):
        RetrievalRequest.model_validate(body)


def test_python_callers_may_use_plain_strings_for_memory_types() -> None:
    request = RetrievalRequest(request_id="r", query="q", memory_id="m", limits={"summaries": 2})
    assert request.limits == {MemoryType.SUMMARIES: 2}


@pytest.mark.parametrize(
    ("field", "value", "complaint"),
    [
        ("query", "", "query"),
        ("query", "   \n\t ", "query"),
        ("query", "x" * 4097, "query"),
        ("query", 42, "query"),
        ("memory_id", {"$ne": None}, "memory_id"),
        ("memory_id", {"$regex": ".*"}, "memory_id"),
        ("memory_id", ["a", "b"], "memory_id"),
        ("memory_id", 7, "memory_id"),
        ("memory_id", "", "memory_id"),
        ("memory_id", "m" * 257, "memory_id"),
        ("request_id", "", "request_id"),
        ("request_id", "r" * 129, "request_id"),
        ("request_id", "🙂" * 64, "255 bytes"),  # 64 characters, 256 bytes
        ("request_id", "\ud800", "Invalid JSON"),  # the parser refuses lone surrogates
        ("query", "knee \udfff pain", "Invalid JSON"),
        ("limits", {}, "limits"),
        ("limits", {"conversation_memory": 0}, "limits"),
        ("limits", {"conversation_memory": 101}, "limits"),
        ("limits", {"conversation_memory": 2.5}, "limits"),
        ("limits", {"conversation_memory": True}, "limits"),
        ("limits", {"conversation_memory": "5"}, "limits"),
        ("limits", {"$where": 3}, "limits"),  # names are checked; unknown ones by the worker
        ("limits", {"Not-A-Type": 3}, "limits"),
        ("limits", [["conversation_memory", 3]], "limits"),
        ("min_score", 1.5, "min_score"),
        ("deadline_ms", -1, "deadline_ms"),
        ("deadline_ms", "soon", "deadline_ms"),
        ("deadline_ms", 10**400, "deadline_ms"),
        ("deadline_ms", 253_402_300_800_000, "deadline_ms"),
        ("deadline_ms", True, "deadline_ms"),
        ("weights", {"relevance": -1}, "weights"),
        ("weights", {"half_life_hours": 0}, "weights"),
        ("surprise", "field", "surprise"),
    ],
)
def test_bad_requests_are_refused(field: str, value: Any, complaint: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse(**{field: value})
    assert complaint in str(caught.value)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused(literal: str) -> None:
    text = json.dumps(GOOD)[:-1] + f', "min_score": {literal}}}'
    with pytest.raises(ValidationError, match="min_score"):
        RetrievalRequest.model_validate_json(text)


def test_more_than_eight_memory_types_is_impossible_and_seven_is_fine() -> None:
    every_type = {memory_type.value: 1 for memory_type in MemoryType}
    assert len(parse(limits=every_type).limits) == 7


def test_failure_response_carries_code_and_retryability() -> None:
    response = RetrievalResponse.failure("r", "store_unavailable", "down", retryable=True)  # type: ignore[arg-type]
    assert response.status == "error"
    assert response.error is not None and response.error.retryable
    assert response.results == {}


def test_committed_json_schemas_match_the_models() -> None:
    rendered = render_schemas()
    committed = {path.name: path.read_text() for path in COMMITTED_DIR.glob("*.json")}
    assert committed == rendered, "schemas/json is stale: run `make schemas` and commit"


def test_topology_names_follow_the_prefix_and_dead_letter_explicitly() -> None:
    topology = Topology("t1")
    assert topology.requests.name == "t1.requests"
    assert topology.bulk.name == "t1.bulk"
    assert topology.reply("abc").name == "t1.reply.abc"
    for spec in (topology.requests, topology.bulk):
        assert spec.arguments["x-queue-type"] == "quorum"
        assert spec.arguments["x-delivery-limit"] == 5
        assert spec.arguments["x-dead-letter-exchange"] == "t1.dead-letters"
        assert spec.arguments["x-max-length"] == 1_500
        assert spec.arguments["x-max-length-bytes"] == 64 * 2**20
    assert topology.dead.arguments["x-overflow"] == "drop-head"
    assert topology.reply("abc").arguments["x-expires"] == 60_000
    assert topology.reply("abc").arguments["x-queue-type"] == "classic"


def test_least_privilege_names_carry_the_owner_and_ownership_is_exact() -> None:
    topology = Topology("t1", layout=Layout.LEAST_PRIVILEGE, owner="alice")
    assert topology.reply("abc").name == "t1.reply.alice.abc"
    assert topology.job("j1").name == "t1.job.alice.j1"
    assert topology.owns("alice", "t1.reply.alice.abc")
    assert topology.owns("alice", "t1.job.alice.j1")
    assert not topology.owns("bob", "t1.reply.alice.abc")
    assert not topology.owns("ali", "t1.reply.alice.abc")  # a prefix of a name is not it
    assert not topology.owns("alice", "t1.requests")
    assert not topology.owns("alice", "t2.reply.alice.abc")
    assert not topology.owns(None, "t1.reply.alice.abc")
    assert not topology.owns("a.b", "t1.reply.a.b.c")  # dotted users never own anything


def test_least_privilege_refuses_user_names_that_could_cover_anothers() -> None:
    with pytest.raises(ValidationError, match="user names"):
        BrokerSettings(
            amqp_url="amqp://alice.evil:x@localhost/", broker_topology=Layout.LEAST_PRIVILEGE
        )
    ok = BrokerSettings(amqp_url="amqp://alice:x@localhost/", broker_topology="least-privilege")
    assert ok.topology.reply("c").name == "recallq.reply.alice.c"


def test_readme_settings_table_matches_the_settings_model() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert render_settings_table() in readme, "README settings table is stale: run `make schemas`"


def test_readme_permission_commands_match_the_permissions_code() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert render_permissions() in readme, "README permissions are stale: run `make schemas`"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(value=json_values.filter(lambda v: not isinstance(v, str)))
def test_no_non_string_memory_id_ever_validates(value: Any) -> None:
    """Operators like {"$ne": null} or {"$regex": ".*"} can never reach a store filter."""
    with pytest.raises(ValidationError):
        parse(memory_id=value)
