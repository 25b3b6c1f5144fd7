"""The micro-batcher: greedy dynamic batching with two lanes.

A batch is dispatched as soon as the embedder asks for one (no timer by default,
like Triton and text-embeddings-inference), so a lone request adds no latency
and batches grow by themselves while the model is busy. A batch is capped by
request count and by padded token cost (longest x count). The interactive lane
fills a batch first; the bulk lane tops it up, so bulk work never delays an
interactive request by more than one batch.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from worker.delivery import QueueLane

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Entry(Generic[T]):
    item: T
    tokens: int
    arrived: float


@dataclass
class BatchLimits:
    max_requests: int = 64
    max_tokens: int = 16384
    max_wait_s: float = 0.0
    # Bulk requests added to a batch that carries interactive ones: few, so the
    # interactive callers' batch stays short; bulk-only batches stay full size.
    bulk_top_up: int = 8
    # Under backlog, pick each batch from this many batches' worth of waiting
    # requests by length (cuts padding); 1 = strict arrival order.
    sort_window: int = 4


@dataclass
class Batcher(Generic[T]):
    limits: BatchLimits = field(default_factory=BatchLimits)
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._lanes: dict[QueueLane, deque[_Entry[T]]] = {lane: deque() for lane in QueueLane}
        self._changed = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return sum(len(queue) for queue in self._lanes.values())

    def put(self, item: T, lane: QueueLane, tokens: int = 1) -> None:
        self._lanes[lane].append(_Entry(item, max(1, tokens), self.clock()))
        self._changed.set()

    def close(self) -> None:
        """Wake the dispatcher; `next_batch` returns [] from now on."""
        self._closed = True
        self._changed.set()

    def drain(self) -> list[T]:
        """Everything still waiting, in lane order (used on shutdown to requeue)."""
        items = [entry.item for lane in QueueLane for entry in self._lanes[lane]]
        for queue in self._lanes.values():
            queue.clear()
        return items

    async def next_batch(self) -> list[T]:
        """Wait for work, optionally up to max_wait for a fuller batch, and take a batch."""
        while not len(self):
            if self._closed:
                return []
            await self._wait_for_change(None)
        if self._closed:
            return []
        if self.limits.max_wait_s > 0:
            deadline = self._oldest_arrival() + self.limits.max_wait_s
            while len(self) < self.limits.max_requests and not self._closed:
                remaining = deadline - self.clock()
                if remaining <= 0 or not await self._wait_for_change(remaining):
                    break
        return self._take()

    async def _wait_for_change(self, timeout: float | None) -> bool:
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _oldest_arrival(self) -> float:
        return min(queue[0].arrived for queue in self._lanes.values() if queue)

    def _take(self) -> list[T]:
        batch: list[T] = []
        longest = 0
        for lane in QueueLane:
            queue = self._lanes[lane]
            cap = self.limits.max_requests
            if lane is QueueLane.BULK and batch:
                cap = min(cap, len(batch) + self.limits.bulk_top_up)
            if len(queue) > cap - len(batch) > 0 and self.limits.sort_window > 1:
                _group_by_length(queue, cap - len(batch), self.limits.sort_window)
            while queue and len(batch) < cap:
                longest_if_taken = max(longest, queue[0].tokens)
                padded_cost = longest_if_taken * (len(batch) + 1)
                if batch and padded_cost > self.limits.max_tokens:
                    return batch
                longest = longest_if_taken
                batch.append(queue.popleft().item)
        return batch


def _group_by_length(queue: deque[_Entry[T]], room: int, window: int) -> None:
    """Move `room` similar-length entries, always including the oldest, to the front.

    Among the first `room x window` entries sorted by tokens, take the run of `room`
    that holds the oldest and has the shortest longest entry: least padding. Every
    request becomes the oldest in time, so none waits forever.
    """
    candidates = [queue.popleft() for _ in range(min(len(queue), room * window))]
    oldest = candidates[0]
    by_length = sorted(candidates, key=lambda entry: entry.tokens)
    position = next(i for i, entry in enumerate(by_length) if entry is oldest)
    start = max(0, position - room + 1)
    chosen = by_length[start : start + room]
    chosen_ids = {id(entry) for entry in chosen}
    rest = [entry for entry in candidates if id(entry) not in chosen_ids]
    queue.extendleft(reversed(chosen + rest))
