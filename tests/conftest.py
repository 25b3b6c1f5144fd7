"""Fixtures every suite shares: the real model, the demo memories, a seeded SQLite
store and the brute-force oracle. None of them needs a service."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sentence_transformers import SentenceTransformer

from tests.oracle import Oracle
from worker.admin.ingest import ingest_file
from worker.embedding.embedder import Embedder, EncoderSpec, bundled_model_path
from worker.store import SQLiteStore

ROOT = Path(__file__).resolve().parents[1]
DEMO_MEMORIES = ROOT / "data" / "demo" / "memories.jsonl"
DEMO_QUESTIONS = ROOT / "data" / "demo" / "questions.json"


@pytest.fixture(scope="session")
def embedder() -> Iterator[Embedder]:
    embedder = Embedder.load(EncoderSpec(device="cpu"))  # auto: ONNX Runtime, as deployed
    yield embedder
    embedder.close()


@pytest.fixture(scope="session")
def demo_records() -> list[dict[str, Any]]:
    return [json.loads(line) for line in DEMO_MEMORIES.read_text().splitlines() if line]


@pytest.fixture(scope="session")
def demo_questions() -> list[dict[str, str]]:
    questions: list[dict[str, str]] = json.loads(DEMO_QUESTIONS.read_text())
    return questions


@pytest.fixture(scope="session")
async def demo_store(
    tmp_path_factory: pytest.TempPathFactory, embedder: Embedder
) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path_factory.mktemp("store") / "demo.db", writable=True)
    report = await ingest_file(DEMO_MEMORIES, store, embedder, progress=False)
    assert report.stored == 270 and not report.bad_lines
    yield store
    await store.close()


@pytest.fixture(scope="session")
def oracle(demo_records: list[dict[str, Any]]) -> Oracle:
    return Oracle(demo_records, SentenceTransformer(bundled_model_path(), device="cpu"))
