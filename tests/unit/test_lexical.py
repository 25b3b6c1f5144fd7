"""Lexical search against BM25 written out in the test (tests.oracle), and what a memory
is found by: its words, its neighbours' in time, its date."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.oracle import bm25, documents
from worker.store.lexical import LexicalIndex
from worker.store.sqlite import Memory

DAY = 86_400.0
WORDS = ["heron", "river", "Lisbon", "knee", "pain", "running", "runs", "seat", "window"]
WORDS += ["May", "2023", "the", "a", "Caroline", "painted", "sunrise", "é", "NEAR", '"', "-"]


def memory(id_: str, content: str, timestamp: float) -> Memory:
    return Memory(id=id_, memory_id="o", memory_type="t", content=content, timestamp=timestamp)


def records(memories: list[Memory]) -> list[dict[str, Any]]:
    return [{"id": m.id, "content": m.content, "timestamp": m.timestamp} for m in memories]


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.lists(st.sampled_from(WORDS), min_size=1, max_size=12),
                  st.integers(0, 5), st.integers(0, 3)),
        min_size=1, max_size=12,
    ),
    query=st.lists(st.sampled_from(WORDS), min_size=1, max_size=6),
)  # fmt: skip
def test_scores_equal_bm25_by_its_formula(
    rows: list[tuple[list[str], int, int]], query: list[str]
) -> None:
    """Any memories (some at the same time, some within an hour, some days apart) and any
    query: the index's scores are the formula's, over neighbours and dates alike."""
    memories = [
        memory(f"m{i}", " ".join(words), day * DAY + minutes * 1200.0)
        for i, (words, day, minutes) in enumerate(rows)
    ]
    text = " ".join(query)
    got = LexicalIndex.of(memories).scores(text)
    want = np.array(bm25(text, documents(records(memories))))
    assert np.allclose(got, want, atol=1e-5), (got, want)


def test_a_reply_is_found_by_the_question_it_answers() -> None:
    """ "Yes, last Saturday!" shares no word with "When did Caroline go hiking?"; the turn
    before it does, and it is indexed with it."""
    turns = [
        memory("D1:1", "Melanie: Did you go hiking with Caroline?", 100.0),
        memory("D1:2", "Caroline: Yes, last Saturday!", 100.0),
        memory("D2:1", "Caroline: I painted a sunrise.", 100.0 + 30 * DAY),
    ]
    scores = LexicalIndex.of(turns).scores("When did Caroline go hiking?")
    assert scores[1] > 0 and scores[2] < scores[1]


def test_a_memory_is_found_by_its_date() -> None:
    may = memory("a", "we moved house", 1_683_504_000.0)  # 8 May 2023
    june = memory("b", "we moved house", 1_686_182_400.0)  # 8 June 2023
    scores = LexicalIndex.of([may, june]).scores("what happened in May?")
    assert scores[0] > 0 and scores[1] == 0


def test_query_syntax_is_only_words() -> None:
    index = LexicalIndex.of([memory("a", "knee pain", 0.0), memory("b", "window seat", DAY)])
    for hostile in ['"knee', "knee NEAR(pain)", "content:knee", "knee*", "\x00knee"]:
        scores = index.scores(hostile)
        assert scores[0] > 0 and scores[1] == 0, hostile
    assert index.scores("knee -seat").all()  # no negation: "-seat" is the word seat
    assert not index.scores('" NEAR( content: -').any()
