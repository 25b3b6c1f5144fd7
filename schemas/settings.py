"""Broker settings shared by producers and workers (prefix RECALLQ_, `.env` read)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.topology import Topology


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

    @property
    def topology(self) -> Topology:
        return Topology(self.queue_prefix)
