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

import aio_pika
import structlog
from aio_pika.abc import AbstractRobustConnection
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


async def retry_while(
    call: Callable[[], Awaitable[T]],
    retryable: Callable[[Exception], bool],
    wait_s: float,
    what: str,
    url: str,
) -> T:
    """`call()`, again after a backoff (0.5 s doubling to 5 s) while it raises what
    `retryable` accepts, for up to `wait_s` seconds, each retry logged as `{what} not
    reachable yet`; then the last error propagates. Used for the broker and the store."""
    deadline = time.monotonic() + wait_s
    delay = 0.5
    while True:
        try:
            return await call()
        except Exception as exc:
            left = deadline - time.monotonic()
            if not retryable(exc) or left <= 0:
                raise
            log.warning(
                f"{what} not reachable yet; retrying",
                url=masked(url),
                retry_in_s=round(min(delay, left), 1),
                error=str(exc.args[-1] if exc.args else exc),
            )
            await asyncio.sleep(min(delay, left))
            delay = min(2 * delay, MAX_DELAY_S)


async def connect_waiting(
    url: str, wait_s: float, connection_name: str
) -> AbstractRobustConnection:
    """A robust connection, waiting up to `wait_s` seconds for an unreachable broker;
    StartupError saying what to check when it cannot be had."""

    async def connect() -> AbstractRobustConnection:
        with _quiet_transport_errors():
            return await aio_pika.connect_robust(
                url, client_properties={"connection_name": connection_name}
            )

    try:
        return await retry_while(connect, unreachable, wait_s, "broker", url)
    except Exception as exc:
        message = explain(exc, url)
        if message is None:
            raise
        if unreachable(exc):  # it was retried until the wait ran out
            message += f" (waited {wait_s:g} s: RECALLQ_CONNECT_WAIT_S)"
        raise StartupError(message) from exc


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
