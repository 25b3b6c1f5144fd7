"""Which memory types a deployment serves, and where each one lives: the store profile.

A request's `limits` name memory types; the profile maps each to a collection
(a MongoDB collection, or the `memory_type` value of the embedded store). Two
profiles are built in, and `RECALLQ_MEMORY_TYPES` (`type=collection[:owner[:attached]],...`)
adds or overrides entries:

- `recallq`: the seven types recallq ingests, each in its same-named collection;
- `memorizz`: a memorizz (0.16+) database as memorizz writes it. Long-term facts
  live in `knowledge_base` (`long_term_memory` is kept as an alias of it, as
  memorizz keeps it), procedural memory in `toolbox`, `skillbox` and
  `workflow_memory`.

Each memory type also names its owner field: the one field whose equality with the
request's `memory_id` isolates tenants. It is `memory_id` unless the profile says
otherwise: memorizz writes tools, skills and workflows under `agent_id`, summaries and
short-term rows under `user_id` only (its store() strips memory_id there). One request
names one owner, so its memory types must share the owner field.

A memory type may also name an attached field, searched beside its owner as memorizz
searches its knowledge base: an agent's own facts carry its `memory_id`, ingested
chunks only the `knowledge_base_id` of their knowledge base, and memorizz selects
`memory_id = X OR knowledge_base_id IN (the agent's attached knowledge bases)`. The
request's `knowledge_base_ids` are those attached ids; they apply to the types with an
attached field only (a conversation_memory beside them is searched by memory_id alone).

A collection may also be agent-wide: memorizz reads its knowledge base, toolbox and
skillbox (its AGENT_WIDE_STORES) by user with `user_id IN (the user, null)`, a row
without a user_id belonging to every user of the agent. The profile names the user
field of each such collection; a request with `agent_wide` widens its filter on that
field the same way, for the types stored there only (the `recallq` profile has none).
The marking follows the collection, so an alias (memorizz's long_term_memory) shares it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from schemas.messages import NAME_PATTERN, MemoryType
from worker.errors import ConfigError, InvalidMessage

NAME = re.compile(NAME_PATTERN)  # the wire's rule for memory type and field names
MEMORIZZ = {
    "conversation_memory": "conversation_memory",
    "knowledge_base": "knowledge_base",
    "long_term_memory": "knowledge_base",
    "workflow_memory": "workflow_memory",
    "toolbox": "toolbox",
    "skillbox": "skillbox",
    "entity_memory": "entity_memory",
    "summaries": "summaries",
    "short_term_memory": "short_term_memory",
}
# Owner fields other than memory_id, as memorizz 0.17 writes these rows (observed
# through its API).
MEMORIZZ_OWNERS = {
    "workflow_memory": "agent_id",
    "toolbox": "agent_id",
    "skillbox": "agent_id",
    "summaries": "user_id",
    "short_term_memory": "user_id",
}
# Attached fields, as memorizz's _knowledge_base_search_filter widens its knowledge
# base (long_term_memory is the same collection under its older name).
MEMORIZZ_ATTACHED = {
    "knowledge_base": "knowledge_base_id",
    "long_term_memory": "knowledge_base_id",
}
# Agent-wide collections and their user field: memorizz 0.17's AGENT_WIDE_STORES, where
# a row without a user_id is visible to every user of its agent (user_scope_matches).
MEMORIZZ_AGENT_WIDE = {"knowledge_base": "user_id", "toolbox": "user_id", "skillbox": "user_id"}
BUILT_IN = {"recallq": {t.value: t.value for t in MemoryType}, "memorizz": MEMORIZZ}
BUILT_IN_OWNERS: dict[str, dict[str, str]] = {"recallq": {}, "memorizz": MEMORIZZ_OWNERS}
BUILT_IN_ATTACHED: dict[str, dict[str, str]] = {"recallq": {}, "memorizz": MEMORIZZ_ATTACHED}
BUILT_IN_AGENT_WIDE: dict[str, dict[str, str]] = {"recallq": {}, "memorizz": MEMORIZZ_AGENT_WIDE}
MEMORY_ID = "memory_id"


SCOPE_FIELDS = "user_id,agent_id,thread_id,namespace,knowledge_base_id"


@dataclass(frozen=True)
class Profile:
    name: str
    collections: Mapping[str, str]  # memory type -> collection
    scope_fields: frozenset[str] = frozenset()  # what `filters` may name
    owners: Mapping[str, str] = field(default_factory=dict)  # type -> owner, if not memory_id
    attached: Mapping[str, str] = field(default_factory=dict)  # type -> attached field
    agent_wide: Mapping[str, str] = field(default_factory=dict)  # collection -> user field

    def owner(self, memory_type: str) -> str:
        """The field that must equal the request's memory_id in this type's rows."""
        return self.owners.get(memory_type, MEMORY_ID)

    def attached_field(self, memory_type: str) -> str | None:
        """The field whose value in `knowledge_base_ids` also selects this type's rows."""
        return self.attached.get(memory_type)

    def agent_wide_field(self, memory_type: str) -> str | None:
        """The user field whose filter `agent_wide` widens in this type's collection (rows
        without it belong to the whole agent), or None where the collection is not
        agent-wide."""
        collection = self.collections.get(memory_type)
        return None if collection is None else self.agent_wide.get(collection)

    def widened(self, memory_types: Iterable[str], filters: Iterable[str]) -> list[str]:
        """The types among `memory_types` whose filters `agent_wide` would widen: an
        agent-wide collection whose user field is filtered on (sorted)."""
        named = set(filters)
        return sorted(
            t
            for t in set(memory_types)
            if (f := self.agent_wide_field(t)) is not None and f in named
        )

    def owner_fields(self, collection: str) -> list[str]:
        """Every owner and attached field of the types stored in `collection`: what
        `worker init` indexes and declares as search-index filter fields there."""
        types = [t for t, name in self.collections.items() if name == collection]
        attached = {self.attached[t] for t in types if t in self.attached}
        return sorted({self.owner(t) for t in types} | attached)

    @property
    def memory_types(self) -> list[str]:
        return sorted(self.collections)

    @property
    def distinct_collections(self) -> list[str]:
        """Each collection once: what `worker init` indexes and the probe checks."""
        return sorted(set(self.collections.values()))

    def collection(self, memory_type: str) -> str:
        return self.collections[memory_type]

    def check(
        self,
        memory_types: Iterable[str],
        filters: Iterable[str] = (),
        attached_ids: Sequence[str] = (),
    ) -> str:
        """The owner field of the request's memory types; InvalidMessage naming what this
        deployment serves, for any other memory type or scope field, for types with
        different owners, for a filter on the owner field, or for attached ids that no
        requested type takes (before any query)."""
        memory_types, filters = list(memory_types), set(filters)
        unknown = sorted(set(memory_types) - set(self.collections))
        if unknown:
            raise InvalidMessage(
                f"unknown memory type {', '.join(map(repr, unknown))}; this deployment "
                f"({self.name} profile) serves: {', '.join(self.memory_types)}"
            )
        unlisted = sorted(filters - self.scope_fields)
        if unlisted:
            allowed = ", ".join(sorted(self.scope_fields)) or "none (this store has no scopes)"
            raise InvalidMessage(
                f"filters on {', '.join(map(repr, unlisted))} are not allowed; scope fields: "
                f"{allowed}"
            )
        owners = {t: self.owner(t) for t in sorted(memory_types)}
        if len(set(owners.values())) > 1:
            listed = ", ".join(f"{t} by {field}" for t, field in owners.items())
            raise InvalidMessage(
                f"these memory types are owned by different fields ({listed}): memory_id "
                "names one owner, so send one request per owner field"
            )
        owner = next(iter(owners.values()), MEMORY_ID)
        if owner in filters:
            raise InvalidMessage(f"{owner!r} is the owner field here: give it as memory_id")
        if attached_ids:
            self._check_attached(memory_types, filters)
        return owner

    def attached_field_of(self, memory_types: Iterable[str]) -> str | None:
        """The one attached field of the request's memory types that have one, or None."""
        fields = sorted({f for t in memory_types if (f := self.attached_field(t)) is not None})
        return fields[0] if len(fields) == 1 else None

    def _check_attached(self, memory_types: list[str], filters: set[str]) -> None:
        """knowledge_base_ids need a requested type with an attached field (one field for
        them all), and the attached field is never a filter beside them."""
        takers = {t: f for t in sorted(memory_types) if (f := self.attached_field(t)) is not None}
        if not takers:
            served = ", ".join(f"{t} by {f}" for t, f in sorted(self.attached.items()))
            raise InvalidMessage(
                "knowledge_base_ids attach knowledge bases to memory types with an attached "
                f"field, and none of {', '.join(sorted(memory_types))} has one; this "
                f"deployment ({self.name} profile): {served or 'none'}"
            )
        if len(set(takers.values())) > 1:
            listed = ", ".join(f"{t} by {f}" for t, f in takers.items())
            raise InvalidMessage(
                f"knowledge_base_ids would name different attached fields ({listed}): send "
                "one request per attached field"
            )
        attached = next(iter(takers.values()))
        if attached in filters:
            raise InvalidMessage(
                f"{attached!r} is the attached field here: give it in knowledge_base_ids"
            )


