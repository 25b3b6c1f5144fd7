"""A memory's fields, defined once: their names, types and meanings.

`Memory` is the definition. Everything else that lists a memory's fields takes
the list from here: the SQLite columns and rows (worker.store.sqlite_file), the
ingest record (worker.admin.ingest), the MongoDB documents and projections
(worker.store.mongo_query) and the ranker's hits (worker.rank). A field added here
reaches them; where it cannot by itself a unit test fails: the reply's `MemoryHit`
(declared by hand: the fields marked `reply`) and the MongoDB readers (memorizz
spells some fields several ways), and the SQLite store needs a schema version.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["text", "number", "tags"]


def about(meaning: str, *, reply: bool = True, time: bool = False) -> dict[str, Any]:
    """A field's metadata: what it means, whether a reply's hit carries it, and whether
    it is a time (epoch seconds; ingest also reads ISO 8601, naive = UTC)."""
    return {"meaning": meaning, "reply": reply, "time": time}


@dataclass(frozen=True, slots=True)
class Memory:
    """A stored memory, without its embedding."""

    id: str = field(metadata=about("Its own id, unique within its collection."))
    memory_id: str = field(
        metadata=about(
            "Its owner value: the value of the profile's owner field (memory_id by default) "
            "that a request's memory_id must equal.",
            reply=False,
        )
    )
    memory_type: str = field(
        metadata=about(
            "Where it is stored: the collection (the memory type of the embedded store); a "
            "hit carries the memory type the request named instead."
        )
    )
    content: str = field(metadata=about("The text that was embedded and is returned."))
    timestamp: float | None = field(
        metadata=about("Epoch seconds; null when the stored row has no time.", time=True)
    )
    summary_content: str | None = field(default=None, metadata=about("A shorter form of it."))
    role: str | None = field(
        default=None, metadata=about("Who said it, for conversation turns (user, assistant).")
    )
    situational_tags: tuple[str, ...] | None = field(
        default=None, metadata=about("Tags of the situation it belongs to.")
    )
    importance: float | None = field(
        default=None, metadata=about("0..1; the ranker takes 0.5 where there is none.")
    )
    last_accessed: float | None = field(
        default=None,
        metadata=about(
            "Epoch seconds of its last recall, where recorded: memorizz ranking measures "
            "recency from it (else from timestamp).",
            reply=False,
            time=True,
        ),
    )


@dataclass(frozen=True, slots=True)
class MemoryField:
    """One field of `Memory`, as the stores, ingest and replies need to know it."""

    name: str
    annotation: Any  # the resolved type, e.g. `float | None`
    kind: Kind  # text: str; number: float; tags: a tuple of strings (a list on the wire)
    optional: bool  # None is a value of it
    required: bool  # it has no default: every Memory is built with it
    meaning: str
    reply: bool  # a reply's MemoryHit carries it
    time: bool  # epoch seconds


_KINDS: dict[Any, Kind] = {str: "text", float: "number", tuple[str, ...]: "tags"}


def _describe(spec: dataclasses.Field[Any], annotation: Any) -> MemoryField:
    members = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else ()
    base = [m for m in members if m is not type(None)] if members else [annotation]
    if len(base) != 1 or base[0] not in _KINDS:
        raise TypeError(f"Memory.{spec.name}: {annotation} is not str, float or tuple[str, ...]")
    return MemoryField(
        name=spec.name,
        annotation=annotation,
        kind=_KINDS[base[0]],
        optional=type(None) in members,
        required=spec.default is dataclasses.MISSING,
        meaning=spec.metadata["meaning"],
        reply=spec.metadata["reply"],
        time=spec.metadata["time"],
    )


_HINTS = typing.get_type_hints(Memory)
MEMORY_FIELDS: tuple[MemoryField, ...] = tuple(
    _describe(spec, _HINTS[spec.name]) for spec in dataclasses.fields(Memory)
)
FIELDS: dict[str, MemoryField] = {f.name: f for f in MEMORY_FIELDS}
FIELD_NAMES: tuple[str, ...] = tuple(FIELDS)
REPLY_FIELDS: tuple[str, ...] = tuple(f.name for f in MEMORY_FIELDS if f.reply)
EPOCH_FIELDS: tuple[str, ...] = tuple(f.name for f in MEMORY_FIELDS if f.time)


def meaning(name: str) -> str:
    return FIELDS[name].meaning
