"""The embedder: one or more model lanes (ONNX Runtime or torch), each on its own thread.

A lane is one loaded model and the one thread that calls it (load, warm-up,
encode). That keeps the event loop free while a batch encodes. On CPU the
default is one single-threaded lane per core rather than one lane with a thread
per core: batches run side by side, and when the broker or the event loop takes
a core, one lane slows instead of every op in the model waiting for a stalled
thread (measured here: see README, "embedder lanes"). On CUDA there is one lane.
Identical texts in a batch are encoded once, and recent texts come from the LRU
cache of their vectors (`worker.embedding.cache`), keyed by the model's description.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import structlog

from worker.embedding.backends import (
    Encoder,
    EncoderSpec,
    bundled_model_path,
    load_encoder,
    resolved,
)
from worker.embedding.base import CacheStats
from worker.embedding.cache import VectorCache
from worker.threads import single_thread
from worker.vectors import Vectors

__all__ = ["CacheStats", "Embedder", "EncoderSpec", "bundled_model_path"]

log = structlog.get_logger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class ModelLane:
    """One loaded model and the one thread that ever calls it."""

    encoder: Encoder
    thread: ThreadPoolExecutor

    @classmethod
    def start(cls, spec: EncoderSpec, index: int) -> ModelLane:
        thread = single_thread(f"recallq-embed-{index}", spec.nice)
        return cls(thread.submit(load_encoder, spec).result(), thread)

    def run(self, work: Callable[..., T], *args: Any) -> T:
        return self.thread.submit(work, *args).result()


class Embedder:
    def __init__(self, lanes: Sequence[ModelLane], cache_size: int = 10_000) -> None:
        self._lanes = list(lanes)
        self._free: asyncio.Queue[ModelLane] | None = None  # made on first use, on the loop
        first = self._lanes[0].encoder
        self.description = first.description + (f" x{len(lanes)}" if len(lanes) > 1 else "")
        self._cache: VectorCache[tuple[str, str]] = VectorCache(cache_size)
        self.cache_stats: CacheStats = self._cache.stats
        self.dimensions = first.dimensions
        self.max_tokens = first.max_tokens
        self.max_inputs: int | None = None  # a local model takes any batch
        self.max_call_tokens: int | None = None

    @property
    def usable(self) -> bool:
        return True

    @property
    def lanes(self) -> int:
        return len(self._lanes)

    @classmethod
    def load(
        cls,
        spec: EncoderSpec | None = None,
        *,
        warm_batch: int = 64,
        cache_size: int = 10_000,
    ) -> Embedder:
        """Load the spec's lanes (copies of the backend, each on its thread), warm them;
        blocking."""
        spec = resolved(spec or EncoderSpec())
        loaded = [ModelLane.start(spec, index) for index in range(spec.lanes)]
        embedder = cls(loaded, cache_size)
        # The largest batch shape once, so the first real batch pays no allocation or autotune.
        longest = " ".join(["memory"] * embedder.max_tokens)
        warm = warm_batch if "cuda" in embedder.description else 8
        for lane in loaded:
            lane.run(lane.encoder.encode, [f"{longest} {i}" for i in range(warm)])
        log.info("embedder loaded", model=spec.model or "bundled all-MiniLM-L6-v2",
                 backend=embedder.description, threads_per_lane=spec.threads,
                 dimensions=embedder.dimensions)  # fmt: skip
        return embedder

    def count_tokens(self, text: str) -> int:
        """A cheap upper estimate of the tokens the model sees (WordPiece: ~4 chars a token).

        The batcher only needs it to bound padded cost; running the real tokenizer on
        the event loop cost ~10% of its time under load.
        """
        return min(self.max_tokens, 2 + len(text) // 3)

    async def embed(self, texts: Sequence[str], deadline: float | None = None) -> Vectors:
        """Unit-length float32 vectors, one row per text, on whichever model lane is free
        first (waiting for one if none is). A local model needs no deadline: it answers."""
        if self._free is None:
            self._free = asyncio.Queue()
            for lane in self._lanes:
                self._free.put_nowait(lane)
        lane = await self._free.get()
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(lane.thread, self._encode, lane.encoder, list(texts))
        finally:
            self._free.put_nowait(lane)

    def close(self) -> None:
        for lane in self._lanes:
            lane.thread.shutdown(wait=True)

    def _encode(self, encoder: Encoder, texts: list[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        keys = {text: (self.description, text) for text in texts}  # distinct texts
        cached = self._cache.lookup(keys.values())
        found = {text: cached[key] for text, key in keys.items() if key in cached}
        missing = [text for text in keys if text not in found]
        if missing:
            vectors = encoder.encode(missing)
            found.update(zip(missing, vectors, strict=True))
            self._cache.remember([keys[text] for text in missing], vectors)
        return np.ascontiguousarray(np.stack([found[text] for text in texts]), dtype=np.float32)
