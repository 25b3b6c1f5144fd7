"""`python -m benchmarks quality`: what recallq returns, measured on LoCoMo.

Every conversation of the development split is ingested as one owner (its turns
as conversation_memory), a worker serves them over RabbitMQ, and every question
is asked over RPC for the top 50 turns, once per search setting. R@k is the
paper's (Table 3): the share of a question's evidence turns in the top k. Also:
int8 against fp32 on this real text, and what each search mode costs in worker
throughput on the throughput benchmark's workload (in-process pipeline, batches
of 64, the broker left out: it is the same for every mode).
"""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks import locomo
from benchmarks.common import RESULTS, delete_queues, running_worker, write_results
from benchmarks.data import Workload, build_store
from producer.client import Query, RetrievalClient
from schemas.messages import Fusion, RetrievalRequest, SearchMode
from worker.admin.ingest import ingest_file
from worker.embedding.embedder import Embedder
from worker.pipeline import Dependencies, process
from worker.settings import WorkerSettings
from worker.store import SQLiteStore

KS = (5, 10, 25, 50)
PAPER = {"DRAGON (paper, all 10 conversations)": {"R@5": 56.7, "R@10": 66.2, "R@25": 76.7,
                                                  "R@50": 82.7}}  # fmt: skip


@dataclass(frozen=True)
class Setting:
    name: str
    search: SearchMode
    fusion: Fusion | None = None


SETTINGS = (
    Setting("vector", "vector"),
    Setting("lexical", "lexical"),
    Setting("hybrid (default: score fusion, lexical 0.6)", "hybrid"),
    Setting("hybrid, score fusion, lexical 0.5", "hybrid", Fusion(lexical_weight=0.5)),
    Setting("hybrid, score fusion, lexical 0.3", "hybrid", Fusion(lexical_weight=0.3)),
    Setting("hybrid, score fusion, lexical 0.8", "hybrid", Fusion(lexical_weight=0.8)),
    Setting("hybrid, rank fusion, k 60", "hybrid", Fusion(method="rank")),
    Setting("hybrid, rank fusion, k 10", "hybrid", Fusion(method="rank", rank_constant=10)),
)


async def seeded_store(
    conversations: Sequence[locomo.Conversation], embedder: Embedder, directory: Path
) -> Path:
    """Every conversation's turns, ingested as `recallq worker ingest` does."""
    source = directory / "locomo.jsonl"
    with source.open("w", encoding="utf-8") as lines:
        for conversation in conversations:
            for record in locomo.memory_records(conversation, conversation.sample_id):
                # ids are unique per memory type in a store; dia_ids only per conversation
                record["id"] = f"{conversation.sample_id}/{record['id']}"
                lines.write(json.dumps(record) + "\n")
    path = directory / "locomo.db"
    writer = SQLiteStore(path, writable=True)
    report = await ingest_file(source, writer, embedder, progress=False)
    await writer.close()
    if report.bad_lines:
        raise RuntimeError(f"ingest refused LoCoMo lines: {report.bad_lines[:3]}")
    return path


async def recall(
    conversations: Sequence[locomo.Conversation],
    embedder: Embedder,
    settings_list: Sequence[Setting],
    *,
    questions_per_conversation: int | None = None,
) -> dict[str, dict[str, Any]]:
    """R@k overall and per category for each setting, through a worker over RPC."""
    with tempfile.TemporaryDirectory() as scratch:
        db = await seeded_store(conversations, embedder, Path(scratch))
        settings = WorkerSettings(queue_prefix=f"recallq-quality-{uuid.uuid4().hex[:8]}",
                                  metrics_port=-1)  # fmt: skip
        store = SQLiteStore(db)
        asked = [
            (conversation.sample_id, question)
            for conversation in conversations
            for question in conversation.questions[:questions_per_conversation]
        ]
        results = {}
        async with (
            running_worker(settings, embedder, store),
            RetrievalClient(settings, timeout=120) as client,
        ):
            for setting in settings_list:
                queries = [
                    Query(q.question, owner, {locomo.MEMORY_TYPE: 50},
                          search=setting.search, fusion=setting.fusion)
                    for owner, q in asked
                ]  # fmt: skip
                started = time.perf_counter()
                replies = await client.retrieve_many(queries, concurrency=32, timeout=120)
                seconds = time.perf_counter() - started
                ranked = [
                    [hit.id.split("/", 1)[1] for hit in r.results.get(locomo.MEMORY_TYPE, [])]
                    for r in replies
                ]
                failed = [r.request_id for r in replies if r.status != "ok"]
                if failed:
                    raise RuntimeError(f"{setting.name}: {len(failed)} requests failed")
                results[setting.name] = {
                    **scores([q for _, q in asked], ranked),
                    "requests": len(queries),
                    "seconds": round(seconds, 2),
                }
        await store.close()
        await delete_queues(settings)
    return results


