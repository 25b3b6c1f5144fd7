"""`python -m benchmarks scale`: one owner's search at 1k, 10k, 100k and 1M memories,
exact and approximate, against a brute-force numpy oracle.

Issue 26's question is whether the embedded store still answers fast, and right, when
one owner (an agent's knowledge base, a long user history) holds a million memories.
Per size the store is written in chunks (the worker's own `SQLiteStore.upsert`), its
vector files built (`ensure_indexes`, timed: the build time) and measured on disk;
then a serving store per mode (`exact`: every row scored; `auto`: HNSW candidates
re-scored exactly) answers 200 queries one at a time (p50/p99 of `store.search`) and
batches of 32 (queries/s). Recall@10 is measured against numpy (`X @ q`, independent
of the store), and the returned cosines against the oracle's for the same rows. The
store's own path counter (`search_paths`) records which path ran. Below
`index_min_rows` a group is served from the in-memory cache: exact and auto are the
same search there. The embedder is not measured: a query vector is given.

Data, 384-d unit vectors, seeded:
- `clustered` (default), a declared model of sentence embeddings: max(n/1000, 50)
  topic centres; each memory a centre plus N(0, 0.06^2) per dimension; each query a
  memory plus the same noise. Its nearest row is clear; the next nine sit among the
  topic's ~1000 rows at similar cosines, which is what makes recall@10 non-trivial.
- `uniform`: N(0, I) normalised, no neighbourhoods at all: the worst case for any
  ANN index, reported, not hidden (the store measures its index's recall at build
  and scores exactly where it is below 0.95).

The benchmark process holds the data and the oracle, so its RSS is not a worker's: at
the largest size a separate process opens the serving store, runs 200 searches and
reports its VmRSS, RssAnon and RssFile (before opening and after searching; without
the embedder, whose model a worker also holds). RssFile is the mapped vector, index and
lexical files' pages: shared between the workers of a host and the kernel's to evict;
with the files in the page cache (just built) the kernel maps the cached pages around
each fault too, so it reads high. RssAnon is the process's own; the lexical index's
vocabulary is most of it here, each row's number being a word of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from schemas.logs import configure_logging
from schemas.messages import MemoryType
from worker.store.base import Candidate, Memory, SearchGroup
from worker.store.sqlite import DEFAULT_INDEX_MIN_ROWS, SQLiteStore

Data = Literal["clustered", "uniform"]
Mode = Literal["exact", "auto"]
Matrix = npt.NDArray[np.float32]

ROOT = Path(__file__).resolve().parent.parent
SIZES = (1_000, 10_000, 100_000, 1_000_000)
MODES: tuple[Mode, ...] = ("exact", "auto")
DIMENSIONS = 384
NOISE = 0.06
ROWS_PER_TOPIC, MIN_TOPICS = 1000, 50
QUERIES, WARMUP = 200, 20
K = 10
BATCH = 32
THROUGHPUT_S, MIN_BATCHES = 2.0, 3  # batches of 32 are searched for at least this long
CHUNK = 5_000  # rows a write (Memory objects are built a chunk at a time)
OWNER = "agent-scale"
TYPE = MemoryType.CONVERSATION.value
EPOCH = 1_790_000_000.0
SEED = 26
# Issue 26's done-when, for the auto mode: size -> (p50 ms at most, recall@10 at least).
TARGETS = {1_000_000: (20.0, 0.95), 100_000: (5.0, 0.0)}
CHILD = "import sys; from benchmarks.scale import child; child(sys.argv[1:])"


@dataclass(frozen=True)
class Dataset:
    """The rows, the timed queries, and queries to warm the store with first."""

    rows: Matrix
    topics: npt.NDArray[np.int64]  # each row's topic (-1: uniform data)
    queries: Matrix
    warmup: Matrix


@dataclass(frozen=True)
class Plan:
    """How a run measures: the data, the store's threshold, and what it may skip."""

    data: Data = "clustered"
    index_min_rows: int = DEFAULT_INDEX_MIN_ROWS
    throughput_s: float = THROUGHPUT_S
    rss: bool = True  # the serving process's RSS at the largest size
    workdir: Path | None = None  # where the stores are built (default: the temp dir)


