"""Grouping a batch by (memory type, memory_id), so each group is one matrix multiply."""

from __future__ import annotations

import numpy as np

from schemas.messages import MemoryType, RetrievalRequest
from worker.search import build_groups


def request(rid: str, memory_id: str, limits: dict[str, int]) -> RetrievalRequest:
    return RetrievalRequest(request_id=rid, query=rid, memory_id=memory_id, limits=limits)


def test_requests_sharing_a_tenant_and_type_share_one_group() -> None:
    requests = [
        request("r0", "alice", {"long_term_memory": 2, "conversation_memory": 1}),
        request("r1", "bob", {"long_term_memory": 3}),
        request("r2", "alice", {"long_term_memory": 5}),
    ]
    vectors = np.arange(3 * 4, dtype=np.float32).reshape(3, 4)
    groups, slots = build_groups(requests, vectors, candidate_factor=4)
    by_key = {(g.collection, g.owner): (g, s) for g, s in zip(groups, slots, strict=True)}
    assert set(by_key) == {
        (MemoryType.LONG_TERM, "alice"),
        (MemoryType.CONVERSATION, "alice"),
        (MemoryType.LONG_TERM, "bob"),
    }
    group, members = by_key[(MemoryType.LONG_TERM, "alice")]
    assert members == [(0, MemoryType.LONG_TERM), (2, MemoryType.LONG_TERM)]
    assert group.ks == (8, 20)
    assert np.array_equal(group.vectors, vectors[[0, 2]])
