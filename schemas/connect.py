"""Opening the broker connection: wait for a broker that is still booting, and say in
one line what to check when it cannot be had.

Shared by producers and workers (both import schemas only). A broker that refuses
the connection or cannot be resolved may still be starting (Compose without a
healthcheck, a Kubernetes pod scheduled before RabbitMQ's): retried with a bounded
backoff, each retry logged. A refused login or a missing vhost will not fix itself:
no retry.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import structlog
from aiormq.exceptions import AMQPConnectionError, AuthenticationError, InvalidFrameError
from aiormq.exceptions import ProbableAuthenticationError as _AuthRefused

log = structlog.get_logger(__name__)
T = TypeVar("T")
MAX_DELAY_S = 5.0


class StartupError(Exception):
    """What a person must fix, in one line: what failed and the setting to check."""


def exit_in_one_line(exc: Exception, line: str | None, where: str, debug: bool) -> int:
    """Exit status 2 with `line` on stderr, for a CLI; the traceback instead for a bug
    (no line) or with --debug."""
    if line is None or debug:
        raise exc
    print(f"{where}: {line}", file=sys.stderr)
    return 2


def masked(url: str) -> str:
    """The URL without its password, fit for a log line or an error message."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def explain(exc: BaseException, url: str) -> str | None:
    """One line for a broker connection failure, or None when `exc` is not one."""
    where = masked(url)
    parts = urlsplit(url)
    if isinstance(exc, _AuthRefused | AuthenticationError):
        user = unquote(parts.username or "guest")
        return (
            f"the broker at {where} refused the login of user {user!r}: check the user and "
            "password in RECALLQ_AMQP_URL"
        )
    if isinstance(exc, InvalidFrameError) and "Connection.Close" in str(exc):
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        return (
            f"the broker at {where} would not open vhost {vhost!r}: it does not exist or the "
            "user has no permission on it; check the vhost in RECALLQ_AMQP_URL "
            "(rabbitmqctl list_vhosts, list_permissions -p VHOST)"
        )
    if unreachable(exc):
        reason = exc.args[-1] if exc.args else type(exc).__name__
        return (
            f"cannot reach the broker at {where} ({reason}): check RECALLQ_AMQP_URL and that "
            "RabbitMQ is running"
        )
    return None


def unreachable(exc: BaseException) -> bool:
    """Nothing answered (yet): the broker may still be starting."""
    if isinstance(exc, _AuthRefused | AuthenticationError | InvalidFrameError):
        return False
    return isinstance(exc, AMQPConnectionError | ConnectionError | TimeoutError | OSError)


async def connect_waiting(connect: Callable[[], Awaitable[T]], url: str, wait_s: float) -> T:
    """`connect()`, retried while the broker is unreachable for up to `wait_s` seconds
    (backoff 0.5 s doubling to 5 s); StartupError saying what to check when it gives up."""
    deadline = time.monotonic() + wait_s
    delay = 0.5
    while True:
        try:
            with _quiet_transport_errors():
                return await connect()
        except Exception as exc:
            message = explain(exc, url)
            if message is None:
                raise
            left = deadline - time.monotonic()
            if not unreachable(exc):
                raise StartupError(message) from exc
            if left <= 0:
                raise StartupError(
                    f"{message} (waited {wait_s:g} s: RECALLQ_CONNECT_WAIT_S)"
                ) from exc
            log.warning(
                "broker not reachable yet; retrying",
                url=masked(url),
                retry_in_s=round(min(delay, left), 1),
                error=str(exc.args[-1] if exc.args else exc),
            )
            await asyncio.sleep(min(delay, left))
            delay = min(2 * delay, MAX_DELAY_S)


@contextmanager
def _quiet_transport_errors() -> Iterator[None]:
    """aiormq logs a failed first connect at ERROR with its own text; the retry line
    above says it once, in our words."""
    logger = logging.getLogger("aiormq.connection")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
