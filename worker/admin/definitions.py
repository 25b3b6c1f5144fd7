"""RabbitMQ definitions for a least-privilege deployment: users, permissions, topology.

`python -m worker definitions --user worker:recallq-worker --user producer:alice ...`
writes a file RabbitMQ imports at boot (`load_definitions`) or on demand
(`rabbitmqctl import_definitions FILE`). Each user's password comes from an
environment variable, never from the command line: RECALLQ_PASSWORD_<USER> (upper
case, '-' as '_'), or the one named in `ROLE:NAME:VARIABLE`. The file holds only
salted SHA-256 hashes, as RabbitMQ stores them.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from schemas.permissions import Role, permissions
from schemas.topology import Layout, QueueSpec, Topology
from worker.errors import ConfigError

ROLES: tuple[Role, ...] = ("producer", "worker", "admin")


@dataclass(frozen=True)
class BrokerUser:
    name: str
    role: Role
    password: str


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = secrets.token_bytes(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def password_variable(user: str) -> str:
    return "RECALLQ_PASSWORD_" + user.upper().replace("-", "_")


def parse_users(specs: Sequence[str], environ: Mapping[str, str] = os.environ) -> list[BrokerUser]:
    """`role:name[:variable]` specs with their passwords from the environment, or
    ConfigError."""
    users = []
    for spec in specs:
        role, _, rest = spec.partition(":")
        name, _, variable = rest.partition(":")
        if role not in ROLES or not name:
            raise ConfigError(f"--user {spec!r}: expected ROLE:NAME with ROLE one of {ROLES}")
        variable = variable or password_variable(name)
        password = environ.get(variable)
        if not password:
            raise ConfigError(f"set {variable} to the password of {name!r}")
        users.append(BrokerUser(name, role, password))
    return users


def build_definitions(
    topology: Topology, users: Sequence[BrokerUser], vhost: str = "/"
) -> dict[str, Any]:
    """The definitions document: users, their permissions, and the shared topology, so
    producers can publish before the first worker has started."""
    shared = replace(topology, layout=Layout.LEAST_PRIVILEGE, owner="")
    document: dict[str, Any] = {
        "vhosts": [{"name": vhost}],
        "users": [],
        "permissions": [],
        "topic_permissions": [],
        **_topology(shared, vhost),
    }
    for user in users:
        granted = permissions(shared, user.role, user.name)
        document["users"].append(
            {"name": user.name, "password_hash": password_hash(user.password),
             "hashing_algorithm": "rabbit_password_hashing_sha256",
             "tags": list(granted.tags)}
        )  # fmt: skip
        document["permissions"].append(
            {"user": user.name, "vhost": vhost, "configure": granted.configure,
             "write": granted.write, "read": granted.read}
        )  # fmt: skip
        if granted.topic_exchange:
            document["topic_permissions"].append(
                {"user": user.name, "vhost": vhost, "exchange": granted.topic_exchange,
                 "write": granted.topic_write, "read": granted.topic_read}
            )  # fmt: skip
    return document


def _topology(topology: Topology, vhost: str) -> dict[str, Any]:
    def exchange(name: str, kind: str) -> dict[str, Any]:
        return {"name": name, "vhost": vhost, "type": kind, "durable": True,
                "auto_delete": False, "internal": False, "arguments": {}}  # fmt: skip

    def binding(source: str, queue: str, key: str) -> dict[str, Any]:
        return {"source": source, "vhost": vhost, "destination": queue,
                "destination_type": "queue", "routing_key": key, "arguments": {}}  # fmt: skip

    def queue(spec: QueueSpec) -> dict[str, Any]:
        return {"name": spec.name, "vhost": vhost, "durable": True, "auto_delete": False,
                "arguments": spec.arguments}  # fmt: skip

    queues = (topology.dead, topology.requests, topology.bulk)
    lanes = (topology.requests.name, topology.bulk.name)
    return {
        "exchanges": [
            exchange(topology.dead_letter_exchange, "fanout"),
            exchange(topology.submit_exchange, "direct"),
            exchange(topology.replies_exchange, "topic"),
        ],
        "queues": [queue(spec) for spec in queues],
        "bindings": [
            binding(topology.dead_letter_exchange, topology.dead.name, ""),
            *(binding(topology.submit_exchange, lane, lane) for lane in lanes),
        ],
    }
