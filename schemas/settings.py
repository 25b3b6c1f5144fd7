"""Broker settings shared by producers and workers (prefix RECALLQ_, `.env` read)."""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.topology import (
    MAX_DEAD_LETTERS,
    MAX_QUEUED,
    MAX_QUEUED_BYTES,
    OWNER_NAME,
    Layout,
    Topology,
)

AMQP_FORM = "amqp://USER:PASSWORD@HOST:PORT/VHOST (or amqps://)"
GARBAGE = re.compile(r"[\s\x00-\x1f\x7f]")
HOST = re.compile(r"[\w.~%-]+")  # a name (IDN too), an IPv4 address, a %-encoded socket path
IPV6 = re.compile(r"\[[0-9A-Fa-f:.]+(%25[\w.~-]+)?\]")
PORT = re.compile(r"[0-9]{1,5}")
ENCODE_HINT = (
    "an '@' after the host: percent-encode '/', '?', '#' and '@' in the user and password "
    "(%2F, %3F, %23, %40)"
)


def check_amqp_url(url: str) -> str:
    """`url`, or ValueError saying what is wrong with it. aio-pika retries a URL without
    a host for ever and fails on a bad port deep inside a connect: refused here, at once.
    No message echoes the URL: it may hold a password."""
    if GARBAGE.search(url):
        raise ValueError("whitespace or a control character in the URL")
    if url.partition("://")[0].lower() not in ("amqp", "amqps") or "://" not in url:
        raise ValueError(f"not an AMQP URL: expected {AMQP_FORM}")
    _, hosts, after = url_authority(url, AMQP_FORM)
    if "@" in after:  # a '/', '?' or '#' in the password ended the host early
        raise ValueError(ENCODE_HINT)
    host_port(hosts)
    if "#" in after:
        raise ValueError("a '#' fragment: an AMQP URL has none (in a password '#' is %23)")
    return url


def url_authority(url: str, form: str, ends: str = "/?#") -> tuple[str | None, str, str]:
    """(USERINFO or None, HOSTS, what follows) of SCHEME://[USERINFO@]HOSTS..., the
    authority ending at the first of `ends`; ValueError for whitespace or no host."""
    if GARBAGE.search(url):
        raise ValueError("whitespace or a control character in the URL")
    rest = url.partition("://")[2]
    authority = re.split(f"[{re.escape(ends)}]", rest, maxsplit=1)[0]
    userinfo, at, hosts = authority.rpartition("@")
    if not hosts:
        raise ValueError(f"no host: expected {form}")
    return (userinfo if at else None), hosts, rest[len(authority) :]


def host_port(text: str) -> tuple[str, int | None]:
    """HOST[:PORT] or [IPV6][:PORT]; ValueError unless the host is one and the port,
    when given, a number 1..65535. The port is not echoed: a mistyped URL can put part
    of a password there."""
    if text.startswith("["):
        host, bracket, after = text.partition("]")
        host += bracket
        if not IPV6.fullmatch(host) or (after and not after.startswith(":")):
            raise ValueError("a host in brackets must be an IPv6 address: [::1]:5672")
        colon, port = after[:1], after[1:]
    else:
        host, colon, port = text.partition(":")
        if not HOST.fullmatch(host):
            raise ValueError(f"host {host!r} is not a host name or address")
    if not colon:
        return host, None
    if not PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise ValueError(f"the port of host {host!r} is not a number 1-65535")
    return host, int(port)


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
    client_connect_wait_s: float = Field(
        default=3.0,
        ge=0,
        description="The same wait for `recallq ask`, `recallq bulk` and the Python client: "
        "short, as a person is usually waiting; a worker uses RECALLQ_CONNECT_WAIT_S.",
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

    @field_validator("amqp_url")
    @classmethod
    def _amqp_url_parses(cls, url: str) -> str:
        return check_amqp_url(url)

    @model_validator(mode="after")
    def _owner_fits_queue_names(self) -> BrokerSettings:
        # In the least-privilege layout the user name is part of queue names and of
        # permission regexes: a dot or regex syntax would let one user's names
        # cover another's.
        if self.broker_topology is Layout.LEAST_PRIVILEGE and not OWNER_NAME.match(self.amqp_user):
            raise ValueError(
                f"AMQP user {self.amqp_user!r} (RECALLQ_AMQP_URL): with the least-privilege "
                "topology (RECALLQ_BROKER_TOPOLOGY) user names must be 1-64 letters, digits, "
                "'_' or '-'"
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
    """The first invalid setting, named as its environment variable (a check across
    settings names them in its message)."""
    error = exc.errors()[0]
    message = error["msg"].removeprefix("Value error, ")
    if not error["loc"]:
        return f"invalid settings: {message}"
    name = "RECALLQ_" + "_".join(str(part) for part in error["loc"]).upper()
    return f"invalid setting {name}: {message}"