def load_profile(name: str, overrides: str = "", scope_fields: str = "") -> Profile:
    """The built-in profile `name` with `type=collection[:owner_field[:attached_field]],...`
    entries added or replaced, and the comma-separated scope fields requests may filter
    on."""
    if name not in BUILT_IN:
        raise ConfigError(f"RECALLQ_STORE_PROFILE {name!r}: expected one of {sorted(BUILT_IN)}")
    collections, owners = dict(BUILT_IN[name]), dict(BUILT_IN_OWNERS[name])
    attached = dict(BUILT_IN_ATTACHED[name])
    for entry in filter(None, (part.strip() for part in overrides.split(","))):
        memory_type, collection, owner, extra = _override(entry)
        collections[memory_type] = collection
        owners[memory_type] = owner
        attached.pop(memory_type, None)  # an entry replaces the type's whole mapping
        if extra:
            attached[memory_type] = extra
    fields = frozenset(f.strip() for f in scope_fields.split(",") if f.strip())
    if bad := sorted(f for f in fields if not NAME.fullmatch(f)):
        raise ConfigError(f"RECALLQ_SCOPE_FIELDS: not field names: {bad}")
    owners = {t: field for t, field in owners.items() if field != MEMORY_ID}
    return Profile(
        name, MappingProxyType(collections), fields, MappingProxyType(owners),
        MappingProxyType(attached), MappingProxyType(dict(BUILT_IN_AGENT_WIDE[name])),
    )  # fmt: skip


def _override(entry: str) -> tuple[str, str, str, str]:
    """(type, collection, owner field, attached field or "") of one RECALLQ_MEMORY_TYPES
    entry, or ConfigError."""
    memory_type, _, where = (side.strip() for side in entry.partition("="))
    collection, _, fields = (side.strip() for side in where.partition(":"))
    owner, _, attached = (side.strip() for side in fields.partition(":"))
    owner = owner or MEMORY_ID
    names = (memory_type, collection, owner, *((attached,) if attached else ()))
    if not all(NAME.fullmatch(part) for part in names) or attached == owner:
        raise ConfigError(
            f"RECALLQ_MEMORY_TYPES entry {entry!r}: expected type=collection, "
            "type=collection:owner_field or type=collection:owner_field:attached_field, "
            "each lowercase letters, digits and '_' (the attached field not the owner's)"
        )
    return memory_type, collection, owner, attached
