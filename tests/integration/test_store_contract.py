"""One contract, every store: SQLite, MongoDB on SecantusDB (exact, chosen by auto),
and MongoDB with $vectorSearch where an Atlas-compatible server is reachable."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.messages import MemoryType
from tests.oracle import Oracle, bm25, documents
from worker.embedding.embedder import Embedder
from worker.store import Memory, MemoryStore, SearchGroup

TYPES = ("conversation_memory", "long_term_memory", "procedural_memory")


async def test_search_equals_the_brute_force_oracle(
    any_store: MemoryStore,
    embedder: Embedder,
    oracle: Oracle,
    demo_questions: list[dict[str, str]],
) -> None:
    vectors = await embedder.embed([q["query"] for q in demo_questions])
    asked = [
        (question, memory_type, 3 + index)  # a different k per query
        for index, question in enumerate(demo_questions)
        for memory_type in TYPES
    ]
    groups = [
        SearchGroup(MemoryType(memory_type), q["memory_id"], vectors[[index // len(TYPES)]], (k,))
        for index, (q, memory_type, k) in enumerate(asked)
    ]
    results = await any_store.search(groups)
    assert len(results) == len(groups)
    for (question, memory_type, k), group, (hits,) in zip(asked, groups, results, strict=True):
        expected = oracle.nearest(question["query"], question["memory_id"], memory_type, k)
        assert len(expected) == k
        assert [c.memory.id for c in hits] == [e.id for e in expected]
        for candidate, want in zip(hits, expected, strict=True):
            assert abs(candidate.score - want.cosine) < 1e-4
            assert candidate.memory.memory_id == group.owner
            assert candidate.memory.memory_type == group.collection


async def test_a_group_of_many_queries_answers_each_in_order(
    any_store: MemoryStore, embedder: Embedder, oracle: Oracle
) -> None:
    texts = ["knee pain", "what to eat before a race", "night shift sleep", "peanut allergy"]
    group = SearchGroup(
        MemoryType.LONG_TERM, "health-coach:sam", (await embedder.embed(texts)), (1, 2, 3, 4)
    )
    [per_query] = await any_store.search([group])
    for text, k, hits in zip(texts, group.ks, per_query, strict=True):
        expected = oracle.nearest(text, "health-coach:sam", "long_term_memory", k)
        assert [c.memory.id for c in hits] == [e.id for e in expected]


async def test_search_never_leaves_the_tenant(
    any_store: MemoryStore, embedder: Embedder, demo_records: list[dict[str, str]]
) -> None:
    vector = await embedder.embed(["Lisbon hotel FastAPI knee"])
    hostile = ['{"$ne": null}', '{"$regex": ".*"}', ".*", "", "travel-concierge:*"]
    groups = [SearchGroup(MemoryType.LONG_TERM, memory_id, vector, (100,)) for memory_id in hostile]
    for hits in await any_store.search(groups):
        assert hits == [[]]
    tenants = sorted({r["memory_id"] for r in demo_records})
    groups = [SearchGroup(MemoryType.PROCEDURAL, tenant, vector, (100,)) for tenant in tenants]
    for tenant, (hits,) in zip(tenants, await any_store.search(groups), strict=True):
        assert len(hits) == 15
        assert {c.memory.memory_id for c in hits} == {tenant}


async def test_upsert_replaces_a_memory_with_the_same_id(
    any_store: MemoryStore, embedder: Embedder
) -> None:
    tenant = f"contract:upsert:{type(any_store).__name__}"
    first = Memory("u1", tenant, MemoryType.SUMMARIES, "the old summary", 1_700_000_000.0)
    second = Memory(
        "u1", tenant, MemoryType.SUMMARIES, "the new summary", 1_700_000_100.0, importance=0.9
    )
    await any_store.upsert([first], (await embedder.embed([first.content])))
    await any_store.upsert([second], (await embedder.embed([second.content])))
    if hasattr(any_store, "mode") and any_store.mode == "vector":
        return  # search indexes are eventually consistent; covered by the exact stores
    vector = await embedder.embed(["summary"])
    [[hits]] = await any_store.search([SearchGroup(MemoryType.SUMMARIES, tenant, vector, (10,))])
    assert [c.memory for c in hits] == [second]


TENANTS = ["travel-concierge:maya", "code-copilot:devon", "health-coach:sam"]


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    asks=st.lists(
        st.tuples(
            st.text(min_size=1, max_size=40),
            st.sampled_from(TENANTS) | st.text(max_size=12),
            st.sampled_from(TYPES),
            st.integers(1, 60),
        ),
        min_size=1,
        max_size=8,
    )
)
async def test_property_no_result_ever_belongs_to_another_tenant(
    asks: list[tuple[str, str, str, int]], any_store: MemoryStore, embedder: Embedder
) -> None:
    vectors = await embedder.embed([text for text, _, _, _ in asks])
    groups = [
        SearchGroup(MemoryType(memory_type), memory_id, vectors[[row]], (k,))
        for row, (_, memory_id, memory_type, k) in enumerate(asks)
    ]
    for group, (hits,) in zip(groups, await any_store.search(groups), strict=True):
        assert len(hits) <= group.ks[0]
        assert all(c.memory.memory_id == group.owner for c in hits)
        assert all(c.memory.memory_type == group.collection for c in hits)


async def test_lexical_candidates_equal_bm25_over_the_owner_s_rows(
    any_store: MemoryStore,
    embedder: Embedder,
    demo_records: list[dict[str, Any]],
    demo_questions: list[dict[str, str]],
) -> None:
    """The lexical list of every query: the owner's rows with a BM25 above 0, best first,
    scores by the formula (tests.oracle.bm25, over each memory's neighbours and date)."""
    vectors = await embedder.embed([q["query"] for q in demo_questions])
    for index, question in enumerate(demo_questions):
        owner, k = question["memory_id"], 6
        group = SearchGroup(MemoryType.LONG_TERM, owner, vectors[[index]], (0,),
                            queries=(question["query"],), lexical_ks=(k,))  # fmt: skip
        [[hits]] = await any_store.search([group])
        rows = [r for r in demo_records if r["memory_id"] == owner
                and r["memory_type"] == "long_term_memory"]  # fmt: skip
        scores = dict(zip([r["id"] for r in rows], bm25(question["query"], documents(rows)),
                          strict=True))  # fmt: skip
        expected = [i for i in sorted(scores, key=lambda i: (-scores[i], i)) if scores[i] > 0][:k]
        assert len(hits) == len(expected)  # equal BM25 scores (common) may come in any order:
        for candidate, want in zip(hits, expected, strict=True):  # the same scores in order
            assert candidate.lexical is not None
            assert abs(candidate.lexical - scores[want]) < 1e-4
        for rank, candidate in enumerate(hits, start=1):
            assert candidate.lexical_rank == rank and candidate.vector_rank is None
            assert candidate.lexical is not None
            assert abs(candidate.lexical - scores[candidate.memory.id]) < 1e-4
            assert candidate.memory.memory_id == owner


QUERY_SYNTAX = st.sampled_from(
    ['"', "'", "NEAR(", ")", "*", "-", "+", "^", ":", "content:", "memory_id:", "OR", "AND",
     "NOT", "$text", "$search", '{"$ne": null}', "\\", "\u0000", "é", "🙂", "knee", "Lisbon"]
)  # fmt: skip


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(words=st.lists(st.one_of(QUERY_SYNTAX, st.text(max_size=12)), min_size=1, max_size=8))
async def test_no_lexical_query_text_leaves_the_tenant(
    any_store: MemoryStore, embedder: Embedder, words: list[str]
) -> None:
    """FTS5 and $text syntax, quotes and unicode are just words here: whatever the query
    text, the lexical and hybrid candidates are the owner's rows alone."""
    text = " ".join(words) or "x"
    vector = await embedder.embed([text])
    groups = [
        SearchGroup(MemoryType.LONG_TERM, owner, vector, (5,), queries=(text,), lexical_ks=(50,))
        for owner in ("health-coach:sam", "travel-concierge:maya", '{"$ne": null}')
    ]
    for group, (hits,) in zip(groups, await any_store.search(groups), strict=True):
        assert {c.memory.memory_id for c in hits} <= {group.owner}
