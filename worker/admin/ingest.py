"""Ingestion: embed memories with the worker's own embedder and upsert them.

Embedding with the same model as queries keeps the two vector spaces equal: the local
model, or the same remote provider, model and size (its calls are cut to the
provider's limits and retried for RECALLQ_EMBED_RETRY_S each).
Bad lines are reported with their line numbers and skipped; they never stop a run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model
from tqdm import tqdm

from schemas.memory import FIELD_NAMES, MEMORY_FIELDS, Memory
from schemas.messages import MemoryType
from worker.embedding.base import TextEmbedder
from worker.errors import describe_validation_error
from worker.store.base import MemoryStore
from worker.store.fields import epoch_seconds

TAG_FIELDS = tuple(spec.name for spec in MEMORY_FIELDS if spec.kind == "tags")


def _seconds(value: object) -> object:
    """A time as epoch seconds: an ISO 8601 string is converted (a naive time is UTC,
    never local time); anything else is left to the field's own validation."""
    if isinstance(value, str):
        seconds = epoch_seconds(value)
        if seconds is None:
            raise ValueError("must be epoch seconds or an ISO 8601 time")
        return seconds
    return value


class IngestRecord(BaseModel):
    """One line of an ingest file; memorizz's document fields, embedding optional and
    ignored. Its fields are a memory's (schemas.memory), built into MemoryRecord below."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    def to_memory(self) -> Memory:
        values: dict[str, Any] = {name: getattr(self, name) for name in FIELD_NAMES}
        values["id"] = values["id"] or self._stable_id()
        for name in TAG_FIELDS:
            values[name] = tuple(values[name]) if values[name] else None
        return Memory(**values)

    def _stable_id(self) -> str:
        parts = (
            getattr(self, name) for name in ("memory_type", "memory_id", "timestamp", "content")
        )
        key = "\0".join(map(str, parts))
        return hashlib.sha256(key.encode()).hexdigest()[:32]


# What a line must satisfy beyond a memory field's own type (every other field is taken
# as schemas.memory declares it, optional where it has a default).
RULES: dict[str, tuple[Any, Any]] = {
    "id": (Annotated[str, Field(min_length=1, max_length=256)] | None, None),  # else derived
    "memory_id": (Annotated[str, Field(min_length=1, max_length=256, strict=True)], ...),
    "memory_type": (MemoryType, ...),  # the built-in profile's types only
    "content": (Annotated[str, Field(min_length=1)], ...),
    "timestamp": (float, ...),  # required here, though a row written by others may lack one
    "importance": (Annotated[float, Field(ge=0.0, le=1.0)] | None, None),
}


def _record_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for spec in MEMORY_FIELDS:
        if spec.name in RULES:
            annotation, default = RULES[spec.name]
        else:
            annotation, default = spec.annotation, ... if spec.required else None
            if spec.kind == "tags":  # a JSON array: a list, as in a reply
                annotation = list[str] | None if spec.optional else list[str]
        if spec.time:  # epoch seconds, or an ISO 8601 string
            annotation = Annotated[annotation, BeforeValidator(_seconds)]
        fields[spec.name] = (annotation, default)
    return fields


MemoryRecord = create_model("MemoryRecord", __base__=IngestRecord, **_record_fields())


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
    embedder: TextEmbedder,
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
    batch: list[Memory], store: MemoryStore, embedder: TextEmbedder, report: IngestReport
) -> None:
    vectors = await embedder.embed([memory.content for memory in batch])
    await store.upsert(batch, vectors)
    report.stored += len(batch)
