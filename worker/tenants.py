"""Which broker user may read which memory_ids: the tenant policy.

Identity is the message's `user_id` property, which RabbitMQ validates against
the publishing connection's login (a mismatch is refused with
PRECONDITION_FAILED), never anything in the body. The policy file,
RECALLQ_TENANT_POLICY, maps each user to glob patterns of memory_ids:

    {"users": {"alice": {"memory_ids": ["travel-concierge:*"]}}}

A user the file does not name, and a message without `user_id`, may read nothing.
"""

from __future__ import annotations

import json
from fnmatch import fnmatchcase
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from worker.errors import ConfigError, Forbidden


class UserRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    memory_ids: tuple[str, ...] = Field(min_length=1)


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

    def check(self, user_id: str | None, memory_id: str) -> None:
        """Raise Forbidden unless `user_id` may read `memory_id` (case-sensitive globs)."""
        if not user_id:
            raise Forbidden("the message has no user_id: the tenant policy needs an identity")
        rules = self.users.get(user_id)
        if rules is None or not any(fnmatchcase(memory_id, glob) for glob in rules.memory_ids):
            raise Forbidden(f"user {user_id!r} may not read memory_id {memory_id!r}")
