"""The wire contract: what a request may and may not be."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from schemas.export import COMMITTED_DIR, render_schemas
from schemas.messages import (
    MAX_DEADLINE_MS,
    MAX_QUERY_CHARS,
    MAX_SHORT_STRING_BYTES,
    NAME_PATTERN,
    MemoryType,
    RetrievalRequest,
    RetrievalResponse,
)
from schemas.settings import BrokerSettings
from schemas.topology import Layout, Topology
from worker.admin.settings_table import render_permissions, render_settings_table

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


# The drift test: what a producer's validator says of a body, from the committed schema, is
# what the worker says, but for what JSON Schema cannot express. Verdicts (worker, schema):
ACCEPTED = "accepted"  # both accept
REFUSED = "refused"  # both refuse
# The worker refuses what the schema cannot say: bytes of UTF-8, lone surrogates (JSON can
# escape them; the worker's parser refuses them), 5.0 as an integer, NaN (no comparison fails).
WORKER_ONLY = "worker-only"
# The schema refuses: its maxLength counts the whitespace the worker strips off the query.
PADDING = "padding"
VERDICTS = {
    ACCEPTED: (True, True),
    REFUSED: (False, False),
    WORKER_ONLY: (False, True),
    PADDING: (True, False),
}

REQUEST_SCHEMA = json.loads((COMMITTED_DIR / "RetrievalRequest.schema.json").read_text())
PRODUCER = Draft202012Validator(REQUEST_SCHEMA)
MISSING = object()


def worker_accepts(text: str) -> bool:
    try:
        RetrievalRequest.model_validate_json(text)
    except ValidationError:
        return False
    return True


def schema_accepts(text: str) -> bool:
    return PRODUCER.is_valid(json.loads(text))


def case(name: str, verdict: str, **changes: Any) -> Any:
    """GOOD with `changes` (MISSING deletes a field), as a pytest param."""
    body = {k: v for k, v in {**GOOD, **changes}.items() if v is not MISSING}
    return pytest.param(body, verdict, id=name)


def names(count: int) -> dict[str, int]:
    return {f"type_{i}": 1 for i in range(count)}


def scopes(count: int) -> dict[str, str]:
    return {f"scope_{i}": "v" for i in range(count)}


DRIFT_CASES = [
    case("good", ACCEPTED),
    case(
        "every optional field",
        ACCEPTED,
        deadline_ms=1_800_000_000_000,
        min_score=0.2,
        weights={"relevance": 2, "recency": 0.5, "importance": 0, "half_life_hours": 24},
        ranking="memorizz",
        filters={"user_id": "alice"},
    ),
    case("optional fields null", ACCEPTED, deadline_ms=None, min_score=None, weights=None),
    case("filters null", ACCEPTED, filters=None),
    *(case(f"no {field}", REFUSED, **{field: MISSING}) for field in GOOD),
    case("extra field", REFUSED, surprise="field"),
    pytest.param([GOOD], REFUSED, id="body is a list"),
    pytest.param("query", REFUSED, id="body is a string"),
    pytest.param(None, REFUSED, id="body is null"),
    # query: 1..4096 characters after stripping
    case("query 4096", ACCEPTED, query="x" * MAX_QUERY_CHARS),
    case("query 4097", REFUSED, query="x" * (MAX_QUERY_CHARS + 1)),
    case("query 1", ACCEPTED, query="x"),
    case("query empty", REFUSED, query=""),
    case("query blank", REFUSED, query="   \n\t "),
    case("query of Python-only whitespace", REFUSED, query="\x1c\x1f\x85\u3000"),
    case("query of U+FEFF, which str.strip keeps", ACCEPTED, query="\ufeff"),
    case("query of U+200B, no whitespace", ACCEPTED, query="\u200b"),
    case("query blank over 4096", REFUSED, query=" " * (MAX_QUERY_CHARS + 1)),
    case("query 4097 stripped to 4096", PADDING, query="x" * MAX_QUERY_CHARS + "\n"),
    case("query padded, 4096 inside", PADDING, query=f"  {'x' * MAX_QUERY_CHARS}  "),
    case("query 4097 inside padding", REFUSED, query=f" {'x' * (MAX_QUERY_CHARS + 1)} "),
    case("query of emoji", ACCEPTED, query="🙂" * MAX_QUERY_CHARS),
    case("query lone surrogate", WORKER_ONLY, query="knee \udfff pain"),
    case("query number", REFUSED, query=42),
    case("query null", REFUSED, query=None),
    case("query list", REFUSED, query=["where"]),
    # request_id: 1..128 characters, at most 255 bytes
    case("request_id 128", ACCEPTED, request_id="r" * 128),
    case("request_id 129", REFUSED, request_id="r" * 129),
    case("request_id empty", REFUSED, request_id=""),
    case("request_id 255 bytes", ACCEPTED, request_id="é" * 127 + "x"),
    case("request_id 63 emoji", ACCEPTED, request_id="🙂" * 63),
    case("request_id 256 bytes", WORKER_ONLY, request_id="🙂" * 64),
    case("request_id 128 emoji", WORKER_ONLY, request_id="🙂" * 128),
    case("request_id 129 emoji", REFUSED, request_id="🙂" * 129),
    case("request_id lone surrogate", WORKER_ONLY, request_id="\ud800"),
    case("request_id number", REFUSED, request_id=1),
    # memory_id: 1..256 characters
    case("memory_id 256", ACCEPTED, memory_id="m" * 256),
    case("memory_id 257", REFUSED, memory_id="m" * 257),
    case("memory_id empty", REFUSED, memory_id=""),
    case("memory_id blank", ACCEPTED, memory_id=" "),
    case("memory_id lone surrogate", WORKER_ONLY, memory_id="a\udc00"),
    case("memory_id operator", REFUSED, memory_id={"$ne": None}),
    case("memory_id list", REFUSED, memory_id=["a", "b"]),
    case("memory_id number", REFUSED, memory_id=7),
    # limits: 1..8 memory types, each 1..100 hits
    case("limit 1", ACCEPTED, limits={"summaries": 1}),
    case("limit 100", ACCEPTED, limits={"summaries": 100}),
    case("limit 0", REFUSED, limits={"summaries": 0}),
    case("limit 101", REFUSED, limits={"summaries": 101}),
    case("limit 2.5", REFUSED, limits={"summaries": 2.5}),
    case("limit 5.0", WORKER_ONLY, limits={"summaries": 5.0}),
    case("limit true", REFUSED, limits={"summaries": True}),
    case("limit string", REFUSED, limits={"summaries": "5"}),
    case("limit null", REFUSED, limits={"summaries": None}),
    case("limits empty", REFUSED, limits={}),
    case("limits 8 types", ACCEPTED, limits=names(8)),
    case("limits 9 types", REFUSED, limits=names(9)),
    case("limits list", REFUSED, limits=[["summaries", 3]]),
    case("limits null", REFUSED, limits=None),
    case("type of 64 characters", ACCEPTED, limits={"t" * 64: 1}),
    case("type of 65 characters", REFUSED, limits={"t" * 65: 1}),
    case("type unknown but well formed", ACCEPTED, limits={"made_up_memory": 1}),
    *(
        case(f"type {name!r}", REFUSED, limits={name: 1})
        for name in ["$where", "Not-A-Type", "Summaries", "1st", "_x", "", "a b", "über"]
    ),
    case("type with a final newline", REFUSED, limits={"summaries\n": 1}),
    # filters: at most 8 scope fields, each 1..256 characters
    case("filters empty", ACCEPTED, filters={}),
    case("filters 8", ACCEPTED, filters=scopes(8)),
    case("filters 9", REFUSED, filters=scopes(9)),
    case("filter value 256", ACCEPTED, filters={"user_id": "u" * 256}),
    case("filter value 257", REFUSED, filters={"user_id": "u" * 257}),
    case("filter value empty", REFUSED, filters={"user_id": ""}),
    case("filter value number", REFUSED, filters={"user_id": 7}),
    case("filter value operator", REFUSED, filters={"user_id": {"$ne": None}}),
    case("filter value lone surrogate", WORKER_ONLY, filters={"user_id": "\ud800"}),
    case("filter field $where", REFUSED, filters={"$where": "x"}),
    case("filter field dotted", REFUSED, filters={"user.id": "x"}),
    case("filter field with a final newline", REFUSED, filters={"user_id\n": "x"}),
    case("filters list", REFUSED, filters=[["user_id", "x"]]),
    # knowledge_base_ids: at most 16, each 1..256 characters (memory_id's rules)
    case("knowledge_base_ids null", ACCEPTED, knowledge_base_ids=None),
    case("knowledge_base_ids empty", ACCEPTED, knowledge_base_ids=[]),
    case("knowledge_base_ids 16", ACCEPTED, knowledge_base_ids=[f"kb-{i}" for i in range(16)]),
    case("knowledge_base_ids 17", REFUSED, knowledge_base_ids=[f"kb-{i}" for i in range(17)]),
    case("knowledge_base_id 256", ACCEPTED, knowledge_base_ids=["k" * 256]),
    case("knowledge_base_id 257", REFUSED, knowledge_base_ids=["k" * 257]),
    case("knowledge_base_id empty", REFUSED, knowledge_base_ids=[""]),
    case("knowledge_base_id number", REFUSED, knowledge_base_ids=[7]),
    case("knowledge_base_id operator", REFUSED, knowledge_base_ids=[{"$ne": None}]),
    case("knowledge_base_id lone surrogate", WORKER_ONLY, knowledge_base_ids=["kb\ud800"]),
    case("knowledge_base_ids a string", REFUSED, knowledge_base_ids="kb-1"),
    case("knowledge_base_ids an object", REFUSED, knowledge_base_ids={"$in": ["kb-1"]}),
    # agent_wide: a boolean, never coerced
    case("agent_wide true", ACCEPTED, agent_wide=True),
    case("agent_wide false", ACCEPTED, agent_wide=False),
    case("agent_wide 1", REFUSED, agent_wide=1),
    case("agent_wide string", REFUSED, agent_wide="true"),
    case("agent_wide null", REFUSED, agent_wide=None),
    # deadline_ms: 0..253402300799999, an integer
    case("deadline 0", ACCEPTED, deadline_ms=0),
    case("deadline latest", ACCEPTED, deadline_ms=MAX_DEADLINE_MS),
    case("deadline -1", REFUSED, deadline_ms=-1),
    case("deadline past 9999", REFUSED, deadline_ms=MAX_DEADLINE_MS + 1),
    case("deadline huge", REFUSED, deadline_ms=10**400),
    case("deadline 1.5", REFUSED, deadline_ms=1.5),
    case("deadline 5.0", WORKER_ONLY, deadline_ms=5.0),
    case("deadline true", REFUSED, deadline_ms=True),
    case("deadline string", REFUSED, deadline_ms="soon"),
    # min_score: -1..1, a number
    case("min_score -1", ACCEPTED, min_score=-1),
    case("min_score 1.0", ACCEPTED, min_score=1.0),
    case("min_score below -1", REFUSED, min_score=-1.000001),
    case("min_score over 1", REFUSED, min_score=1.000001),
    case("min_score string", REFUSED, min_score="0.5"),
    case("min_score true", REFUSED, min_score=True),
    case("min_score NaN", WORKER_ONLY, min_score=math.nan),
    case("min_score Infinity", REFUSED, min_score=math.inf),
    # weights: 0..10 each, half_life_hours in (0, 1e6]
    case("weights empty", ACCEPTED, weights={}),
    case("weights 0 and 10", ACCEPTED, weights={"relevance": 0, "recency": 10.0}),
    case("weight below 0", REFUSED, weights={"importance": -0.001}),
    case("weight over 10", REFUSED, weights={"relevance": 10.001}),
    case("weight string", REFUSED, weights={"relevance": "2"}),
    case("weight true", REFUSED, weights={"recency": True}),
    case("weight null", REFUSED, weights={"recency": None}),
    case("weight NaN", WORKER_ONLY, weights={"relevance": math.nan}),
    case("half-life tiny", ACCEPTED, weights={"half_life_hours": 1e-9}),
    case("half-life 1e6", ACCEPTED, weights={"half_life_hours": 1_000_000}),
    case("half-life 0", REFUSED, weights={"half_life_hours": 0}),
    case("half-life over 1e6", REFUSED, weights={"half_life_hours": 1_000_000.5}),
    case("half-life -Infinity", REFUSED, weights={"half_life_hours": -math.inf}),
    case("weights extra field", REFUSED, weights={"freshness": 1}),
    case("weights list", REFUSED, weights=[1, 0.25, 0.25]),
    # ranking
    case("ranking memorizz", ACCEPTED, ranking="memorizz"),
    case("ranking unknown", REFUSED, ranking="bm25"),
    case("ranking null", REFUSED, ranking=None),
]


@pytest.mark.parametrize(("body", "verdict"), DRIFT_CASES)
def test_the_committed_schema_and_the_worker_agree_on_each_bound(body: Any, verdict: str) -> None:
    text = json.dumps(body)
    assert (worker_accepts(text), schema_accepts(text)) == VERDICTS[verdict]


def test_the_committed_schemas_are_valid_json_schemas() -> None:
    for path in COMMITTED_DIR.glob("*.json"):
        Draft202012Validator.check_schema(json.loads(path.read_text()))


def test_the_query_pattern_refuses_exactly_what_str_strip_removes() -> None:
    """The schema's blank check and the worker's strip() see the same whitespace."""
    pattern = REQUEST_SCHEMA["properties"]["query"]["pattern"]
    every = "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF)
    assert re.sub(pattern, "", every) == "".join(c for c in every if not c.strip())


def lone_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def decoded(text: str, field: str) -> Any:
    """What both sides see: JSON joins an escaped surrogate pair into one character."""
    return json.loads(text)[field]


# Characters that matter at the bounds: whitespace of either dialect, 1..4 bytes of UTF-8,
# lone surrogates and a pair's halves.
WHITESPACE = list(" \t\n\x0b\x1c\x85\xa0\u2028\u3000\ufeff")
SURROGATES = ["\ud83d", "\ude42", "\udfff"]
ODD = [*WHITESPACE, "\u200b", "x", "é", "€", "🙂", *SURROGATES]
padding = st.text(st.sampled_from(WHITESPACE), max_size=3)


@st.composite
def queries(draw: st.DrawFn) -> str:
    core = draw(st.integers(0, 3) | st.integers(MAX_QUERY_CHARS - 3, MAX_QUERY_CHARS + 1))
    middle = draw(st.text(st.sampled_from(ODD), max_size=3))
    return draw(padding) + "x" * core + middle + draw(padding)


@settings(max_examples=300, deadline=None)
@given(query=queries())
def test_the_schema_never_accepts_a_query_the_worker_refuses(query: str) -> None:
    text = json.dumps({**GOOD, "query": query})
    worker, schema = worker_accepts(text), schema_accepts(text)
    seen = decoded(text, "query")
    if schema and not worker:
        assert lone_surrogate(seen)
    if worker and not schema:
        assert len(seen) > MAX_QUERY_CHARS >= len(seen.strip())


@st.composite
def request_ids(draw: st.DrawFn) -> str:
    """Around 128 characters and 255 bytes: 1, 2, 3 and 4 bytes a character, or surrogates."""
    size = draw(st.integers(0, 2) | st.integers(60, 130))
    alphabet = draw(st.sampled_from(["r", "ré", "ré€🙂", "r🙂", "r" + "".join(SURROGATES)]))
    return draw(st.text(st.sampled_from(list(alphabet)), min_size=size, max_size=size))


@settings(max_examples=300, deadline=None)
@given(request_id=request_ids())
def test_the_schema_never_accepts_a_request_id_the_worker_refuses(request_id: str) -> None:
    text = json.dumps({**GOOD, "request_id": request_id})
    worker, schema = worker_accepts(text), schema_accepts(text)
    seen = decoded(text, "request_id")
    assert not (worker and not schema)
    if schema and not worker:
        assert lone_surrogate(seen) or len(seen.encode()) > MAX_SHORT_STRING_BYTES


key_names = st.from_regex(NAME_PATTERN, fullmatch=True) | st.text(
    st.sampled_from([*"az09_Z-$. \nü", "\ud800"]), max_size=66
)


@settings(max_examples=300, deadline=None)
@given(name=key_names)
def test_memory_type_and_scope_field_names_get_one_verdict(name: str) -> None:
    for changes in ({"limits": {name: 1}}, {"filters": {name: "v"}}):
        text = json.dumps({**GOOD, **changes})
        assert worker_accepts(text) == schema_accepts(text), changes


NUMBER_FIELDS = ["deadline_ms", "min_score", "limits", "relevance", "half_life_hours"]
numbers = (
    st.integers(-3, 3)
    | st.integers(97, 103)
    | st.integers(MAX_DEADLINE_MS - 2, MAX_DEADLINE_MS + 2)
    | st.integers(999_998, 1_000_002)
    | st.floats()
    | st.sampled_from([-1.0, 1.0, 10.0, 100.0, 1e6, 1e-300, -0.0])
    | st.booleans()
    | st.none()
    | st.text(max_size=3)
)


@settings(max_examples=500, deadline=None)
@given(field=st.sampled_from(NUMBER_FIELDS), value=numbers)
def test_numbers_get_one_verdict_but_integral_floats_and_nan(field: str, value: Any) -> None:
    """JSON Schema's integer includes 5.0, and NaN passes every comparison."""
    if field in ("relevance", "half_life_hours"):
        changes = {"weights": {field: value}}
    elif field == "limits":
        changes = {"limits": {"summaries": value}}
    else:
        changes = {field: value}
    text = json.dumps({**GOOD, **changes})
    worker, schema = worker_accepts(text), schema_accepts(text)
    if worker != schema:
        assert schema and not worker
        assert isinstance(value, float)
        assert math.isnan(value) or (value.is_integer() and field in ("deadline_ms", "limits"))


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
