"""How many workers serve a deployment's queues, and a bounded wait for them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aio_pika

from schemas.settings import BrokerSettings


class NoWorkers(RuntimeError):
    """No worker started consuming in time (or the one being waited for died)."""


async def count_workers(settings: BrokerSettings) -> int:
    """Consumers on the interactive request queue: one per running worker."""
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        await settings.topology.prepare_client(channel)
        queue = await channel.declare_queue(settings.topology.requests.name, passive=True)
        return queue.declaration_result.consumer_count or 0


async def wait_for_workers(
    settings: BrokerSettings,
    at_least: int = 1,
    *,
    timeout: float = 180.0,
    alive: Callable[[], bool] = lambda: True,
) -> None:
    """Until `at_least` workers consume (a worker's start loads a model: seconds)."""
    deadline = time.monotonic() + timeout
    while await count_workers(settings) < at_least:
        if not alive():
            raise NoWorkers("the worker being waited for has exited; see its log")
        if time.monotonic() > deadline:
            raise NoWorkers(f"fewer than {at_least} workers consuming after {timeout:.0f} s")
        await asyncio.sleep(0.1)
