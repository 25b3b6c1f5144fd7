"""The search stage's guard with attached ids: whatever a store returns, a request gets
its owner's rows and, for a type with an attached field, rows attached by its own ids."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import structlog

from schemas.messages import RetrievalRequest
from worker.access.profiles import load_profile
from worker.search import search_and_rank
from worker.store.base import Candidate, GroupResult, Memory, SearchGroup

NOW = 1_700_000_000.0


def row(id_: str, owner: str, attached: str | None) -> Candidate:
    memory = Memory(id=id_, memory_id=owner, memory_type="knowledge_base", content=id_,
                    timestamp=NOW)  # fmt: skip
    return Candidate(memory, 0.5, vector_rank=1, attached=attached)


# What a faulty store returns for every group: some rows a request may have, some not.
RETURNED = [
    row("own", "agent-1", None),
    row("own-in-another-kb", "agent-1", "kb-9"),  # the owner's: whatever its kb
    row("chunk", "", "kb-1"),  # an attached chunk (no memory_id)
    row("other-agent-in-kb-1", "agent-2", "kb-1"),  # memorizz's $in selects it too
    row("chunk-not-attached", "", "kb-9"),
    row("named-like-the-kb", "kb-1", None),  # an owner value equal to an attached id
    row("other-agent", "agent-2", None),
]


class EverythingStore:
    """Answers every query of every group with RETURNED, and records the groups."""

    def __init__(self) -> None:
        self.groups: list[SearchGroup] = []

    async def search(self, groups: Sequence[SearchGroup]) -> list[GroupResult]:
        self.groups.extend(groups)
        return [[list(RETURNED) for _ in group.ks] for group in groups]


async def test_an_attached_row_is_admitted_only_by_the_request_s_ids_in_its_type() -> None:
    profile = load_profile("memorizz")
    requests = [
        RetrievalRequest(request_id="a", query="q", memory_id="agent-1",
                         limits={"knowledge_base": 10, "conversation_memory": 10},
                         knowledge_base_ids=["kb-1"]),
        RetrievalRequest(request_id="b", query="q", memory_id="agent-1",
                         limits={"long_term_memory": 10}),
    ]  # fmt: skip
    store = EverythingStore()
    with structlog.testing.capture_logs() as logs:
        results = await search_and_rank(
            store, requests, np.ones((2, 4), np.float32), candidate_factor=1, now=NOW,
            search="vector", profile=profile,
        )  # fmt: skip
    ids = {name: {hit.id for hit in hits} for name, hits in results[0].items()}
    assert ids == {
        "knowledge_base": {"own", "own-in-another-kb", "chunk", "other-agent-in-kb-1"},
        "conversation_memory": {"own", "own-in-another-kb"},  # nothing attached here
    }
    assert {hit.id for hit in results[1]["long_term_memory"]} == {"own", "own-in-another-kb"}
    assert sum(entry["event"] == "store returned foreign memories" for entry in logs) == 3
    attached = {(g.collection, g.attached_field, g.attached_ids) for g in store.groups}
    assert attached == {
        ("knowledge_base", "knowledge_base_id", ("kb-1",)),
        ("conversation_memory", None, ()),
        ("knowledge_base", None, ()),
    }
