"""The embedder with the real model: normalised vectors, dedup and the LRU cache."""

from __future__ import annotations

import asyncio

import numpy as np

from worker.embedding.embedder import Embedder


async def test_vectors_are_normalised_and_duplicates_share_one_row(embedder: Embedder) -> None:
    vectors = await embedder.embed(["alpha beta", "gamma", "alpha beta"])
    assert vectors.shape == (3, embedder.dimensions) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vectors[0], vectors[2])
    assert not np.allclose(vectors[0], vectors[1])


async def test_repeated_texts_come_from_the_cache_with_the_same_vector(embedder: Embedder) -> None:
    text = "a query nobody has asked this embedder yet 7f3a"
    first = await embedder.embed([text])
    before = (embedder.cache_stats.lookups, embedder.cache_stats.hits)
    again = await embedder.embed([text, "another fresh text 9c1d"])
    assert embedder.cache_stats.lookups == before[0] + 2
    assert embedder.cache_stats.hits == before[1] + 1
    assert np.array_equal(first[0], again[0])


async def test_an_empty_batch_is_an_empty_matrix(embedder: Embedder) -> None:
    assert (await embedder.embed([])).shape == (0, embedder.dimensions)


async def test_lanes_encode_side_by_side_and_agree_with_one_lane(embedder: Embedder) -> None:
    assert embedder.lanes >= 1
    texts = [f"lane check {i}: what did we decide about the flight?" for i in range(40)]
    expected = np.vstack([(await embedder.embed([text])) for text in texts])
    batches = [texts[i : i + 5] for i in range(0, 40, 5)]
    together = await asyncio.gather(*(embedder.embed(batch) for batch in batches))
    assert np.allclose(np.vstack(together), expected, atol=1e-6)
