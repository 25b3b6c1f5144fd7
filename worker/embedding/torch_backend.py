"""sentence-transformers on torch: the reference backend, and the fast one on CUDA (fp16)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import structlog

from worker.vectors import Vectors

log = structlog.get_logger(__name__)


def load_sentence_transformer(name: str, device: str) -> Any:
    """The model in eval mode, fp16 on CUDA; a local directory never touches the hub."""
    import torch
    from sentence_transformers import SentenceTransformer

    if os.path.isdir(name):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = SentenceTransformer(name, device=device)
    if device == "cuda":
        model.half()
    model.eval()
    torch.set_grad_enabled(False)
    return model


class TorchEncoder:
    """Blocking; call it from one thread only (each torch-calling thread gets its own
    OpenMP team, and two teams on one CPU make every encode about twice as slow)."""

    def __init__(self, name: str, device: str) -> None:
        self._model = load_sentence_transformer(name, device)
        self.description = f"torch/{device}" + ("/fp16" if device == "cuda" else "")
        self.dimensions = int(self._model.get_embedding_dimension())
        self.max_tokens = int(self._model.max_seq_length)

    def encode(self, texts: Sequence[str]) -> Vectors:
        import torch

        try:
            with torch.inference_mode():
                vectors: Vectors = self._model.encode(
                    list(texts),
                    batch_size=len(texts),
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                )
            return vectors.astype(np.float32, copy=False)
        except torch.cuda.OutOfMemoryError:
            if len(texts) == 1:
                raise
            # Halve and retry: a long-text batch can exceed the GPU where short ones fit.
            torch.cuda.empty_cache()
            half = len(texts) // 2
            log.warning("embed out of GPU memory, halving the batch", size=len(texts))
            return np.vstack([self.encode(texts[:half]), self.encode(texts[half:])])
