"""The tenant policy: globs per broker user, nothing for anyone else."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from worker.access.tenants import TenantPolicy
from worker.errors import ConfigError, Forbidden

POLICY = TenantPolicy.model_validate(
    {
        "users": {
            "alice": {"memory_ids": ["travel-concierge:*", "shared"]},
            "ops": {"memory_ids": ["*"]},
        }
    }
)


@pytest.mark.parametrize(
    ("user", "memory_id"),
    [("alice", "travel-concierge:maya"), ("alice", "shared"), ("ops", "code-copilot:devon")],
)
def test_a_user_reads_what_its_globs_match(user: str, memory_id: str) -> None:
    POLICY.check(user, memory_id)


@pytest.mark.parametrize(
    ("user", "memory_id"),
    [
        ("alice", "code-copilot:devon"),
        ("alice", "TRAVEL-CONCIERGE:maya"),  # globs are case-sensitive
        ("alice", "shared-but-longer"),
        ("mallory", "travel-concierge:maya"),  # not in the policy
        (None, "travel-concierge:maya"),  # no user_id on the message
        ("", "travel-concierge:maya"),
    ],
)
def test_anything_else_is_forbidden(user: str | None, memory_id: str) -> None:
    with pytest.raises(Forbidden):
        POLICY.check(user, memory_id)


@pytest.mark.parametrize(
    "text",
    ["not json", '{"users": {"alice": {"memory_ids": []}}}', '{"users": {}, "extra": 1}', "[]"],
)
def test_a_bad_policy_file_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "policy.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match="RECALLQ_TENANT_POLICY"):
        TenantPolicy.load(path)


def test_a_missing_policy_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        TenantPolicy.load(tmp_path / "absent.json")


def test_a_users_pinned_scope_must_be_in_its_filters() -> None:
    policy = TenantPolicy.model_validate(
        {"users": {"app-alice": {"memory_ids": ["shared"], "filters": {"user_id": ["alice"]}}}}
    )
    policy.check("app-alice", "shared", {"user_id": "alice", "agent_id": "a1"})
    for filters in (None, {}, {"user_id": "bob"}, {"agent_id": "alice"}, {"user_id": "alice*"}):
        with pytest.raises(Forbidden, match="must filter 'user_id'"):
            policy.check("app-alice", "shared", filters)


def test_other_owner_fields_are_granted_apart_from_memory_ids() -> None:
    policy = TenantPolicy.model_validate(
        {
            "users": {
                "app-alice": {
                    "memory_ids": ["shared"],
                    "owners": {"agent_id": ["agent-1"], "user_id": ["alice"]},
                    "filters": {"user_id": ["alice"]},
                }
            }
        }
    )
    policy.check("app-alice", "agent-1", {"user_id": "alice"}, owner_field="agent_id")
    policy.check("app-alice", "alice", None, owner_field="user_id")  # the owner meets the pin
    for memory_id, owner in [("agent-1", "memory_id"), ("shared", "agent_id"),
                             ("bob", "user_id"), ("kb-1", "knowledge_base_id")]:  # fmt: skip
        with pytest.raises(Forbidden, match="may not read"):
            policy.check("app-alice", memory_id, {"user_id": "alice"}, owner_field=owner)
    with pytest.raises(Forbidden, match="must filter 'user_id'"):
        policy.check("app-alice", "agent-1", None, owner_field="agent_id")


def test_each_attached_id_is_checked_like_an_owner_of_its_field() -> None:
    policy = TenantPolicy.model_validate(
        {
            "users": {
                "agent-1": {
                    "memory_ids": ["agent-1-memory"],
                    "owners": {"knowledge_base_id": ["kb-travel-*"], "agent_id": ["kb-food"]},
                },
                "pinned": {
                    "memory_ids": ["shared"],
                    "owners": {"knowledge_base_id": ["*"]},
                    "filters": {"knowledge_base_id": ["kb-1"]},
                },
            }
        }
    )
    kb = "knowledge_base_id"
    policy.check("agent-1", "agent-1-memory", attached_field=kb, attached_ids=["kb-travel-1"])
    policy.check("agent-1", "agent-1-memory", attached_field=kb,
                 attached_ids=["kb-travel-1", "kb-travel-2"])  # fmt: skip
    refused = [
        ["kb-food"],  # granted for another field only
        ["kb-travel-1", "kb-food"],  # one id refused: the whole request
        ["KB-TRAVEL-1"],  # case-sensitive
        ["agent-1-memory"],  # the memory_id grant is not a knowledge-base grant
    ]
    for ids in refused:
        with pytest.raises(Forbidden, match=r"may not read knowledge_base_id .*\(attached\)"):
            policy.check("agent-1", "agent-1-memory", attached_field=kb, attached_ids=ids)
    with pytest.raises(Forbidden, match="may not read memory_id"):  # the owner is checked too
        policy.check("agent-1", "other-memory", attached_field=kb, attached_ids=["kb-travel-1"])
    with pytest.raises(Forbidden, match="attached field"):
        policy.check("agent-1", "agent-1-memory", attached_ids=["kb-travel-1"])
    # an attached id never meets a pin on its field: the owner's rows are not narrowed
    with pytest.raises(Forbidden, match="must filter 'knowledge_base_id'"):
        policy.check("pinned", "shared", attached_field=kb, attached_ids=["kb-1"])
    policy.check("pinned", "shared", {kb: "kb-1"})


def test_agent_wide_rows_are_allowed_unless_the_user_s_rules_forbid_them() -> None:
    pinned = {"memory_ids": ["shared"], "filters": {"user_id": ["alice"]}}
    policy = TenantPolicy.model_validate(
        {"users": {"app-alice": pinned, "strict-alice": {**pinned, "agent_wide": False}}}
    )
    alice = {"user_id": "alice"}
    policy.check("app-alice", "shared", alice, agent_wide=True)  # memorizz's semantics
    policy.check("strict-alice", "shared", alice)  # the strict scope, as before
    with pytest.raises(Forbidden, match="may not read agent-wide rows"):
        policy.check("strict-alice", "shared", alice, agent_wide=True)
    with pytest.raises(Forbidden, match="must filter 'user_id'"):  # the pin still holds
        policy.check("app-alice", "shared", {"user_id": "bob"}, agent_wide=True)
    with pytest.raises(Forbidden, match="may not read memory_id"):  # and the owner
        policy.check("app-alice", "other", alice, agent_wide=True)
    for bad in ("false", 0, None):  # a typo never turns into a grant or a refusal
        with pytest.raises(ValidationError):
            TenantPolicy.model_validate({"users": {"x": {**pinned, "agent_wide": bad}}})
