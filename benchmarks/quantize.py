"""int8 against fp32 on realistic text: how often the top-k memories stay the same.

The corpus is the demo memories; the queries are the demo questions plus every
memory's own text (its nearest neighbours among the others), 277 queries in all.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from benchmarks.common import DEMO_MEMORIES, DEMO_QUESTIONS
from worker.vectors import Vectors


def demo_texts() -> tuple[list[str], list[str]]:
    """(corpus, queries) from the demo data."""
    corpus = [json.loads(line)["content"] for line in DEMO_MEMORIES.read_text().splitlines()]
    questions = [q["query"] for q in json.loads(DEMO_QUESTIONS.read_text())]
    return corpus, questions + corpus


def top_k_sets(corpus: Vectors, queries: Vectors, k: int) -> list[set[int]]:
    """Each query's k best corpus rows; a row identical to the query text is skipped."""
    scores = queries @ corpus.T
    scores[scores > 1 - 1e-6] = -np.inf  # the memory itself, when a memory is the query
    return [set(np.argsort(-row, kind="stable")[:k].tolist()) for row in scores]


def agreement_at_k(reference: list[set[int]], candidate: list[set[int]]) -> float:
    """Mean share of the reference top-k that the candidate also returns (recall@k)."""
    k = len(reference[0])
    return float(np.mean([len(r & c) / k for r, c in zip(reference, candidate, strict=True)]))


def compare(quantize_spec: Any, reference_spec: Any, k: int = 5) -> dict[str, Any]:
    """Speed (batch 64) and recall@k of int8 against fp32, both on ONNX Runtime."""
    from worker.embedding.backends import load_encoder

    corpus, queries = demo_texts()
    result: dict[str, Any] = {"queries": len(queries), "corpus": len(corpus), "k": k}
    tops = {}
    for name, spec in (("fp32", reference_spec), ("int8", quantize_spec)):
        encoder = load_encoder(spec)
        started = time.perf_counter()
        vectors = np.vstack(
            [encoder.encode(queries[i : i + 64]) for i in range(0, len(queries), 64)]
        )
        result[f"{name}_texts_per_s"] = round(len(queries) / (time.perf_counter() - started), 1)
        tops[name] = top_k_sets(vectors[len(queries) - len(corpus) :], vectors, k)
    result[f"recall_at_{k}"] = round(agreement_at_k(tops["fp32"], tops["int8"]), 3)
    return result
