"""Worker settings: one object, built once at start and passed down."""

from __future__ import annotations

import os
import socket
from typing import Literal

from pydantic import Field, model_validator

from schemas.settings import BrokerSettings


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class WorkerSettings(BrokerSettings):
    store_url: str = Field(
        default="sqlite:///./recallq.db",
        description="Memory store: sqlite:///PATH (embedded) or mongodb://...",
    )
    embed_model: str = Field(
        default="",
        description="sentence-transformers model name or path; empty = bundled all-MiniLM-L6-v2.",
    )
    embed_device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        default="auto", description="Device for the embedder; auto = cuda, then mps, then cpu."
    )
    max_batch: int = Field(default=64, ge=1, le=4096, description="Most requests in one batch.")
    max_batch_tokens: int = Field(
        default=16384, ge=1, description="Most padded tokens (longest x count) in one batch."
    )
    max_wait_ms: float = Field(
        default=0.0, ge=0.0, description="Wait this long for a fuller batch; 0 = greedy."
    )
    prefetch: int = Field(
        default=0, ge=0, description="Unacked deliveries per lane consumer; 0 = 2 x max_batch."
    )
    candidate_factor: int = Field(
        default=4, ge=1, le=20, description="Vector candidates per hit, re-ranked by signal."
    )
    worker_id: str = Field(default_factory=_default_worker_id, description="Shown in replies.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Lowest log level written."
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto = console on a terminal, JSON otherwise."
    )
    shutdown_grace_s: float = Field(
        default=30.0, gt=0, description="Longest wait for in-flight batches on SIGTERM."
    )

    @model_validator(mode="after")
    def _fill_prefetch(self) -> WorkerSettings:
        # A prefetch below the batch size silently caps every batch (Ray Serve #43288).
        if self.prefetch == 0:
            self.prefetch = 2 * self.max_batch
        return self
