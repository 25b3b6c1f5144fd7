"""RabbitMQ permissions for the least-privilege topology, per role.

The regexes are generated here from the topology, so the README, the compose
definitions and the tests all use the same ones.

- producer <user>: publishes to `<prefix>.submit` only (never to the default
  exchange), declares, binds and reads only its own `<prefix>.reply.<user>.*` and
  `<prefix>.job.<user>.*` queues, and binds them to `<prefix>.replies` only under
  its own names (a topic permission on the binding key).
- worker: declares the shared queues and exchanges, consumes the request queues,
  publishes replies to `<prefix>.replies`.
- admin (dead-letter tooling, teardown): everything under the prefix. Requeueing a
  dead letter keeps its user_id, which RabbitMQ allows only with the
  `impersonator` user tag; `management` opens the management UI to its resources.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from schemas.topology import Topology

Role = Literal["producer", "worker", "admin"]


@dataclass(frozen=True)
class Permissions:
    configure: str
    write: str
    read: str
    topic_exchange: str = ""  # with topic_write/topic_read: a topic permission, if any
    topic_write: str = ""
    topic_read: str = ""
    tags: tuple[str, ...] = ()


def permissions(topology: Topology, role: Role, user: str = "") -> Permissions:
    """The permissions `role` needs on `topology`'s names (`user`: the producer's login)."""
    p = re.escape(topology.prefix)
    if role == "producer":
        own = rf"{p}\.(reply|job)\.{re.escape(user)}\."
        return Permissions(
            configure=f"^{own}",
            write=rf"^({own}.*|{p}\.submit)$",
            read=rf"^({own}.*|{p}\.replies)$",
            topic_exchange=topology.replies_exchange,
            topic_write="^$",
            topic_read=f"^{own}",
        )
    if role == "worker":
        return Permissions(
            configure=rf"^{p}\.(requests|bulk|dead|dead-letters|submit|replies)$",
            write=rf"^{p}\.(requests|bulk|dead|dead-letters|replies)$",
            read=rf"^{p}\.(requests|bulk|dead-letters|submit)$",
        )
    return Permissions(
        configure=rf"^{p}\.",
        write=rf"^{p}\.",
        read=rf"^{p}\.",
        tags=("management", "impersonator"),
    )


def rabbitmqctl_commands(
    topology: Topology, role: Role, user: str, vhost: str = "/"
) -> list[list[str]]:
    """The rabbitmqctl calls that give `user` the `role` (after `add_user`)."""
    granted = permissions(topology, role, user)
    commands = [
        ["set_permissions", "-p", vhost, user, granted.configure, granted.write, granted.read]
    ]
    if granted.topic_exchange:
        commands.append(
            ["set_topic_permissions", "-p", vhost, user, granted.topic_exchange,
             granted.topic_write, granted.topic_read]
        )  # fmt: skip
    if granted.tags:
        commands.append(["set_user_tags", user, *granted.tags])
    return commands
