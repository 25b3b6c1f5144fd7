"""What the worker needs of an embedder, local model or remote provider alike."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from worker.vectors import Vectors


@dataclass
class CacheStats:
    lookups: int = 0
    hits: int = 0


class TextEmbedder(Protocol):
    """Texts in, unit-length float32 rows out.

    `max_inputs` and `max_call_tokens` are the provider's limits on one call (None:
    none): the worker cuts its batches to them, so a batch is one call and a failed
    call fails only the requests in it.
    """

    description: str
    dimensions: int
    cache_stats: CacheStats
    max_inputs: int | None
    max_call_tokens: int | None

    @property
    def lanes(self) -> int:
        """Batches that may embed at once."""
        ...

    @property
    def usable(self) -> bool:
        """False while the provider refuses the configuration: /readyz says 503."""
        ...

    def count_tokens(self, text: str) -> int:
        """An upper estimate of the tokens `text` costs."""
        ...

    async def embed(self, texts: Sequence[str], deadline: float | None = None) -> Vectors:
        """One row per text. `deadline` (epoch seconds) bounds retries; past it, or when
        the provider refuses, EmbeddingUnavailable (EmbeddingRefused) is raised."""
        ...

    def close(self) -> None: ...
