"""`python -m worker run | ingest FILE.jsonl`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import structlog

from worker.embed import Embedder
from worker.ingest import ingest_file
from worker.logs import configure_logging
from worker.pipeline import Worker
from worker.settings import WorkerSettings
from worker.store import open_store

log = structlog.get_logger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="serve retrieval requests until SIGTERM")
    ingest = commands.add_parser("ingest", help="embed and store memories from a JSONL file")
    ingest.add_argument("file", type=Path)
    ingest.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)

    settings = WorkerSettings()
    configure_logging(settings.log_level, settings.log_format)
    if args.command == "run":
        asyncio.run(_run(settings))
        return 0
    if not args.file.is_file():
        print(f"no such file: {args.file}", file=sys.stderr)
        return 2
    return asyncio.run(_ingest(settings, args.file, args.batch_size))


async def _run(settings: WorkerSettings) -> None:
    embedder = await asyncio.to_thread(Embedder.load, settings.embed_model, settings.embed_device)
    store = open_store(settings.store_url)
    await store.ensure_indexes()
    log.info("store ready", **store.describe())
    try:
        await Worker(settings, embedder, store).run(handle_signals=True)
    finally:
        await store.close()
        embedder.close()


async def _ingest(settings: WorkerSettings, path: Path, batch_size: int) -> int:
    embedder = await asyncio.to_thread(Embedder.load, settings.embed_model, settings.embed_device)
    store = open_store(settings.store_url)
    try:
        report = await ingest_file(path, store, embedder, batch_size=batch_size)
    finally:
        await store.close()
        embedder.close()
    for number, error in report.bad_lines:
        print(f"{path}:{number}: skipped: {error}", file=sys.stderr)
    print(f"stored {report.stored} memories, skipped {len(report.bad_lines)} bad lines")
    return 1 if report.bad_lines else 0
