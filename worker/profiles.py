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
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from schemas.messages import MemoryType
from worker.errors import ConfigError, InvalidMessage

NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
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
BUILT_IN = {"recallq": {t.value: t.value for t in MemoryType}, "memorizz": MEMORIZZ}


SCOPE_FIELDS = "user_id,agent_id,thread_id,namespace,knowledge_base_id"


@dataclass(frozen=True)
class Profile:
    name: str
    collections: Mapping[str, str]  # memory type -> collection
    scope_fields: frozenset[str] = frozenset()  # what `filters` may name

    @property
    def memory_types(self) -> list[str]:
        return sorted(self.collections)

    @property
    def distinct_collections(self) -> list[str]:
        """Each collection once: what `worker init` indexes and the probe checks."""
        return sorted(set(self.collections.values()))

    def collection(self, memory_type: str) -> str:
        return self.collections[memory_type]

    def check(self, memory_types: Iterable[str], filters: Iterable[str] = ()) -> None:
        """InvalidMessage naming what this deployment serves, for any other memory
        type or scope field (before anything reaches a query)."""
        unknown = sorted(set(memory_types) - set(self.collections))
        if unknown:
            raise InvalidMessage(
                f"unknown memory type {', '.join(map(repr, unknown))}; this deployment "
                f"({self.name} profile) serves: {', '.join(self.memory_types)}"
            )
        unlisted = sorted(set(filters) - self.scope_fields)
        if unlisted:
            allowed = ", ".join(sorted(self.scope_fields)) or "none (this store has no scopes)"
            raise InvalidMessage(
                f"filters on {', '.join(map(repr, unlisted))} are not allowed; scope fields: "
                f"{allowed}"
            )


def load_profile(name: str, overrides: str = "", scope_fields: str = "") -> Profile:
    """The built-in profile `name` with `type=collection,...` entries added or replaced,
    and the comma-separated scope fields requests may filter on."""
    if name not in BUILT_IN:
        raise ConfigError(f"RECALLQ_STORE_PROFILE {name!r}: expected one of {sorted(BUILT_IN)}")
    collections = dict(BUILT_IN[name])
    for entry in filter(None, (part.strip() for part in overrides.split(","))):
        memory_type, _, collection = (side.strip() for side in entry.partition("="))
        if not (NAME.match(memory_type) and NAME.match(collection)):
            raise ConfigError(
                f"RECALLQ_MEMORY_TYPES entry {entry!r}: expected type=collection, both "
                "lowercase letters, digits and '_'"
            )
        collections[memory_type] = collection
    fields = frozenset(f.strip() for f in scope_fields.split(",") if f.strip())
    if bad := sorted(f for f in fields if not NAME.match(f)):
        raise ConfigError(f"RECALLQ_SCOPE_FIELDS: not field names: {bad}")
    return Profile(name, MappingProxyType(collections), fields)
