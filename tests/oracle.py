"""A brute-force retrieval oracle written independently of the worker's code.

It embeds every memory itself with the real model, filters by tenant and type
in plain Python, sorts all cosines, scores BM25 by its formula over the owner's
rows (its own tokenizer: the same word pattern, stop list and stemmer as the
documented settings; each memory with its neighbours in time and its date),
fuses the two lists by the documented formulas, and applies the documented
signal formula.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import Stemmer
from bm25s.stopwords import STOPWORDS_EN
from sentence_transformers import SentenceTransformer

WORD = re.compile(r"(?u)\b\w\w+\b")
STOP = set(STOPWORDS_EN)
K1, B = 1.2, 0.75
STEM = Stemmer.Stemmer("english")


def words(text: str) -> list[str]:
    """Lower-cased words of two or more characters, stop words dropped, stemmed."""
    return [STEM.stemWord(w) for w in WORD.findall(text.lower()) if w not in STOP]


def documents(records: list[dict[str, Any]]) -> list[str]:
    """What each of one owner's memories is found by: the text of the memories just
    before it, it and just after it in time (within an hour; equal times in the
    natural order of their ids), then its date as words."""

    def natural(id_: str) -> list[tuple[int, int, str]]:  # "D1:2" before "D1:10"
        return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", id_)]

    order = sorted(range(len(records)), key=lambda i: (records[i]["timestamp"],
                                                        natural(records[i]["id"])))  # fmt: skip
    texts = []
    for i, record in enumerate(records):
        at = order.index(i)
        near = [
            records[j]
            for j in order[max(0, at - 1) : at + 2]
            if abs(records[j]["timestamp"] - record["timestamp"]) <= 3600
        ]
        moment = datetime.fromtimestamp(record["timestamp"], UTC)
        words_of = [
            " ".join(x for x in (r["content"], r.get("summary_content")) if x) for r in near
        ]
        texts.append(" ".join([*words_of, f"{moment.day} {moment.strftime('%B')} {moment.year}"]))
    return texts


def bm25(query: str, documents: list[str]) -> list[float]:
    """Lucene's BM25 of `query` (its distinct words) against each document, with the
    statistics of these documents alone."""
    docs = [Counter(words(d)) for d in documents]
    lengths = [sum(d.values()) for d in docs]
    average = sum(lengths) / len(lengths)
    scores = [0.0] * len(docs)
    for term in dict.fromkeys(words(query)):
        having = sum(1 for d in docs if term in d)
        if not having:
            continue
        idf = math.log(1 + (len(docs) - having + 0.5) / (having + 0.5))
        for i, (d, length) in enumerate(zip(docs, lengths, strict=True)):
            tf = d.get(term, 0)
            scores[i] += idf * tf / (tf + K1 * (1 - B + B * length / average))
    return scores


def minmax(values: dict[str, float]) -> dict[str, float]:
    low, high = min(values.values()), max(values.values())
    return {k: 1.0 if high - low <= 1e-12 else (v - low) / (high - low) for k, v in values.items()}


@dataclass(frozen=True)
class Expected:
    id: str
    cosine: float
    signal: float
    lexical: float = 0.0  # BM25 (0: no word of the query)


@dataclass
class Oracle:
    records: list[dict[str, Any]]
    model: SentenceTransformer
    matrix: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        texts = [record["content"] for record in self.records]
        self.matrix = self.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)

    def embed(self, query: str) -> np.ndarray:
        return self.model.encode([query.strip()], normalize_embeddings=True)[0]

    def embed_many(self, queries: list[str]) -> np.ndarray:
        return self.model.encode([q.strip() for q in queries], normalize_embeddings=True)

    def nearest(self, query: str, memory_id: str, memory_type: str, k: int) -> list[Expected]:
        """The k memories of one tenant and type closest to `query` by cosine (signal unset)."""
        vector = self.embed(query)
        pool = [
            Expected(record["id"], float(np.dot(self.matrix[row], vector)), 0.0)
            for row, record in enumerate(self.records)
            if record["memory_id"] == memory_id and record["memory_type"] == memory_type
        ]
        return sorted(pool, key=lambda e: -e.cosine)[:k]

    def retrieve(
        self,
        query: str,
        memory_id: str,
        memory_type: str,
        limit: int,
        *,
        now: float,
        weights: dict[str, float] | None = None,
        min_score: float | None = None,
        candidate_factor: int = 4,
        vector: np.ndarray | None = None,
        search: str = "hybrid",
        fusion: dict[str, Any] | None = None,
    ) -> list[Expected]:
        """`vector`: the query's embedding when already computed (see `embed_many`).
        `search`: vector, lexical or hybrid; `fusion`: method score or rank, lexical_weight,
        rank_constant, as on the wire."""
        w = {"relevance": 1.0, "recency": 0.25, "importance": 0.25, "half_life_hours": 168.0}
        w.update(weights or {})
        f = {"method": "score", "lexical_weight": 0.6, "rank_constant": 60} | (fusion or {})
        vector = self.embed(query) if vector is None else vector
        rows = [
            row
            for row, record in enumerate(self.records)
            if record["memory_id"] == memory_id and record["memory_type"] == memory_type
        ]
        cosine = {self.records[r]["id"]: float(np.dot(self.matrix[r], vector)) for r in rows}
        lexical = dict(
            zip(cosine, bm25(query, documents([self.records[r] for r in rows])), strict=True)
        )
        n = limit * candidate_factor
        by_cosine = sorted(cosine, key=lambda i: (-cosine[i], i))[:n] if search != "lexical" else []
        by_words = [i for i in sorted(lexical, key=lambda i: (-lexical[i], i)) if lexical[i] > 0]
        by_words = by_words[:n] if search != "vector" else []
        relevance = self._relevance(search, f, cosine, lexical, by_cosine, by_words)
        records = {r["id"]: r for r in self.records}
        ranked = []
        for id_ in relevance:
            if min_score is not None and cosine[id_] < min_score:
                continue
            record = records[id_]
            age_hours = max(0.0, now - record["timestamp"]) / 3600
            signal = (
                w["relevance"] * relevance[id_]
                + w["recency"] * math.pow(0.5, age_hours / w["half_life_hours"])
                + w["importance"] * record.get("importance", 0.5)
            )
            ranked.append(Expected(id_, cosine[id_], signal, lexical[id_]))
        ranked.sort(key=lambda e: (-e.signal, -e.cosine, e.id))
        return ranked[:limit]

    @staticmethod
    def _relevance(
        search: str,
        f: dict[str, Any],
        cosine: dict[str, float],
        lexical: dict[str, float],
        by_cosine: list[str],
        by_words: list[str],
    ) -> dict[str, float]:
        """Relevance in [0, 1] of every candidate (the union of the two lists)."""
        union = list(dict.fromkeys(by_cosine + by_words))
        if search == "vector":
            return {i: (1 + cosine[i]) / 2 for i in union}
        weight = 1.0 if search == "lexical" else f["lexical_weight"]
        if search == "hybrid" and f["method"] == "rank":
            k = f["rank_constant"]
            v_rank = {i: r for r, i in enumerate(by_cosine, start=1)}
            l_rank = {i: r for r, i in enumerate(by_words, start=1)}
            return {
                i: ((1 - weight) * (1 / (k + v_rank[i]) if i in v_rank else 0.0)
                    + weight * (1 / (k + l_rank[i]) if i in l_rank else 0.0)) * (k + 1)
                for i in union
            }  # fmt: skip
        v = minmax({i: cosine[i] for i in by_cosine}) if by_cosine else {}
        lex = minmax({i: lexical[i] for i in by_words}) if by_words else {}
        return {i: (1 - weight) * v.get(i, 0.0) + weight * lex.get(i, 0.0) for i in union}


def assert_hits_match(hits: list[Any], expected: list[Expected], tie: float = 1e-5) -> None:
    """Same ids in the same order; scores equal up to the float noise of batched encoding.

    Two memories whose signals differ by less than `tie` may trade places: batching
    pads differently and moves cosines by ~1e-6, enough to reorder a near-tie.
    """
    assert len(hits) == len(expected), ([h.id for h in hits], [e.id for e in expected])
    for position, (hit, want) in enumerate(zip(hits, expected, strict=True)):
        if hit.id != want.id:
            assert abs(hit.signal - want.signal) < tie, (position, hit.id, want.id, expected)
    wanted = {e.id: e for e in expected}
    for hit in hits:
        if hit.id in wanted:
            assert abs(hit.score - wanted[hit.id].cosine) < 1e-4, (hit.id, hit.score)
            assert abs(hit.signal - wanted[hit.id].signal) < 1e-3, (hit.id, hit.signal)
