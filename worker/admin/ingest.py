"""Ingestion: embed memories with the worker's own model and upsert them.

Embedding with the same model as queries keeps the two vector spaces equal.
Bad lines are reported with their line numbers and skipped; they never stop a run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from tqdm import tqdm

from schemas.messages import MemoryType
from worker.embedding.embedder import Embedder
from worker.errors import describe_validation_error
from worker.store.base import Memory, MemoryStore


class MemoryRecord(BaseModel):
    """One line of an ingest file; memorizz's document fields, embedding optional and ignored."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    id: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    memory_id: Annotated[str, Field(min_length=1, max_length=256, strict=True)]
    memory_type: MemoryType
    content: Annotated[str, Field(min_length=1)]
    timestamp: float
    summary_content: str | None = None
    role: str | None = None
    situational_tags: list[str] | None = None
    importance: Annotated[float, Field(ge=0.0, le=1.0)] | None = None

    @field_validator("timestamp", mode="before")
    @classmethod
    def _epoch_seconds(cls, value: object) -> object:
        if isinstance(value, str):
            moment = datetime.fromisoformat(value)
            if moment.tzinfo is None:  # a naive time is taken as UTC, never as local time
                moment = moment.replace(tzinfo=UTC)
            return moment.timestamp()
        return value

    def to_memory(self) -> Memory:
        return Memory(
            id=self.id or self._stable_id(),
            memory_id=self.memory_id,
            memory_type=self.memory_type,
            content=self.content,
            timestamp=self.timestamp,
            summary_content=self.summary_content,
            role=self.role,
            situational_tags=tuple(self.situational_tags) if self.situational_tags else None,
            importance=self.importance,
        )

    def _stable_id(self) -> str:
        key = f"{self.memory_type}\0{self.memory_id}\0{self.timestamp}\0{self.content}"
        return hashlib.sha256(key.encode()).hexdigest()[:32]


@dataclass
class IngestReport:
    stored: int = 0
    bad_lines: list[tuple[int, str]] = field(default_factory=list)


def read_records(path: Path, report: IngestReport) -> Iterator[Memory]:
    """Valid memories of a JSONL file; bad lines go to report.bad_lines."""
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield MemoryRecord.model_validate(json.loads(line)).to_memory()
            except ValidationError as exc:
                report.bad_lines.append((number, describe_validation_error(exc)))
            except ValueError as exc:  # not JSON
                report.bad_lines.append((number, f"not JSON: {exc}"))


async def ingest_file(
    path: Path,
    store: MemoryStore,
    embedder: Embedder,
    *,
    batch_size: int = 64,
    progress: bool = True,
) -> IngestReport:
    report = IngestReport()
    total = sum(1 for line in path.open(encoding="utf-8") if line.strip())
    with tqdm(total=total, unit="mem", desc="ingest", disable=not progress) as bar:
        batch: list[Memory] = []
        for memory in read_records(path, report):
            batch.append(memory)
            if len(batch) == batch_size:
                await _store_batch(batch, store, embedder, report)
                bar.update(len(batch))
                batch = []
        if batch:
            await _store_batch(batch, store, embedder, report)
            bar.update(len(batch))
        bar.update(len(report.bad_lines))
    return report


async def _store_batch(
    batch: list[Memory], store: MemoryStore, embedder: Embedder, report: IngestReport
) -> None:
    vectors = await embedder.embed([memory.content for memory in batch])
    await store.upsert(batch, vectors)
    report.stored += len(batch)