def unit(matrix: Matrix) -> Matrix:
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix


def dataset(rows: int, data: Data, seed: int = SEED) -> Dataset:
    """Generated in chunks straight into one float32 matrix: 1M rows stay 1.5 GB."""
    rng = np.random.default_rng([seed, rows])
    matrix = np.empty((rows, DIMENSIONS), dtype=np.float32)
    topics = np.full(rows, -1, dtype=np.int64)
    topic_count = max(rows // ROWS_PER_TOPIC, MIN_TOPICS)
    centres = unit(rng.standard_normal((topic_count, DIMENSIONS), dtype=np.float32))
    if data == "clustered":
        topics = rng.integers(0, len(centres), rows)
    for start in range(0, rows, CHUNK):
        end = min(start + CHUNK, rows)
        noise = rng.standard_normal((end - start, DIMENSIONS), dtype=np.float32)
        matrix[start:end] = (
            noise if data == "uniform" else centres[topics[start:end]] + noise * NOISE
        )
        unit(matrix[start:end])
    near = matrix[rng.integers(0, rows, QUERIES + WARMUP)]
    if data == "uniform":
        queries = rng.standard_normal(near.shape, dtype=np.float32)
    else:
        queries = near + rng.standard_normal(near.shape, dtype=np.float32) * NOISE
    queries = unit(queries)
    return Dataset(matrix, topics, queries[:QUERIES], queries[QUERIES:])


def oracle(rows: Matrix, queries: Matrix, k: int = K) -> npt.NDArray[np.intp]:
    """Each query's k best rows by cosine, brute force (sorted best first)."""
    best = np.empty((len(queries), k), dtype=np.intp)
    for start in range(0, len(queries), 20):  # 20 queries x 1M rows: 80 MB of scores
        scores = rows @ queries[start : start + 20].T
        top = np.argpartition(-scores, k - 1, axis=0)[:k].T
        for offset, candidates in enumerate(top):
            order = np.argsort(-scores[candidates, offset], kind="stable")
            best[start + offset] = candidates[order]
    return best


def memories(start: int, count: int, topics: npt.NDArray[np.int64]) -> list[Memory]:
    """Rows start..start+count as memories: the id carries the row number."""
    return [
        Memory(id=f"m{row}", memory_id=OWNER, memory_type=TYPE, timestamp=EPOCH + row,
               content=f"memory {row} of topic {topics[row]}")
        for row in range(start, start + count)
    ]  # fmt: skip


def row_of(candidate: Candidate) -> int:
    return int(candidate.memory.id[1:])


async def fill(path: Path, data: Dataset, index_min_rows: int) -> dict[str, Any]:
    """Write the rows a chunk at a time, then build the vector files (timed apart)."""
    store = SQLiteStore(path, writable=True, dimensions=DIMENSIONS, index_min_rows=index_min_rows)
    rows = len(data.rows)
    started = time.perf_counter()
    with tqdm(total=rows, desc=f"upsert {rows:,}", unit="row", unit_scale=True) as bar:
        for start in range(0, rows, CHUNK):
            count = min(CHUNK, rows - start)
            await store.upsert(memories(start, count, data.topics),
                               data.rows[start : start + count])  # fmt: skip
            bar.update(count)
    upsert_s = time.perf_counter() - started
    started = time.perf_counter()
    await store.ensure_indexes()
    build_s = time.perf_counter() - started
    await store.close()
    return {"upsert_s": round(upsert_s, 2), "upsert_rows_per_s": round(rows / upsert_s),
            "build_s": round(build_s, 2), "indexed": rows >= index_min_rows > 0,
            **disk(path)}  # fmt: skip


def disk(path: Path) -> dict[str, Any]:
    """Bytes of the database file (its WAL emptied at close) and of the vector files."""
    root = path.with_name(path.name + "-vectors")
    files = [f for f in root.rglob("*") if f.is_file()] if root.exists() else []
    kinds: dict[str, int] = {}
    for file in files:
        name = file.relative_to(root).parts[2]  # <group>/<through>/<name>
        kinds[name] = kinds.get(name, 0) + file.stat().st_size
    database = sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())
    return {"db_bytes": database, "index_bytes": sum(kinds.values()), "index_files": kinds}


