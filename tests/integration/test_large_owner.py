"""One owner with 50,000 memories, served by a worker: exact search equals a numpy oracle,
approximate search (HNSW) keeps recall@10 >= 0.95 with exact cosines, and the rows the
worker serves are the owner's alone.

The rows are clustered around the questions' own embeddings (and around topics no
question asks about), as an agent's memories cluster around what it is asked: uniform
random vectors have no neighbourhoods for any index to find (the scale benchmark
measures that case).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from producer.client import RetrievalClient
from schemas.messages import RankWeights, RetrievalResponse
from tests.conftest import DEMO_MEMORIES
from tests.integration.conftest import running_worker
from worker.embedding.embedder import Embedder
from worker.settings import WorkerSettings
from worker.store import SQLiteStore
from worker.store.base import Memory
from worker.store.vector_files import VectorFile, read_build, vectors_root

ROWS = 50_000
OWNER, OTHER = "agent:big", "agent:small"
TYPE = "long_term_memory"
BY_RELEVANCE = RankWeights(recency=0.0, importance=0.0)  # ranked by cosine, as the oracle
QUESTIONS = [
    "what did I cook for dinner last friday",
    "when is my dentist appointment",
    "which books did my sister recommend",
    "how far did I run on sunday",
    "what is the name of my manager",
    "where did we go on holiday in june",
    "what medication am I allergic to",
    "which team won the match we watched",
]


def near(rng: np.random.Generator, centres: np.ndarray, rows: int, noise: float) -> np.ndarray:
    picked = centres[rng.integers(0, len(centres), rows)]
    vectors = picked + rng.standard_normal(picked.shape).astype(np.float32) * noise
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
async def large_store(
    tmp_path_factory: pytest.TempPathFactory, embedder: Embedder
) -> tuple[Path, np.ndarray, np.ndarray]:
    """(store path, the big owner's matrix, the questions' vectors), written as ingest
    writes (then its vector files built)."""
    rng = np.random.default_rng(26)
    asked = np.asarray(await embedder.embed(QUESTIONS), dtype=np.float32)
    topics = rng.standard_normal((200, asked.shape[1])).astype(np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    matrix = near(rng, np.vstack([asked, topics]), ROWS, noise=0.05)
    path = tmp_path_factory.mktemp("large") / "store.db"
    writer = SQLiteStore(path, writable=True)  # default threshold: 50,000 rows
    for start in range(0, ROWS, 10_000):
        chunk = range(start, min(ROWS, start + 10_000))
        await writer.upsert([memory(OWNER, i) for i in chunk], matrix[chunk.start : chunk.stop])
    # another owner whose rows are the questions themselves: nearer than any of the big one's
    await writer.upsert([memory(OTHER, i) for i in range(len(asked))], asked)
    await writer.ensure_indexes()
    await writer.close()
    return path, matrix, asked


def memory(owner: str, i: int) -> Memory:
    return Memory(id=f"{owner}-{i}", memory_id=owner, memory_type=TYPE,
                  content=f"memory {i}", timestamp=1.7e9 + i)  # fmt: skip


def hits(reply: RetrievalResponse) -> list[tuple[str, float]]:
    assert reply.status == "ok", reply.error
    return [(hit.id, hit.score) for hit in reply.results[TYPE]]


@pytest.mark.parametrize("search", ["exact", "auto"])
async def test_a_large_owner_through_the_worker(
    settings: WorkerSettings,
    embedder: Embedder,
    large_store: tuple[Path, np.ndarray, np.ndarray],
    search: str,
) -> None:
    path, matrix, asked = large_store
    store = SQLiteStore(path, dimensions=matrix.shape[1], search=search)  # type: ignore[arg-type]
    recalls = []
    async with running_worker(settings, embedder, store), RetrievalClient(settings) as client:
        for question, vector in zip(QUESTIONS, asked, strict=True):
            reply = await client.retrieve(
                question, OWNER, {TYPE: 10}, weights=BY_RELEVANCE, search="vector", timeout=30
            )
            got = hits(reply)
            cosines = matrix @ vector
            truth = [f"{OWNER}-{i}" for i in np.lexsort((np.arange(ROWS), -cosines))[:10]]
            assert all(i.startswith(f"{OWNER}-") for i, _ in got), "another owner's row"
            for memory_id, score in got:  # exact cosines, whichever path found them
                assert score == pytest.approx(
                    float(cosines[int(memory_id.split("-")[-1])]), abs=1e-4
                )
            if search == "exact":
                assert [i for i, _ in got] == truth
            recalls.append(len({i for i, _ in got} & set(truth)) / 10)
    assert np.mean(recalls) >= (1.0 if search == "exact" else 0.95)
    taken = store.search_paths()
    assert taken == {"vector_file" if search == "exact" else "approximate": len(QUESTIONS)}


RECALLQ = str(Path(sys.executable).parent / "recallq")


def recallq_worker(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RECALLQ, "worker", *args], env={**os.environ, **env}, check=True,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def builds(store: Path) -> dict[str, list[str]]:
    """Each group directory's builds (rowid names) under the store's vector directory."""
    root = vectors_root(store)
    return {group.name: sorted(b.name for b in group.iterdir()) for group in root.iterdir()}


async def test_ingest_builds_vector_files_and_init_rebuilds_a_damaged_one(
    tmp_path: Path,
) -> None:
    """The commands as an operator runs them: `ingest` writes the vector file of every
    group over the threshold, `init` leaves intact ones alone and rebuilds one whose
    index was altered on disk."""
    store = tmp_path / "store.db"
    env = {"RECALLQ_STORE_URL": f"sqlite:///{store}", "RECALLQ_SQLITE_INDEX_MIN_ROWS": "50"}
    recallq_worker("ingest", str(DEMO_MEMORIES), env=env)
    first = builds(store)
    assert len(first) == 3 and all(len(b) == 1 for b in first.values())  # 50-turn groups
    recallq_worker("init", env=env)
    assert builds(store) == first  # intact: nothing rebuilt
    group, [build] = next(iter(first.items()))
    index = vectors_root(store) / group / build / "hnsw.usearch"
    data = bytearray(index.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    index.write_bytes(bytes(data))
    result = recallq_worker("init", env=env)
    assert "vector file damaged: rebuilding it" in result.stdout + result.stderr
    rebuilt = vectors_root(store) / group / build
    info = read_build(rebuilt)
    assert VectorFile.open(rebuilt, info).info.rows == 50  # checksums match again
