"""RabbitMQ definitions: passwords hashed as RabbitMQ checks them, users from specs."""

from __future__ import annotations

import base64
import hashlib

import pytest

from schemas.topology import Topology
from worker.admin.definitions import BrokerUser, build_definitions, parse_users, password_hash
from worker.errors import ConfigError


def test_a_password_hash_is_salt_then_sha256_of_salt_and_password() -> None:
    raw = base64.b64decode(password_hash("s3cret", salt=b"\x01\x02\x03\x04"))
    assert raw[:4] == b"\x01\x02\x03\x04"
    assert raw[4:] == hashlib.sha256(b"\x01\x02\x03\x04" + b"s3cret").digest()
    assert password_hash("s3cret") != password_hash("s3cret")  # a fresh salt each time


def test_users_take_passwords_from_the_environment_never_the_command_line() -> None:
    environ = {"RECALLQ_PASSWORD_RECALLQ_WORKER": "w", "APP_PW": "a"}
    users = parse_users(["worker:recallq-worker", "producer:app:APP_PW"], environ)
    assert users == [
        BrokerUser("recallq-worker", "worker", "w"),
        BrokerUser("app", "producer", "a"),
    ]
    with pytest.raises(ConfigError, match="RECALLQ_PASSWORD_BOB"):
        parse_users(["producer:bob"], environ)
    with pytest.raises(ConfigError, match="ROLE:NAME"):
        parse_users(["reader:bob"], environ)


def test_definitions_grant_each_role_and_declare_the_least_privilege_topology() -> None:
    users = [BrokerUser("app", "producer", "a"), BrokerUser("w", "worker", "b")]
    document = build_definitions(Topology("t1"), users)
    assert {user["name"] for user in document["users"]} == {"app", "w"}
    assert all("password" not in user for user in document["users"])  # hashes only
    [topic] = document["topic_permissions"]
    assert topic == {"user": "app", "vhost": "/", "exchange": "t1.replies", "write": "^$",
                     "read": r"^t1\.(reply|job)\.app\."}  # fmt: skip
    exchanges = {e["name"] for e in document["exchanges"]}
    assert exchanges == {"t1.submit", "t1.replies", "t1.dead-letters"}
    assert {q["name"] for q in document["queues"]} == {"t1.requests", "t1.bulk", "t1.dead"}
    routes = {(b["source"], b["destination"]) for b in document["bindings"]}
    assert routes == {("t1.submit", "t1.requests"), ("t1.submit", "t1.bulk"),
                      ("t1.dead-letters", "t1.dead")}  # fmt: skip
