"""A quality regression fails the suite: a fixed LoCoMo slice through a real worker.

One conversation of the development split (read from ../shared/data/locomo/, never
copied into the project), its first 60 questions asked over RPC for 50 turns each:
the default search (hybrid) must find more evidence in the top 10 than vector search
alone. The full benchmark is `python -m benchmarks quality`.
"""

from __future__ import annotations

import os

import pytest

from benchmarks import locomo
from benchmarks.quality import Setting, recall
from worker.embedding.embedder import Embedder


@pytest.fixture(scope="module")
def slice_() -> list[locomo.Conversation]:
    path = locomo.data_path()
    if path is None:
        message = f"no LoCoMo development split at {locomo.DATA}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return locomo.load(path)[:1]


async def test_hybrid_search_finds_more_evidence_than_vector_search(
    amqp_url: str, embedder: Embedder, slice_: list[locomo.Conversation]
) -> None:
    settings = [Setting("vector", "vector"), Setting("default", "hybrid")]
    measured = await recall(slice_, embedder, settings, questions_per_conversation=60)
    vector, default = (measured[s.name]["overall"] for s in settings)
    assert measured["default"]["requests"] == 60
    assert default["R@10"] > vector["R@10"] + 10, measured  # measured: +25 on this slice
    assert default["R@50"] >= vector["R@50"], measured