def scores(questions: Sequence[locomo.Question], ranked: Sequence[Sequence[str]]) -> dict[str, Any]:
    """R@k in percent, overall and per category."""

    def at(pairs: list[tuple[locomo.Question, Sequence[str]]]) -> dict[str, float]:
        return {
            f"R@{k}": round(100 * sum(locomo.recall_at(r, q.evidence, k) for q, r in pairs)
                            / max(len(pairs), 1), 1)
            for k in KS
        }  # fmt: skip

    pairs = list(zip(questions, ranked, strict=True))
    per_category = {
        name: at([(q, r) for q, r in pairs if q.category == number])
        for number, name in locomo.CATEGORIES.items()
    }
    return {"overall": at(pairs), "per_category": per_category}


async def throughput(
    modes: Sequence[SearchMode], embedder: Embedder, requests: int = 2048
) -> dict[str, Any]:
    """Requests/s of the pipeline (embed, search, rank) per search mode, in batches of 64 on
    the throughput benchmark's store (60,000 memories, 100 owners), in the steady state
    (every group loaded by a first pass); the query cache off, so every batch embeds."""
    workload = Workload()
    db = await build_store(workload, RESULTS.parent.parent / ".bench-cache")
    store = SQLiteStore(db)
    measured: dict[str, Any] = {}
    # Queries in the memories' own words ("memory 17 ... tenant 42"), so the lexical side
    # matches and scores, as it does on real text (the workload's own query words do not
    # occur in its memories: lexical search would cost nothing there).
    rng = random.Random(workload.seed)
    pairs = []
    for _ in range(requests):
        tenant = rng.randrange(workload.tenants)
        text = f"what was memory {rng.randrange(workload.per_type)} for tenant {tenant}?"
        pairs.append((text, workload.tenant(tenant)))
    for mode in modes:
        deps = Dependencies(embed=embedder.embed, store=store)
        batches = [pairs[i : i + 64] for i in range(0, len(pairs), 64)]
        for batch in batches:  # a first pass loads every group (and its lexical index)
            await process([_queued(q, m, mode) for q, m in batch], deps)
        started = time.perf_counter()  # the second, timed, is the steady state
        for batch in batches:
            await process([_queued(q, m, mode) for q, m in batch], deps)
        seconds = time.perf_counter() - started
        measured[mode] = {"requests_per_s": round(requests / seconds, 1)}
    await store.close()
    base = measured[modes[0]]["requests_per_s"]
    for mode in modes:
        measured[mode]["relative_to_vector"] = round(measured[mode]["requests_per_s"] / base, 3)
    return measured


@dataclass(frozen=True)
class _Queued:
    request: RetrievalRequest
    received: float


def _queued(query: str, memory_id: str, mode: SearchMode) -> _Queued:
    request = RetrievalRequest(
        request_id=uuid.uuid4().hex, query=query, memory_id=memory_id,
        limits={"conversation_memory": 5, "long_term_memory": 5}, search=mode,
    )  # fmt: skip
    return _Queued(request, time.monotonic())


async def run(data: Path, quick: bool) -> dict[str, Any]:
    conversations = locomo.load(data)
    spec = WorkerSettings().encoder_spec()
    embedder = Embedder.load(spec, cache_size=0)
    per = 20 if quick else None
    settings_list = SETTINGS[:3] if quick else SETTINGS
    results: dict[str, Any] = {
        "data": str(data),
        "questions": sum(len(c.questions[:per]) for c in conversations),
        "turns": sum(len(c.turns) for c in conversations),
        "model": embedder.description,
        "paper": PAPER,
        "settings": await recall(
            conversations, embedder, settings_list, questions_per_conversation=per
        ),
    }
    embedder.close()
    if not quick:
        int8 = Embedder.load(replace(spec, backend="onnx", quantize="int8"), cache_size=0)
        results["int8"] = await recall(conversations, int8, SETTINGS[:3:2])
        results["int8_model"] = int8.description
        int8.close()
        fp32 = Embedder.load(spec, cache_size=0)
        results["throughput"] = await throughput(["vector", "lexical", "hybrid"], fp32)
        fp32.close()
    return results


def main(data: Path | None = None, quick: bool = False) -> int:
    path = locomo.data_path(data) if data else locomo.data_path()
    if path is None:
        print(f"quality: no LoCoMo data at {data or locomo.DATA}; give its path with --data")
        return 0
    results = asyncio.run(run(path, quick))
    written = write_results("quality-quick" if quick else "quality", results)
    plot(results, written.with_suffix(".png"))
    for name, measured in results["settings"].items():
        print(f"{name:45s} {measured['overall']}")
    print(f"wrote {written}")
    return 0


def plot(results: dict[str, Any], path: Path) -> None:
    """R@k of every setting (and the paper's retriever) as grouped bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {**{n: m["overall"] for n, m in results["settings"].items()}, **results["paper"]}
    figure, axes = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(rows)
    for i, (name, at) in enumerate(rows.items()):
        xs = [k + (i - len(rows) / 2) * width for k in range(len(KS))]
        axes.bar(xs, [at[f"R@{k}"] for k in KS], width, label=name)
    axes.set_xticks(range(len(KS)), [f"R@{k}" for k in KS])
    axes.set_ylabel("evidence turns found, %")
    axes.set_ylim(0, 100)
    axes.set_title(f"LoCoMo development split, {results['questions']} questions, through a worker")
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
