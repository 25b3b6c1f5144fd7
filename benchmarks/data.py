"""The benchmark workload: many tenants' memories and unique queries, generated.

Memory embeddings are random unit vectors rather than model outputs: what a
search costs depends on how many vectors it scores, not on their values, and
embedding 60,000 memories would take minutes of CPU before every run. Queries
are real texts, embedded by the system under test.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from schemas.messages import MemoryType
from worker.store import Memory, SQLiteStore
from worker.store.sqlite_file import SCHEMA_VERSION

TYPES = (MemoryType.CONVERSATION, MemoryType.LONG_TERM, MemoryType.PROCEDURAL)
DIMENSIONS = 384
WORDS = (
    "flight hotel budget deploy migration index knee run lentil recipe invoice refund meeting "
    "deadline password vacation passport train museum allergy coffee release hotfix database "
    "queue worker latency cache dashboard contract tenant lease garden bicycle concert ticket "
    "insurance doctor dentist school homework birthday gift payment subscription laptop phone"
).split()
OPENERS = (
    "what did we decide about",
    "remind me of my preferences for",
    "how do I handle",
    "what happened last time with",
    "summarise everything about",
    "which steps should I follow for",
)


@dataclass(frozen=True)
class Workload:
    tenants: int = 100
    per_type: int = 200
    seed: int = 7

    @property
    def name(self) -> str:
        return f"t{self.tenants}-m{self.per_type}-s{self.seed}"

    def tenant(self, index: int) -> str:
        return f"bench:tenant-{index:04d}"

    def queries(self, count: int, *, salt: str = "") -> list[tuple[str, str]]:
        """`count` unique (query, memory_id) pairs."""
        rng = random.Random(f"{self.seed}-{salt}")
        pairs = []
        for i in range(count):
            words = " ".join(rng.sample(WORDS, 3))
            text = f"{rng.choice(OPENERS)} {words} ({salt}{i})"
            pairs.append((text, self.tenant(rng.randrange(self.tenants))))
        return pairs


async def build_store(workload: Workload, directory: Path) -> Path:
    """The SQLite file of the workload, built once and reused (it takes seconds)."""
    path = directory / f"bench-{workload.name}.schema{SCHEMA_VERSION}.db"  # older: unmarked
    if path.exists():
        return path
    partial = path.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    rng = np.random.default_rng(workload.seed)
    store = SQLiteStore(partial, writable=True)
    for tenant in range(workload.tenants):
        memories = [
            Memory(
                id=f"{tenant}-{memory_type.value}-{i}",
                memory_id=workload.tenant(tenant),
                memory_type=memory_type,
                content=f"memory {i} of {memory_type.value} for tenant {tenant}",
                timestamp=1_790_000_000.0 + float(rng.uniform(0, 5_000_000)),
                role="user" if i % 2 else "assistant",
                importance=float(rng.uniform(0, 1)),
            )
            for memory_type in TYPES
            for i in range(workload.per_type)
        ]
        vectors = rng.standard_normal((len(memories), DIMENSIONS)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        await store.upsert(memories, vectors)
    await store.close()  # its write-ahead log emptied: the file can be renamed
    partial.rename(path)
    return path


if __name__ == "__main__":
    import time

    started = time.perf_counter()
    built = asyncio.run(build_store(Workload(), Path(".bench-cache").resolve()))
    print(built, f"{time.perf_counter() - started:.1f} s")
