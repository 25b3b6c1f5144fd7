"""Broker settings shared by producers and workers (prefix RECALLQ_, `.env` read)."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.topology import MAX_QUEUED, Topology


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

    max_queued: int = Field(
        default=MAX_QUEUED,
        ge=1,
        description="Requests a request queue holds; past it publishes are refused (overloaded).",
    )

    worker_users: str = Field(
        default="",
        description="Comma-separated AMQP users whose replies clients accept; empty = any.",
    )

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
        return Topology(self.queue_prefix, self.max_queued)
