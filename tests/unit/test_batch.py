"""Dispatch rules of the micro-batcher: greedy, capped, interactive first."""

from __future__ import annotations

import asyncio

from worker.batch import Batcher, BatchLimits
from worker.delivery import QueueLane


async def test_a_lone_request_is_dispatched_at_once() -> None:
    batcher: Batcher[str] = Batcher(BatchLimits(max_requests=64))
    batcher.put("only", QueueLane.INTERACTIVE)
    assert await asyncio.wait_for(batcher.next_batch(), timeout=1) == ["only"]


async def test_an_idle_dispatcher_wakes_on_the_first_request() -> None:
    batcher: Batcher[str] = Batcher(BatchLimits(max_requests=64))
    waiting = asyncio.create_task(batcher.next_batch())
    await asyncio.sleep(0)  # let it block on the empty batcher
    assert not waiting.done()
    batcher.put("first", QueueLane.BULK)
    assert await asyncio.wait_for(waiting, timeout=1) == ["first"]


async def test_the_request_cap_splits_a_backlog_in_arrival_order() -> None:
    batcher: Batcher[int] = Batcher(BatchLimits(max_requests=4))
    for i in range(10):
        batcher.put(i, QueueLane.INTERACTIVE)
    batches = [await batcher.next_batch() for _ in range(3)]
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


async def test_the_token_cap_counts_padded_cost() -> None:
    batcher: Batcher[str] = Batcher(BatchLimits(max_requests=100, max_tokens=100))
    for name, tokens in [("a", 10), ("b", 10), ("c", 40), ("d", 10)]:
        batcher.put(name, QueueLane.INTERACTIVE, tokens=tokens)
    # a+b cost 2 x 10; adding c costs 3 x 40 = 120 > 100, so c starts the next batch.
    assert await batcher.next_batch() == ["a", "b"]
    assert await batcher.next_batch() == ["c", "d"]  # 2 x 40 = 80


async def test_one_oversized_request_still_goes_alone() -> None:
    batcher: Batcher[str] = Batcher(BatchLimits(max_requests=8, max_tokens=16))
    batcher.put("huge", QueueLane.INTERACTIVE, tokens=500)
    batcher.put("small", QueueLane.INTERACTIVE, tokens=4)
    assert await batcher.next_batch() == ["huge"]
    assert await batcher.next_batch() == ["small"]


async def test_interactive_fills_first_and_bulk_tops_up() -> None:
    batcher: Batcher[str] = Batcher(BatchLimits(max_requests=4))
    for i in range(5):
        batcher.put(f"bulk{i}", QueueLane.BULK)
    batcher.put("rpc0", QueueLane.INTERACTIVE)
    batcher.put("rpc1", QueueLane.INTERACTIVE)
    assert await batcher.next_batch() == ["rpc0", "rpc1", "bulk0", "bulk1"]
    assert await batcher.next_batch() == ["bulk2", "bulk3", "bulk4"]


async def test_a_batch_with_interactive_requests_takes_only_a_few_bulk_ones() -> None:
    batcher: Batcher[str] = Batcher(BatchLimits(max_requests=10, bulk_top_up=2))
    for i in range(20):
        batcher.put(f"bulk{i}", QueueLane.BULK)
    batcher.put("rpc", QueueLane.INTERACTIVE)
    assert await batcher.next_batch() == ["rpc", "bulk0", "bulk1"]
    assert len(await batcher.next_batch()) == 10  # bulk alone: full size


async def test_max_wait_holds_a_batch_until_it_fills() -> None:
    batcher: Batcher[int] = Batcher(BatchLimits(max_requests=3, max_wait_s=30))
    batcher.put(0, QueueLane.INTERACTIVE)
    pending = asyncio.create_task(batcher.next_batch())
    await asyncio.sleep(0)
    assert not pending.done()  # greedy would have sent [0] already
    batcher.put(1, QueueLane.INTERACTIVE)
    await asyncio.sleep(0)
    assert not pending.done()
    batcher.put(2, QueueLane.BULK)
    assert await asyncio.wait_for(pending, timeout=1) == [0, 1, 2]


async def test_max_wait_gives_up_at_its_deadline() -> None:
    clock = [100.0]
    batcher: Batcher[int] = Batcher(BatchLimits(max_requests=3, max_wait_s=0.05), lambda: clock[0])
    batcher.put(0, QueueLane.INTERACTIVE)
    clock[0] += 1.0  # the oldest request has already waited past max_wait
    assert await asyncio.wait_for(batcher.next_batch(), timeout=1) == [0]


async def test_close_wakes_the_dispatcher_and_drain_returns_leftovers() -> None:
    batcher: Batcher[str] = Batcher()
    waiting = asyncio.create_task(batcher.next_batch())
    await asyncio.sleep(0)
    batcher.close()
    assert await asyncio.wait_for(waiting, timeout=1) == []
    batcher.put("late-bulk", QueueLane.BULK)
    batcher.put("late-rpc", QueueLane.INTERACTIVE)
    assert await batcher.next_batch() == []
    assert batcher.drain() == ["late-rpc", "late-bulk"]
    assert len(batcher) == 0


async def test_under_backlog_batches_group_similar_lengths_and_keep_the_oldest() -> None:
    batcher: Batcher[str] = Batcher(BatchLimits(max_requests=2, sort_window=4))
    for name, tokens in [("a", 50), ("b", 5), ("c", 40), ("d", 6), ("e", 45), ("f", 7)]:
        batcher.put(name, QueueLane.INTERACTIVE, tokens=tokens)
    first = await batcher.next_batch()
    assert "a" in first and sorted(first) == ["a", "e"]  # the oldest, with its nearest length
    assert sorted(await batcher.next_batch()) == ["b", "d"]
    assert sorted(await batcher.next_batch()) == ["c", "f"]


async def test_length_grouping_cuts_padded_cost_against_arrival_order() -> None:
    lengths = [8, 120, 9, 110, 10, 130, 7, 100] * 4

    async def padded_cost(window: int) -> int:
        batcher: Batcher[int] = Batcher(BatchLimits(max_requests=4, sort_window=window))
        for tokens in lengths:
            batcher.put(tokens, QueueLane.BULK, tokens=tokens)
        cost = 0
        while batch := (await batcher.next_batch() if len(batcher) else []):
            cost += max(batch) * len(batch)
        return cost

    fifo, grouped = await padded_cost(1), await padded_cost(4)
    assert grouped < fifo * 0.7


async def test_without_backlog_arrival_order_is_kept() -> None:
    batcher: Batcher[str] = Batcher(BatchLimits(max_requests=4, sort_window=4))
    for name, tokens in [("a", 90), ("b", 1), ("c", 50)]:
        batcher.put(name, QueueLane.INTERACTIVE, tokens=tokens)
    assert await batcher.next_batch() == ["a", "b", "c"]
