"""`python -m worker dead-letters list | requeue | purge`: look after the dead-letter queue.

Dead letters are requests that will never be served as they are: invalid or
forbidden (rejected), given up after the delivery limit, or expired in the queue
(their caller had already timed out). The queue is bounded
(RECALLQ_MAX_DEAD_LETTERS, oldest dropped first). Listing takes messages with
basic.get and gives them all back when it closes its channel; requeueing
republishes a dead letter to the lane it died in, as it was sent (user_id
included, which needs the `impersonator` tag), and acks it only once the broker
has confirmed the copy.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from schemas.settings import BrokerSettings
from schemas.wire import copy_request

# Headers the broker adds on the way to the dead-letter queue, dropped on requeue.
DEATH_HEADERS = {
    "x-death", "x-first-death-reason", "x-first-death-queue", "x-first-death-exchange",
    "x-last-death-reason", "x-last-death-queue", "x-last-death-exchange", "x-delivery-count",
}  # fmt: skip


@dataclass(frozen=True)
class DeadLetter:
    request_id: str
    user_id: str
    reason: str  # rejected | delivery_limit | expired
    queue: str  # the request queue it died in
    body_bytes: int
    preview: str

    @classmethod
    def of(cls, message: AbstractIncomingMessage) -> DeadLetter:
        headers = message.headers or {}
        return cls(
            request_id=message.correlation_id or "",
            user_id=message.user_id or "",
            reason=_text(headers.get("x-first-death-reason")),
            queue=_text(headers.get("x-first-death-queue")),
            body_bytes=len(message.body),
            preview=message.body[:160].decode("utf-8", "replace"),
        )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


@asynccontextmanager
async def dead_queue(
    settings: BrokerSettings,
) -> AsyncIterator[tuple[AbstractChannel, AbstractQueue]]:
    """The dead-letter queue on a confirming channel; unacked gets are returned on exit."""
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel(on_return_raises=True)
        queue = await channel.declare_queue(settings.topology.dead.name, passive=True)
        yield channel, queue


async def fetch(queue: AbstractQueue, limit: int) -> list[AbstractIncomingMessage]:
    """Up to `limit` dead letters, unacked (they go back when the channel closes)."""
    taken: list[AbstractIncomingMessage] = []
    while len(taken) < limit:
        message = await queue.get(no_ack=False, fail=False)
        if message is None:
            break
        taken.append(message)
    return taken


async def list_dead_letters(settings: BrokerSettings, limit: int) -> list[DeadLetter]:
    async with dead_queue(settings) as (_, queue):
        return [DeadLetter.of(message) for message in await fetch(queue, limit)]


async def requeue(settings: BrokerSettings, limit: int, request_id: str | None = None) -> int:
    """Republish dead letters (all, or the one with `request_id`) to their lane; the count."""
    topology = settings.topology
    lanes = {topology.requests.name, topology.bulk.name}
    moved = 0
    async with dead_queue(settings) as (channel, queue):
        exchange = await topology.request_exchange(channel)
        for message in await fetch(queue, limit):
            letter = DeadLetter.of(message)
            if (request_id and letter.request_id != request_id) or letter.queue not in lanes:
                continue
            resent = copy_request(message, drop_headers=DEATH_HEADERS)
            await exchange.publish(resent, letter.queue, mandatory=True)
            await message.ack()
            moved += 1
    return moved


async def purge(settings: BrokerSettings) -> int:
    async with dead_queue(settings) as (_, queue):
        result = await queue.purge()
        return int(result.message_count or 0)


def summarise(letters: list[DeadLetter]) -> str:
    reasons = Counter(letter.reason for letter in letters)
    return ", ".join(f"{count} {reason}" for reason, count in reasons.most_common()) or "none"


def as_json(letter: DeadLetter) -> str:
    return json.dumps(letter.__dict__, ensure_ascii=False)


def as_table(letters: list[DeadLetter]) -> str:
    """For people: one aligned row a dead letter, the preview cut to fit a terminal."""
    rows = [("REQUEST ID", "USER", "REASON", "QUEUE", "BYTES", "PREVIEW")]
    rows += [(d.request_id[:36], d.user_id[:16], d.reason, d.queue, str(d.body_bytes),
              d.preview[:40].replace("\n", " ")) for d in letters]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + row[5]
        for row in rows
    )
