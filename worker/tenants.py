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
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from fnmatch import fnmatchcase
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from worker.errors import ConfigError, Forbidden


class UserRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    memory_ids: tuple[str, ...] = Field(min_length=1)
    filters: dict[str, tuple[str, ...]] = Field(default_factory=dict)


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
        self, user_id: str | None, memory_id: str, filters: Mapping[str, str] | None = None
    ) -> None:
        """Raise Forbidden unless `user_id` may read `memory_id` within the scope its
        rules pin (case-sensitive globs)."""
        if not user_id:
            raise Forbidden("the message has no user_id: the tenant policy needs an identity")
        rules = self.users.get(user_id)
        if rules is None or not any(fnmatchcase(memory_id, glob) for glob in rules.memory_ids):
            raise Forbidden(f"user {user_id!r} may not read memory_id {memory_id!r}")
        for field, globs in rules.filters.items():
            value = (filters or {}).get(field)
            if value is None or not any(fnmatchcase(value, glob) for glob in globs):
                raise Forbidden(f"user {user_id!r} must filter {field!r} on its own scope")
