"""Which memory types a deployment serves, and where each one lives: the store profile.

A request's `limits` name memory types; the profile maps each to a collection
(a MongoDB collection, or the `memory_type` value of the embedded store). Two
profiles are built in, and `RECALLQ_MEMORY_TYPES` (`type=collection,...`) adds
or overrides entries:

- `recallq`: the seven types recallq ingests, each in its same-named collection;
- `memorizz`: a memorizz (0.16+) database as memorizz writes it. Long-term facts
  live in `knowledge_base` (`long_term_memory` is kept as an alias of it, as
  memorizz keeps it), procedural memory in `toolbox`, `skillbox` and
  `workflow_memory`.

Each memory type also names its owner field: the one field whose equality with the
request's `memory_id` isolates tenants. It is `memory_id` unless the profile says
otherwise: memorizz writes ingested knowledge-base chunks under `knowledge_base_id`,
tools, skills and workflows under `agent_id`, summaries and short-term rows under
`user_id` only (its store() strips memory_id there). One request names one owner, so
its memory types must share the owner field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
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
# through its API; `long_term_memory` keeps memory_id: an agent's own facts carry it).
MEMORIZZ_OWNERS = {
    "knowledge_base": "knowledge_base_id",
    "workflow_memory": "agent_id",
    "toolbox": "agent_id",
    "skillbox": "agent_id",
    "summaries": "user_id",
    "short_term_memory": "user_id",
}
BUILT_IN = {"recallq": {t.value: t.value for t in MemoryType}, "memorizz": MEMORIZZ}
BUILT_IN_OWNERS: dict[str, dict[str, str]] = {"recallq": {}, "memorizz": MEMORIZZ_OWNERS}
MEMORY_ID = "memory_id"


SCOPE_FIELDS = "user_id,agent_id,thread_id,namespace,knowledge_base_id"


@dataclass(frozen=True)
class Profile:
    name: str
    collections: Mapping[str, str]  # memory type -> collection
    scope_fields: frozenset[str] = frozenset()  # what `filters` may name
    owners: Mapping[str, str] = field(default_factory=dict)  # type -> owner, if not memory_id

    def owner(self, memory_type: str) -> str:
        """The field that must equal the request's memory_id in this type's rows."""
        return self.owners.get(memory_type, MEMORY_ID)

    def owner_fields(self, collection: str) -> list[str]:
        """Every owner field of the types stored in `collection`: what `worker init`
        indexes and declares as vector-index filter fields there."""
        types = [t for t, name in self.collections.items() if name == collection]
        return sorted({self.owner(t) for t in types})

    @property
    def memory_types(self) -> list[str]:
        return sorted(self.collections)

    @property
    def distinct_collections(self) -> list[str]:
        """Each collection once: what `worker init` indexes and the probe checks."""
        return sorted(set(self.collections.values()))

    def collection(self, memory_type: str) -> str:
        return self.collections[memory_type]

    def check(self, memory_types: Iterable[str], filters: Iterable[str] = ()) -> str:
        """The owner field of the request's memory types; InvalidMessage naming what this
        deployment serves, for any other memory type or scope field, for types with
        different owners, or for a filter on the owner field (before any query)."""
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
        return owner


def load_profile(name: str, overrides: str = "", scope_fields: str = "") -> Profile:
    """The built-in profile `name` with `type=collection[:owner_field],...` entries added
    or replaced, and the comma-separated scope fields requests may filter on."""
    if name not in BUILT_IN:
        raise ConfigError(f"RECALLQ_STORE_PROFILE {name!r}: expected one of {sorted(BUILT_IN)}")
    collections, owners = dict(BUILT_IN[name]), dict(BUILT_IN_OWNERS[name])
    for entry in filter(None, (part.strip() for part in overrides.split(","))):
        memory_type, _, where = (side.strip() for side in entry.partition("="))
        collection, _, owner = (side.strip() for side in where.partition(":"))
        owner = owner or MEMORY_ID
        if not all(NAME.fullmatch(part) for part in (memory_type, collection, owner)):
            raise ConfigError(
                f"RECALLQ_MEMORY_TYPES entry {entry!r}: expected type=collection or "
                "type=collection:owner_field, each lowercase letters, digits and '_'"
            )
        collections[memory_type] = collection
        owners[memory_type] = owner
    fields = frozenset(f.strip() for f in scope_fields.split(",") if f.strip())
    if bad := sorted(f for f in fields if not NAME.fullmatch(f)):
        raise ConfigError(f"RECALLQ_SCOPE_FIELDS: not field names: {bad}")
    owners = {t: field for t, field in owners.items() if field != MEMORY_ID}
    return Profile(name, MappingProxyType(collections), fields, MappingProxyType(owners))
