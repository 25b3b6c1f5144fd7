"""Messages exchanged over AMQP, as pydantic models.

Requests are validated strictly: a field of the wrong type is an error, never
coerced. That is what keeps a `{"$ne": null}` memory_id out of a store filter.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)
from pydantic.config import JsonDict

from schemas.memory import meaning

SCHEMA_VERSION = 1
SCHEMA_HEADER = "x-recallq-schema"
CONTENT_TYPE = "application/json"

# AMQP short strings (correlation_id, reply_to) hold at most 255 bytes of UTF-8, and
# the reply carries request_id as its correlation_id.
MAX_SHORT_STRING_BYTES = 255
# 9999-12-31T23:59:59.999Z: a later deadline is no deadline, and a larger integer
# overflows the float arithmetic of the deadline checks.
MAX_DEADLINE_MS = 253_402_300_799_999
MAX_QUERY_CHARS = 4096
# What str.strip() removes (exactly the characters of str.isspace()), spelled out as a class
# of literal characters: `\s` differs between regex dialects (ECMA-262 counts U+FEFF, which
# Python keeps; Python counts U+001C..U+001F, which ECMA-262 does not), and `\uXXXX` escapes
# are not in every dialect (Go's RE2). A query must have one character outside it.
STRIPPED_CHARS = "\t-\r\x1c- \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NOT_BLANK = f"[^{STRIPPED_CHARS}]"


class MemoryType(StrEnum):
    """The memory types of the built-in `recallq` store profile. A deployment may serve
    others (the `memorizz` profile serves memorizz's), so on the wire a memory type is
    any `MemoryTypeName`; the worker refuses the ones it does not serve."""

    CONVERSATION = "conversation_memory"
    LONG_TERM = "long_term_memory"
    PROCEDURAL = "procedural_memory"
    WORKFLOW = "workflow_memory"
    SHORT_TERM = "short_term_memory"
    ENTITY = "entity_memory"
    SUMMARIES = "summaries"


class ErrorCode(StrEnum):
    INVALID_REQUEST = "invalid_request"
    EXPIRED = "expired"
    OVERLOADED = "overloaded"
    FORBIDDEN = "forbidden"
    STORE_UNAVAILABLE = "store_unavailable"
    EMBEDDING_UNAVAILABLE = "embedding_unavailable"
    INTERNAL = "internal"


_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
# The key rule of `limits` and `filters` as the schema's propertyNames (pydantic only writes
# patternProperties, which let any other key through). The `not` spells out what `$` means
# to the worker: Python's re, Java and .NET let `$` match before a final newline.
_NAME_KEYS: JsonDict = {
    "propertyNames": {"pattern": NAME_PATTERN, "not": {"pattern": "[^a-z0-9_]"}}
}

Limit = Annotated[StrictInt, Field(ge=1, le=100)]
MemoryTypeName = Annotated[StrictStr, Field(pattern=NAME_PATTERN)]
ScopeField = Annotated[StrictStr, Field(pattern=NAME_PATTERN)]
ScopeValue = Annotated[StrictStr, Field(min_length=1, max_length=256)]
OwnerValue = Annotated[StrictStr, Field(min_length=1, max_length=256)]  # memory_id's rules
MAX_ATTACHED = 16
AttachedIds = Annotated[list[OwnerValue], Field(max_length=MAX_ATTACHED)]
Weight = Annotated[float, Field(ge=0.0, le=10.0)]


class RankWeights(BaseModel):
    """Weights of the memory signal; see worker.rank for the formula."""

    model_config = _STRICT  # numbers only: "0.5" and true are no weights

    relevance: Weight = 1.0
    recency: Weight = 0.25
    importance: Weight = 0.25
    half_life_hours: Annotated[float, Field(gt=0.0, le=1_000_000.0)] = 168.0


SearchMode = Literal["vector", "lexical", "hybrid"]


class Fusion(BaseModel):
    """How hybrid search merges its vector list and its lexical list into one relevance."""

    model_config = _STRICT

    method: Literal["score", "rank"] = Field(
        default="score",
        description="score: each list's scores min-max normalised to [0, 1], then weighted "
        "and summed (a memory missing from a list gets 0 there); rank: reciprocal rank "
        "fusion, weight / (rank_constant + rank) summed over the lists, scaled to [0, 1].",
    )
    lexical_weight: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        default=0.6,
        description="The lexical list's weight; the vector list's is 1 minus it (0.6 measured "
        "best on LoCoMo's development split, on a plateau from 0.6 to 0.7).",
    )
    rank_constant: Annotated[StrictInt, Field(ge=1, le=1000)] = Field(
        default=60, description="k of reciprocal rank fusion (method rank)."
    )


class RetrievalRequest(BaseModel):
    """One retrieval: embed `query`, search each memory type in `limits` for `memory_id`.

    The worker also refuses what JSON Schema cannot say: lone surrogates (\\ud800) in any
    string, a fraction or exponent in an integer (5.0), NaN and Infinity."""

    model_config = _STRICT

    request_id: Annotated[
        StrictStr,
        Field(
            min_length=1,
            max_length=128,
            description="Echoed as the reply's correlation_id, an AMQP short string: also at "
            "most 255 bytes of UTF-8, which JSON Schema cannot count and the worker checks "
            "(63 characters always fit).",
        ),
    ]
    # Bounds for the schema only: as pydantic constraints they would measure before the
    # strip (the validators below enforce them after it) and word a blank query worse.
    query: Annotated[
        StrictStr,
        Field(
            description="What to search for: stripped of surrounding whitespace (str.strip), "
            f"then 1..{MAX_QUERY_CHARS} characters. maxLength counts the padding too, so it "
            "is stricter than the worker there; pattern asks for a non-whitespace character.",
            json_schema_extra={"minLength": 1, "maxLength": MAX_QUERY_CHARS, "pattern": NOT_BLANK},
        ),
    ]
    memory_id: Annotated[
        StrictStr,
        Field(
            min_length=1,
            max_length=256,
            description="Whose memories: rows whose owner field equals it (memory_id, unless "
            "the store profile keeps a type under another field, e.g. memorizz's "
            "knowledge_base_id, agent_id or user_id). Always applied.",
        ),
    ]
    limits: Annotated[
        dict[MemoryTypeName, Limit],
        Field(
            min_length=1,
            max_length=8,
            description="Memory type -> hits wanted. The worker refuses types its store "
            "profile does not serve.",
            json_schema_extra=_NAME_KEYS,
        ),
    ]
    deadline_ms: StrictInt | None = Field(
        default=None,
        ge=0,
        le=MAX_DEADLINE_MS,
        description="Absolute epoch milliseconds; past it the reply is expired.",
    )
    min_score: Annotated[float, Field(ge=-1.0, le=1.0)] | None = Field(
        default=None, description="Drop hits whose cosine similarity is below this."
    )
    weights: RankWeights | None = None
    ranking: Literal["signal", "memorizz"] = Field(
        default="signal",
        description="signal: recallq's memory signal (weights apply); memorizz: memorizz's "
        "own retrieval scoring (min-max normalised recency, importance and relevance).",
    )
    search: SearchMode | None = Field(
        default=None,
        description="vector: by cosine similarity of the embeddings; lexical: by BM25 over the "
        "owner's memories; hybrid: both lists, fused (see fusion); null: the worker's default "
        "(RECALLQ_SEARCH, hybrid unless set). The memory signal ranks the result.",
    )
    fusion: Fusion | None = None
    filters: (
        Annotated[dict[ScopeField, ScopeValue], Field(max_length=8, json_schema_extra=_NAME_KEYS)]
        | None
    ) = Field(
        default=None,
        description="Scope equalities on top of memory_id (e.g. user_id): strings only, "
        "fields from the deployment's list (RECALLQ_SCOPE_FIELDS), never the owner field.",
    )
    knowledge_base_ids: AttachedIds | None = Field(
        default=None,
        description="memorizz's attached knowledge bases: for each memory type whose store "
        "profile names an attached field (memorizz's knowledge_base and long_term_memory: "
        "knowledge_base_id), rows whose attached field is one of these ids are searched "
        "with the owner's own rows in one ranked list, as memorizz's knowledge-base search "
        "does (owner OR attached; filters still apply on top). Other memory types of the "
        "request are searched by memory_id alone. The worker refuses it where no requested "
        "type has an attached field; empty or null: none attached.",
    )
    agent_wide: bool = Field(
        default=False,
        description="memorizz's user scope: for each memory type whose store profile marks "
        "it agent-wide (memorizz's knowledge_base and its alias long_term_memory, toolbox, "
        "skillbox: a row without a user_id belongs to the whole agent), a filter on the "
        "profile's user field (user_id) also admits the owner's rows that have no user_id "
        "(null or missing), as memorizz reads them. Other memory types keep the equality. "
        "No effect without such a filter or such a type; a tenant policy may forbid it.",
    )

    @field_validator("query")
    @classmethod
    def _encodable(cls, value: str) -> str:
        # JSON can carry lone surrogates (\ud800) that no UTF-8 encoder or tokenizer
        # accepts. pydantic-core already refuses them in the length-constrained strings
        # (request_id, memory_id), but not in `query`, whose length is checked below.
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode (no lone surrogates)") from None
        return value

    @field_validator("request_id")
    @classmethod
    def _fits_correlation_id(cls, value: str) -> str:
        if len(value.encode("utf-8")) > MAX_SHORT_STRING_BYTES:
            raise ValueError(
                f"request_id must be at most {MAX_SHORT_STRING_BYTES} bytes of UTF-8 "
                "(it travels as the reply's correlation_id)"
            )
        return value

    @field_validator("query")
    @classmethod
    def _query_not_blank(cls, value: str) -> str:
        stripped = value.strip()
        if not 1 <= len(stripped) <= MAX_QUERY_CHARS:
            raise ValueError(f"query must be 1..{MAX_QUERY_CHARS} characters after stripping")
        return stripped


# A hit's memory fields are those of schemas.memory.Memory marked `reply`, of the same
# types (tags as a list); tests/unit/test_rank.py holds the two together.
class MemoryHit(BaseModel):
    """One retrieved memory, best first within its memory type."""

    id: str
    memory_type: str
    content: str
    summary_content: str | None = None
    role: str | None = None
    timestamp: float | None = Field(default=None, description=meaning("timestamp"))
    situational_tags: list[str] | None = None
    importance: float | None = None
    score: float = Field(description="Cosine similarity of query and memory, in [-1, 1].")
    lexical: float | None = Field(
        default=None,
        description="BM25 of query and memory (the owner's statistics), where the lexical "
        "side ran.",
    )
    fused: float | None = Field(
        default=None,
        description="The relevance the search mode gave it, in [0, 1]: the fusion of both "
        "lists (hybrid), the normalised BM25 (lexical); null for vector search, where the "
        "relevance is (1 + score) / 2.",
    )
    signal: float = Field(description="The rank score: relevance, recency and importance.")


class ErrorInfo(BaseModel):
    code: ErrorCode
    message: str
    retryable: bool = False


class Timings(BaseModel):
    """Milliseconds spent in each stage on the worker."""

    model_config = ConfigDict(frozen=True)

    queue_ms: float = 0.0
    embed_ms: float = 0.0
    search_ms: float = 0.0
    total_ms: float = 0.0


class RetrievalResponse(BaseModel):
    """Built once by the worker, with its timings, and never changed afterwards."""

    model_config = ConfigDict(frozen=True)

    request_id: str
    status: Literal["ok", "error"]
    results: dict[str, list[MemoryHit]] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    timings: Timings = Field(default_factory=Timings)
    batch_size: int = 0
    worker_id: str = ""

    @classmethod
    def failure(
        cls,
        request_id: str,
        code: ErrorCode,
        message: str,
        *,
        retryable: bool = False,
        worker_id: str = "",
    ) -> RetrievalResponse:
        error = ErrorInfo(code=code, message=message, retryable=retryable)
        return cls(request_id=request_id, status="error", error=error, worker_id=worker_id)


def describe_validation_error(exc: ValidationError, most: int = 5) -> str:
    """`field: problem; ...` for the first few errors: short enough for a reply or a log."""
    parts = []
    for error in exc.errors(include_url=False)[:most]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)
