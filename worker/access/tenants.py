"""Which broker user may read which memory_ids: the tenant policy.

Identity is the message's `user_id` property, which RabbitMQ validates against
the publishing connection's login (a mismatch is refused with
PRECONDITION_FAILED), never anything in the body. The policy file,
RECALLQ_TENANT_POLICY, maps each user to glob patterns of memory_ids:

    {"users": {"alice": {"memory_ids": ["travel-concierge:*"]}}}

A user the file does not name, and a message without `user_id`, may read nothing.
Where several people share one memory_id (memorizz scopes rows by user_id inside
it), a user's `filters` pin its scope: every field named there must be in the
request's `filters` with a value matching one of its globs:

    {"users": {"travel-app-alice": {"memory_ids": ["shared"],
                                    "filters": {"user_id": ["alice"]}}}}

Where the store profile keeps a memory type under another owner field (memorizz's
tools and workflows by agent_id, its summaries by user_id), a request's memory_id is
checked against `owners`:

    {"users": {"agent-1-runtime": {"memory_ids": ["shared"],
                                   "owners": {"agent_id": ["agent-1"]}}}}

A pinned filter on the owner field itself is met by the owner value.

A request's attached ids (`knowledge_base_ids`, searched beside the owner's rows in
the types whose profile names an attached field) are owners too: each must match the
globs `owners` gives that field, e.g. memorizz's knowledge bases by knowledge_base_id:

    {"users": {"agent-1-runtime": {"memory_ids": ["agent-1-memory"],
                                   "owners": {"knowledge_base_id": ["kb-travel-*"]}}}}

One id that does not match refuses the whole request. Attached ids never meet a pin
(the owner's own rows are not narrowed by them), so a user whose filters pin the
attached field cannot attach.

A request with `agent_wide` reads, in the collections the store profile marks agent-wide
(memorizz's knowledge base, toolbox, skillbox), the owner's rows without a user_id
beside the ones its user_id filter names: memorizz shows those rows to every user of
the agent. That is allowed unless the user's rules say `"agent_wide": false`:

    {"users": {"travel-app-alice": {"memory_ids": ["shared"],
                                    "filters": {"user_id": ["alice"]},
                                    "agent_wide": false}}}

Then a request that would widen anything (an agent-wide type and a filter on its user
field) is forbidden, before any work. It matters where `filters` pin the user field: a
user without a pin can read those rows anyway, by leaving the filter out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator

from worker.access.profiles import MEMORY_ID
from worker.errors import ConfigError, Forbidden


class UserRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    memory_ids: tuple[str, ...] = ()
    owners: dict[str, tuple[str, ...]] = Field(default_factory=dict)  # other owner fields
    filters: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    # May a user_id filter also admit the agent's rows without one (memorizz's semantics)?
    agent_wide: StrictBool = True

    @model_validator(mode="after")
    def _grants_something(self) -> UserRules:
        if not (self.memory_ids or any(self.owners.values())):
            raise ValueError("a user needs memory_ids or owners")
        return self

    def owner_globs(self, owner_field: str) -> tuple[str, ...]:
        return self.memory_ids if owner_field == MEMORY_ID else self.owners.get(owner_field, ())


class TenantPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    users: dict[str, UserRules]

    @classmethod
    def load(cls, path: Path) -> TenantPolicy:
        """The policy in `path`, or ConfigError saying what is wrong with the file."""
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except OSError as exc:
            raise ConfigError(f"cannot read RECALLQ_TENANT_POLICY {path}: {exc.strerror}") from None
        except (ValueError, ValidationError) as exc:
            first = str(exc).splitlines()[0]
            raise ConfigError(
                f"RECALLQ_TENANT_POLICY {path} is not a valid policy: {first}"
            ) from None

    def check(
        self,
        user_id: str | None,
        memory_id: str,
        filters: Mapping[str, str] | None = None,
        owner_field: str = MEMORY_ID,
        *,
        attached_field: str | None = None,
        attached_ids: Sequence[str] = (),
        agent_wide: bool = False,
    ) -> None:
        """Raise Forbidden unless `user_id` may read the memories whose `owner_field` is
        `memory_id`, and those whose `attached_field` is any of `attached_ids`, within the
        scope its rules pin (case-sensitive globs); `agent_wide`: the request widens a
        user filter to the agent's rows without a user, which its rules may forbid."""
        if not user_id:
            raise Forbidden("the message has no user_id: the tenant policy needs an identity")
        rules = self.users.get(user_id)
        if rules is None or not _matches(memory_id, rules.owner_globs(owner_field)):
            what = "memory_id" if owner_field == MEMORY_ID else f"{owner_field} (as memory_id)"
            raise Forbidden(f"user {user_id!r} may not read {what} {memory_id!r}")
        if attached_ids:
            if attached_field is None:  # the profile refuses this first
                raise Forbidden("attached ids without an attached field")
            globs = rules.owner_globs(attached_field)
            for attached in attached_ids:
                if not _matches(attached, globs):
                    raise Forbidden(
                        f"user {user_id!r} may not read {attached_field} {attached!r} (attached)"
                    )
        scope = {**(filters or {}), owner_field: memory_id}
        for field, globs in rules.filters.items():
            value = scope.get(field)
            if value is None or not _matches(value, globs):
                raise Forbidden(f"user {user_id!r} must filter {field!r} on its own scope")
        if agent_wide and not rules.agent_wide:
            raise Forbidden(
                f"user {user_id!r} may not read agent-wide rows (its policy sets agent_wide "
                "false): send the request without agent_wide"
            )


def _matches(value: str, globs: Sequence[str]) -> bool:
    return any(fnmatchcase(value, glob) for glob in globs)
