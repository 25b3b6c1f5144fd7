"""Broker settings shared by producers and workers (prefix RECALLQ_, `.env` read)."""

from __future__ import annotations

from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.topology import (
    MAX_DEAD_LETTERS,
    MAX_QUEUED,
    MAX_QUEUED_BYTES,
    OWNER_NAME,
    Layout,
    Topology,
)


class BrokerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECALLQ_", env_file=".env", extra="ignore")

    amqp_url: str = Field(
        default="amqp://guest:guest@localhost:5672/", description="RabbitMQ connection URL."
    )
    queue_prefix: str = Field(
        default="recallq",
        pattern=r"^[A-Za-z0-9_.-]{1,100}$",
        description="Prefix of every queue name.",
    )

    broker_topology: Layout = Field(
        default=Layout.DEFAULT_EXCHANGE,
        description="default-exchange (simple installs) or least-privilege (shared brokers: "
        "named exchanges, per-user queue names; see README Security).",
    )
    max_queued: int = Field(
        default=MAX_QUEUED,
        ge=1,
        description="Requests a request queue holds; past it publishes are refused (overloaded). "
        "Size it as workers x req/s per worker x the callers' timeout.",
    )
    max_queued_bytes: int = Field(
        default=MAX_QUEUED_BYTES,
        ge=1,
        description="Bytes of requests a request queue holds; past it publishes are refused.",
    )
    max_dead_letters: int = Field(
        default=MAX_DEAD_LETTERS,
        ge=1,
        description="Dead letters kept; past it the oldest is dropped.",
    )

    connect_wait_s: float = Field(
        default=60.0,
        ge=0,
        description="At start, how long to wait for a broker (and, for a worker, a MongoDB "
        "store) that is not reachable yet, retrying with backoff and logging each retry; then "
        "exit 2 with one line naming what to check.",
    )

    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Lowest log level written."
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto = console on a terminal, JSON otherwise."
    )

    worker_users: str = Field(
        default="",
        description="Comma-separated AMQP users whose replies clients accept; empty = any.",
    )

    @model_validator(mode="after")
    def _owner_fits_queue_names(self) -> BrokerSettings:
        # In the least-privilege layout the user name is part of queue names and of
        # permission regexes: a dot or regex syntax would let one user's names
        # cover another's.
        if self.broker_topology is Layout.LEAST_PRIVILEGE and not OWNER_NAME.match(self.amqp_user):
            raise ValueError(
                f"AMQP user {self.amqp_user!r}: with the least-privilege topology user names "
                "must be 1-64 letters, digits, '_' or '-'"
            )
        return self

    def trusts_reply(self, user_id: str | None) -> bool:
        """A reply counts only when a worker identity sent it (the broker validates
        user_id), so no other broker user can put words in a caller's context."""
        trusted = {name.strip() for name in self.worker_users.split(",") if name.strip()}
        return not trusted or user_id in trusted

    @property
    def amqp_user(self) -> str:
        """The user this process authenticates as: set as `user_id` on what it publishes,
        which RabbitMQ checks against the connection's login (it refuses a mismatch)."""
        return unquote(urlsplit(self.amqp_url).username or "guest")

    @property
    def topology(self) -> Topology:
        return Topology(
            self.queue_prefix,
            self.max_queued,
            self.max_queued_bytes,
            self.max_dead_letters,
            self.broker_topology,
            self.amqp_user,
        )


def settings_error_line(exc: ValidationError) -> str:
    """The first invalid setting, named as its environment variable."""
    error = exc.errors()[0]
    name = "RECALLQ_" + "_".join(str(part) for part in error["loc"]).upper()
    return f"invalid setting {name}: {error['msg']}"
