"""Opening the broker connection: wait for a broker that is still booting, and say in
one line what to check when it cannot be had.

Shared by producers and workers (both import schemas only). A broker that refuses
the connection may still be starting (Compose without a healthcheck, a Kubernetes pod
scheduled before RabbitMQ's), and a resolver that answers "try again" (EAI_AGAIN) may
be one that is still starting or briefly away: retried with a bounded backoff, each
retry logged. A refused login, a missing vhost or a host name that does not exist
(EAI_NONAME) will not fix itself: no retry. The whole wait has a deadline, so a
broker port that accepts and never answers cannot hold a start for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar
from urllib.parse import SplitResult, unquote, urlsplit

import aio_pika
import structlog
from aio_pika.abc import AbstractRobustConnection
from aio_pika.connection import make_url
from aiormq.exceptions import AMQPConnectionError, AMQPError, AuthenticationError, InvalidFrameError
from aiormq.exceptions import ProbableAuthenticationError as _AuthRefused

from schemas.backoff import delays
from schemas.topology import TopologyMissing

log = structlog.get_logger(__name__)
T = TypeVar("T")
MAX_DELAY_S = 5.0
WORKER_WAIT = "RECALLQ_CONNECT_WAIT_S"  # the wait's setting a worker reads
# Past the wait, what one last attempt (TCP, TLS, the AMQP handshake) may take before
# the whole wait gives up.
ATTEMPT_MARGIN_S = 5.0
# getaddrinfo errors a resolver may get past by itself (a DNS server starting or away);
# any other (EAI_NONAME: no such name) will not mend.
TRANSIENT_DNS = frozenset(
    getattr(socket, name)
    for name in ("EAI_AGAIN", "EAI_SYSTEM", "EAI_MEMORY")
    if hasattr(socket, name)
)


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
    """The URL without its password, fit for a log line or an error message; never
    raises, whatever `url` is. The user info runs to the last '@', so a password with
    an unencoded '/', '?', '#' or '@' is hidden too (a rare '@' in a path or an option
    hides a little more than the password)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    user, colon, _ = rest[: max(rest.rfind("@"), 0)].partition(":")
    if not colon:
        return url
    return f"{scheme}{sep}{user}:***{rest[rest.rfind('@') :]}"


def explain(exc: BaseException, url: str) -> str | None:
    """One line for a broker connection failure, or None when `exc` is not one."""
    where = masked(url)
    parts = _split(url)
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
    if (lookup := resolution_error(exc)) is not None:
        dns = " and that DNS answers" if lookup.errno in TRANSIENT_DNS else ""
        return (
            f"cannot resolve the broker host {parts.hostname or ''!r} of {where} "
            f"({lookup.strerror}): check the host in RECALLQ_AMQP_URL{dns}"
        )
    if unreachable(exc):
        reason = exc.args[-1] if exc.args else type(exc).__name__
        return (
            f"cannot reach the broker at {where} ({reason}): check RECALLQ_AMQP_URL and that "
            "RabbitMQ is running"
        )
    return None


def broker_line(exc: BaseException, url: str) -> str | None:
    """One line for what the broker client raised (connect_waiting's StartupError, a
    least-privilege topology nobody declared, an aio-pika or aiormq error); None for
    anything else: a file, a store or a bug is not the broker's to explain."""
    if isinstance(exc, StartupError | TopologyMissing):
        return str(exc)
    if isinstance(exc, AMQPError):
        return explain(exc, url)
    return None


def unreachable(exc: BaseException) -> bool:
    """Nothing answered (yet): the broker may still be starting. Only in the context of
    a connect: any OSError there is the connection's."""
    if isinstance(exc, _AuthRefused | AuthenticationError | InvalidFrameError):
        return False
    if (lookup := resolution_error(exc)) is not None:
        return lookup.errno in TRANSIENT_DNS
    return isinstance(exc, AMQPConnectionError | ConnectionError | TimeoutError | OSError)


def resolution_error(exc: BaseException) -> socket.gaierror | None:
    """The getaddrinfo error behind `exc` (aiormq wraps it in AMQPConnectionError)."""
    seen: BaseException | None = exc
    for _ in range(8):  # a chain, not a loop: bounded all the same
        if seen is None or isinstance(seen, socket.gaierror):
            return seen
        seen = seen.__cause__
    return None


def _split(url: str) -> SplitResult:
    """urlsplit, or nothing for what it cannot split (an unclosed '[')."""
    try:
        return urlsplit(url)
    except ValueError:
        return urlsplit("")


async def retry_while(
    call: Callable[[], Awaitable[T]],
    retryable: Callable[[Exception], bool],
    wait_s: float,
    what: str,
    url: str,
    *,
    each_retry: bool = True,
) -> T:
    """`call()`, again after a backoff (0.5 s doubling to 5 s) while it raises what
    `retryable` accepts, for up to `wait_s` seconds, each retry logged as `{what} not
    reachable yet` (an operator reads a worker's log), or with `each_retry` False only
    the first (a person waits for a command); then the last error propagates. Used for
    the broker and the store."""
    deadline = time.monotonic() + wait_s
    for attempt, delay in enumerate(delays(0.5, MAX_DELAY_S)):
        try:
            return await call()
        except Exception as exc:
            left = deadline - time.monotonic()
            if not retryable(exc) or left <= 0:
                raise
            level = logging.WARNING if each_retry or attempt == 0 else logging.DEBUG
            log.log(
                level,
                f"{what} not reachable yet; retrying",
                url=masked(url),
                retry_in_s=round(min(delay, left), 1),
                retry_for_s=round(left, 1),
                error=str(exc.args[-1] if exc.args else exc),
            )
            await asyncio.sleep(min(delay, left))
    raise AssertionError("unreachable: delays() never ends")


async def connect_waiting(
    url: str,
    wait_s: float,
    connection_name: str,
    *,
    wait_setting: str = WORKER_WAIT,
    each_retry: bool = True,
) -> AbstractRobustConnection:
    """A robust connection, waiting up to `wait_s` seconds for an unreachable broker and
    `wait_s` + ATTEMPT_MARGIN_S in all (a connect that hangs included); StartupError
    saying what to check when it cannot be had, `wait_setting` naming what sets the
    wait. `each_retry`: see retry_while."""

    async def connect() -> AbstractRobustConnection:
        connection = aio_pika.RobustConnection(
            make_url(url), client_properties={"connection_name": connection_name}
        )
        try:
            with _quiet_transport_errors():
                await connection.connect()
        except BaseException:
            # Closed, or its reconnect task outlives a failed or cancelled connect and
            # retries every 5 s, holding the event loop (and the process) open.
            with contextlib.suppress(Exception):
                await connection.close()
            raise
        return connection

    deadline = asyncio.timeout(None if math.isinf(wait_s) else wait_s + ATTEMPT_MARGIN_S)
    try:
        async with deadline:
            return await retry_while(
                connect, unreachable, wait_s, "broker", url, each_retry=each_retry
            )
    except Exception as exc:
        if deadline.expired():
            raise StartupError(
                f"the broker at {masked(url)} did not answer within "
                f"{wait_s + ATTEMPT_MARGIN_S:g} s: check RECALLQ_AMQP_URL (RabbitMQ's AMQP "
                f"port?) and {wait_setting}"
            ) from exc
        message = explain(exc, url)
        if message is None:
            raise
        if unreachable(exc):  # it was retried until the wait ran out
            message += f" (waited {wait_s:g} s: {wait_setting})"
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