def one(vectors: Matrix) -> list[SearchGroup]:
    return [SearchGroup(collection=TYPE, owner=OWNER, vectors=vectors, ks=(K,) * len(vectors))]


async def latencies(
    store: SQLiteStore, queries: Matrix
) -> tuple[list[float], list[list[Candidate]]]:
    """Each query alone (a batch of one): ms per `store.search`, and what it returned."""
    times, found = [], []
    for query in queries:
        started = time.perf_counter()
        [[result]] = await store.search(one(query[None, :]))
        times.append((time.perf_counter() - started) * 1000)
        found.append(result)
    return times, found


async def throughput(store: SQLiteStore, queries: Matrix, seconds: float) -> float:
    """Queries/s in batches of 32 (one SearchGroup of 32 vectors), for `seconds`."""
    batches = [
        queries[start : start + BATCH] for start in range(0, len(queries) - BATCH + 1, BATCH)
    ]
    await store.search(one(batches[-1]))  # the batch path's first call, untimed
    done, started = 0, time.perf_counter()
    while done < MIN_BATCHES * BATCH or time.perf_counter() - started < seconds:
        await store.search(one(batches[(done // BATCH) % len(batches)]))
        done += BATCH
    return done / (time.perf_counter() - started)


def ms(samples: Sequence[float], percentile: float) -> float:
    return round(float(np.percentile(samples, percentile)), 3)


def checked(
    found: Sequence[Sequence[Candidate]], data: Dataset, truth: npt.NDArray[np.intp]
) -> dict[str, float]:
    """recall@10 against the oracle's rows, and the largest |store cosine - numpy cosine|
    over every returned row."""
    hits, worst = 0, 0.0
    for query, result, best in zip(data.queries, found, truth, strict=True):
        rows = [row_of(c) for c in result]
        hits += len(set(rows[:K]) & set(best.tolist()))
        scores = np.array([c.score for c in result], dtype=np.float64)
        worst = max(worst, float(np.max(np.abs(scores - data.rows[rows] @ query), initial=0.0)))
    return {"recall_at_10": round(hits / (K * len(found)), 4), "max_cosine_error": worst}


async def serve(
    path: Path, mode: Mode, data: Dataset, truth: npt.NDArray[np.intp], plan: Plan
) -> dict[str, Any]:
    """One serving store in `mode`: latency, throughput, recall and cosine error."""
    store = SQLiteStore(path, search=mode, dimensions=DIMENSIONS)
    started = time.perf_counter()
    await store.connect()  # maps and verifies (SHA-256) the vector files
    open_s = time.perf_counter() - started
    await latencies(store, data.warmup)
    times, found = await latencies(store, data.queries)
    qps = await throughput(store, data.queries, plan.throughput_s)
    paths = dict(store.search_paths())
    await store.close()
    return {"p50_ms": ms(times, 50), "p99_ms": ms(times, 99), "max_ms": round(max(times), 3),
            "qps_batch1": round(len(times) / (sum(times) / 1000), 1),
            "qps_batch32": round(qps, 1), **checked(found, data, truth), "paths": paths,
            "open_s": round(open_s, 2)}  # fmt: skip


async def measure_size(rows: int, plan: Plan, workdir: Path, rss: bool) -> dict[str, Any]:
    """One size: generate, write and build, oracle, then each mode (and the child RSS)."""
    started, load = time.perf_counter(), os.getloadavg()[0]
    generated = dataset(rows, plan.data)
    truth = oracle(generated.rows, generated.queries)
    path = workdir / f"scale-{rows}.db"
    result: dict[str, Any] = {"memories": rows, **await fill(path, generated, plan.index_min_rows)}
    result["modes"] = {mode: await serve(path, mode, generated, truth, plan) for mode in MODES}
    if rss:
        queries = workdir / "queries.npy"
        np.save(queries, generated.queries)
        result["worker_rss"] = {mode: serving_rss(path, mode, queries) for mode in MODES}
    result["wall_s"] = round(time.perf_counter() - started, 1)
    # Other work on the host skews the numbers: the 1-minute load at start and end says so.
    result["load_average_1m"] = [round(load, 2), round(os.getloadavg()[0], 2)]
    print(summary_lines(result), flush=True)
    return result


def serving_rss(path: Path, mode: Mode, queries: Path) -> dict[str, Any]:
    """The RSS of a separate process that opens the serving store and runs the queries."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), mode, str(queries)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"serving process failed ({done.returncode}): {done.stderr[-2000:]}")
    measured: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return measured


def rss_mib() -> dict[str, float]:
    """This process's VmRSS, RssAnon, RssFile, RssShmem and VmHWM, in MiB."""
    wanted = ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM")
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in wanted:
            found[name] = round(int(value.split()[0]) / 1024, 1)  # kB
    return found


def mapped_mib(marker: str) -> dict[str, float]:
    """Resident MiB of this process's mappings of files whose path holds `marker`, per
    file name (from /proc/self/smaps): which of the store's files RssFile is made of."""
    found: dict[str, float] = {}
    name = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if fields and not fields[0].endswith(":"):  # a mapping's header: address range first
            name = fields[5] if len(fields) > 5 and marker in fields[5] else None
        elif name is not None and fields[0] == "Rss:":
            file = Path(name).name
            found[file] = round(found.get(file, 0.0) + int(fields[1]) / 1024, 1)  # kB
    return found


def child(argv: Sequence[str]) -> None:
    """The serving process: RSS after imports, after opening, and after searching."""
    configure_logging("error")
    path, mode, queries = Path(argv[0]), argv[1], np.load(argv[2])
    before = rss_mib()

    async def searches() -> dict[str, Any]:
        store = SQLiteStore(path, search="exact" if mode == "exact" else "auto",
                            dimensions=DIMENSIONS)  # fmt: skip
        await store.connect()  # maps the files and loads the lexical vocabulary
        opened = rss_mib()
        for query in queries:
            await store.search(one(query[None, :]))
        measured = {"after_open": opened, "after_searches": rss_mib(),  # while it serves
                    "mapped_after_searches": mapped_mib(path.name + "-vectors"),
                    "paths": dict(store.search_paths())}  # fmt: skip
        await store.close()
        return measured

    measured = asyncio.run(searches())
    print(json.dumps({"after_imports": before, **measured,
                      "searches": len(queries)}))  # fmt: skip


def summary_lines(size: dict[str, Any]) -> str:
    """One size's modes as text lines, printed as each size finishes."""
    lines = []
    for mode, run in size["modes"].items():
        lines.append(
            f"{size['memories']:>9,} {mode:>5}: p50 {run['p50_ms']:8.3f} ms  p99 "
            f"{run['p99_ms']:8.3f} ms  {run['qps_batch32']:9.1f} q/s (x32)  recall@10 "
            f"{run['recall_at_10']:.3f}  cos err {run['max_cosine_error']:.1e}  {run['paths']}"
        )
    return "\n".join(lines)


def verdicts(sizes: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 26's done-when, checked on the auto mode of the sizes that were run."""
    found = []
    for size in sizes:
        if size["memories"] not in TARGETS:
            continue
        most_ms, least_recall = TARGETS[size["memories"]]
        auto = size["modes"]["auto"]
        met = auto["p50_ms"] <= most_ms and auto["recall_at_10"] >= least_recall
        found.append({"memories": size["memories"], "p50_ms_at_most": most_ms,
                      "recall_at_10_at_least": least_recall, "p50_ms": auto["p50_ms"],
                      "recall_at_10": auto["recall_at_10"], "met": met})  # fmt: skip
    return found


COLUMNS = ("memories", "mode", "p50 ms", "p99 ms", "q/s x1", "q/s x32", "recall@10",
           "cos err", "paths", "build s", "db MiB", "index MiB")  # fmt: skip


def markdown(results: dict[str, Any]) -> str:
    """The table the README quotes."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for size in results["sizes"]:
        for mode, run in size["modes"].items():
            paths = ", ".join(f"{name} {count}" for name, count in sorted(run["paths"].items()))
            cells = (f"{size['memories']:,}", mode, f"{run['p50_ms']:.2f}", f"{run['p99_ms']:.2f}",
                     f"{run['qps_batch1']:,.0f}", f"{run['qps_batch32']:,.0f}",
                     f"{run['recall_at_10']:.3f}", f"{run['max_cosine_error']:.0e}", paths,
                     f"{size['build_s']:.1f}", f"{size['db_bytes'] / 2**20:,.0f}",
                     f"{size['index_bytes'] / 2**20:,.0f}")  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> Path:
    """p50 and p99 against memories (log-log), one colour per mode; the targets marked."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=110)
    sizes = [size["memories"] for size in results["sizes"]]
    for mode, colour in (("exact", "tab:gray"), ("auto", "tab:blue")):
        runs = [size["modes"][mode] for size in results["sizes"]]
        axes.plot(sizes, [r["p99_ms"] for r in runs], "-o", color=colour, label=f"{mode} p99")
        axes.plot(sizes, [r["p50_ms"] for r in runs], "--", color=colour, label=f"{mode} p50")
    for rows, (most_ms, _) in TARGETS.items():
        axes.plot([rows], [most_ms], "v", color="tab:red", markersize=8)
    axes.plot([], [], "v", color="tab:red", label="target p50 (auto)")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("memories of one owner")
    axes.set_ylabel("store.search, one query (ms)")
    data = results["data"]
    axes.set_title(f"{data['kind']} {data['dimensions']}-d, {data['queries']} queries a mode")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def described(plan: Plan) -> dict[str, Any]:
    """What was measured, for the JSON."""
    from worker.store import vector_files

    model = (f"max(n/{ROWS_PER_TOPIC}, {MIN_TOPICS}) unit topic centres; a row = centre + "
             f"N(0, {NOISE}^2 I); a query = a row + N(0, {NOISE}^2 I); all normalised"
             if plan.data == "clustered" else "N(0, I) normalised, rows and queries")  # fmt: skip
    return {
        "data": {"kind": plan.data, "dimensions": DIMENSIONS, "model": model, "seed": SEED,
                 "queries": QUERIES, "warmup_queries": WARMUP, "k": K},
        "store": {"owner": OWNER, "memory_type": TYPE, "index_min_rows": plan.index_min_rows,
                  "chunk_rows": CHUNK, "hnsw": {"library": "usearch", "dtype": "i8",
                  "connectivity": vector_files.CONNECTIVITY,
                  "expansion_add": vector_files.EXPANSION_ADD,
                  "min_candidates": vector_files.MIN_CANDIDATES}},
        "method": "p50/p99: store.search of one query (perf_counter around the await), after "
        f"{WARMUP} warm-up queries; qps_batch32: one SearchGroup of {BATCH} vectors a search, "
        f"for >= {plan.throughput_s} s; recall_at_10 and max_cosine_error (every returned row) "
        "of the one-query searches against numpy X @ q; worker_rss: a separate process "
        "serving the largest size (no embedder), VmRSS etc. after imports and after searching",
    }  # fmt: skip


async def benchmark(sizes: Sequence[int], plan: Plan) -> dict[str, Any]:
    """Every size in turn, each in its own directory, removed before the next."""
    started = time.perf_counter()
    measured = []
    for rows in sorted(sizes):
        with tempfile.TemporaryDirectory(prefix="recallq-scale-", dir=plan.workdir) as directory:
            largest = plan.rss and rows == max(sizes)
            measured.append(await measure_size(rows, plan, Path(directory), largest))
    return {**described(plan), "sizes": measured, "targets": verdicts(measured),
            "wall_s": round(time.perf_counter() - started, 1)}  # fmt: skip


def main(
    sizes: Sequence[int] = SIZES, plan: Plan | None = None, results_dir: Path | None = None
) -> int:
    """The command: measure, then write the JSON and a PNG beside it and print the table."""
    from benchmarks.common import RESULTS, publish  # its imports are the harness's

    configure_logging("error")  # no line per vector file built
    plan = plan or Plan()
    results = asyncio.run(benchmark(sizes, plan))
    name = "scale" if plan.data == "clustered" else f"scale-{plan.data}"
    publish(name, results, results_dir or RESULTS, plot, markdown)
    for target in results["targets"]:
        print(f"target {target['memories']:,}: {'met' if target['met'] else 'NOT met'}")
    return 0
