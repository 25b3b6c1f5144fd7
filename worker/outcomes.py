"""What became of a delivery: the small closed set the settle policy acts on.

The pipeline and the consumer decide an outcome; only `worker.reply.Settler`
turns it into a reply and an ack, reject or nack (its table says which).
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.messages import RetrievalResponse


@dataclass(frozen=True, slots=True)
class Answered:
    """Done: `ok`, or a final error such as `store_unavailable`. Reply, then ack."""

    response: RetrievalResponse


@dataclass(frozen=True, slots=True)
class Refused:
    """Will never be served (invalid, expired). Reply if possible, then dead-letter.

    `silent`: no reply at all, because reply_to is not the sender's to name (a reply
    there would put a worker-signed message in someone else's queue)."""

    response: RetrievalResponse
    silent: bool = False


@dataclass(frozen=True, slots=True)
class Expired:
    """Its deadline passed before it was served. Reply `expired`, then ack: its caller
    has given up, and there is nothing to inspect or requeue, so it is not
    dead-lettered (under overload that would double the broker's work)."""

    response: RetrievalResponse


@dataclass(frozen=True, slots=True)
class Crashed:
    """Processing raised. Retry elsewhere while deliveries remain, then give up."""

    request_id: str


@dataclass(frozen=True, slots=True)
class NotNow:
    """Not this worker, not now (shutting down). Back to the queue, uncounted."""

    reason: str


Outcome = Answered | Refused | Expired | Crashed | NotNow
