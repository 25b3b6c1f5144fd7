"""Deadlines: a request whose caller has given up is answered `expired` and does no work.

Checked when a request arrives (consume), when its batch starts (pipeline) and
while its store calls are retried (retry)."""

from __future__ import annotations

from schemas.messages import ErrorCode, RetrievalRequest, RetrievalResponse
from worker.outcomes import Expired


def expired(request_id: str, worker_id: str, when: str) -> Expired:
    response = RetrievalResponse.failure(
        request_id, ErrorCode.EXPIRED, f"deadline passed {when}", worker_id=worker_id
    )
    return Expired(response)


def past_deadline(request: RetrievalRequest, now_wall: float) -> bool:
    return request.deadline_ms is not None and request.deadline_ms <= now_wall * 1000
