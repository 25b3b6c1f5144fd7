"""The worker: serve retrieval requests, prepare the model and the store, ingest
memories, write broker definitions, inspect dead letters (`recallq worker` or
`python -m worker`)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import structlog

from schemas.connect import exit_in_one_line, retry_while
from schemas.logs import configure_logging
from worker.admin.broker_cli import BROKER_COMMANDS, add_broker_commands, run_broker_command
from worker.admin.ingest import ingest_file
from worker.embedding.backends import load_encoder, resolved
from worker.embedding.base import TextEmbedder
from worker.embedding.embedder import Embedder
from worker.embedding.remote import RemoteEmbedder
from worker.errors import ConfigError, StoreUnavailable
from worker.service import Worker, stop_on_signals, unless_stopped
from worker.settings import WorkerSettings
from worker.startup import failure_line
from worker.store import MemoryStore, SQLiteStore, open_store
from worker.threads import name_main_thread

log = structlog.get_logger(__name__)
T = TypeVar("T")


def main(argv: list[str] | None = None, prog: str = "python -m worker") -> int:
    """Exit 0; 1 when some input was bad (ingest); 2 with one line on stderr when the
    start failed for a reason a person must fix (a traceback only with --debug)."""
    args = build_parser(prog).parse_args(argv)
    settings: WorkerSettings | None = None
    try:
        settings = WorkerSettings()
        configure_logging(settings.log_level, settings.log_format)
        return _dispatch(args, settings)
    except Exception as exc:
        urls = (settings.amqp_url, settings.store_url) if settings else ("", "")
        return exit_in_one_line(exc, failure_line(exc, *urls), f"{prog} {args.command}", args.debug)


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of failures")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="serve retrieval requests until SIGTERM")
    run.add_argument(
        "--burst",
        action="store_true",
        help="exit 0 once both request queues are empty and nothing is in flight",
    )
    commands.add_parser(
        "init", help="export the model to ONNX if needed; create the store's indexes and wait"
    )
    commands.add_parser(
        "export", help="prepare the ONNX export of the model (no broker, no store needed)"
    )
    ingest = commands.add_parser("ingest", help="embed and store memories from a JSONL file")
    ingest.add_argument("file", type=Path)
    ingest.add_argument("--batch-size", type=int, default=64)
    add_broker_commands(commands)
    return parser


def _dispatch(args: argparse.Namespace, settings: WorkerSettings) -> int:
    if args.command == "run":
        name_main_thread()
        run_on_loop(_run(settings, burst=args.burst), settings.event_loop)
    elif args.command == "init":
        asyncio.run(_init(settings))
    elif args.command == "export":
        _export(settings)
    elif args.command in BROKER_COMMANDS:
        return run_broker_command(args, settings)
    else:
        if not args.file.is_file():
            raise ConfigError(f"no such file: {args.file}")
        return asyncio.run(_ingest(settings, args.file, args.batch_size))
    return 0


def run_on_loop(main: Coroutine[Any, Any, T], choice: str) -> T:
    """asyncio.run, on uvloop where it is installed (auto) or asked for."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise ConfigError("RECALLQ_EVENT_LOOP=uvloop but uvloop is not installed") from None
        else:
            result: T = uvloop.run(main)
            return result
    return asyncio.run(main)


async def open_embedder(settings: WorkerSettings) -> TextEmbedder:
    """The embedder RECALLQ_EMBED_PROVIDER names: the local model, loaded and warm, or a
    remote provider that has answered one call (so its vector size is known)."""
    if settings.embed_provider != "local":
        return await RemoteEmbedder.connect(settings.remote_spec())
    return await asyncio.to_thread(
        partial(
            Embedder.load,
            settings.encoder_spec(),
            warm_batch=settings.max_batch,
            cache_size=settings.embed_cache_size,
        )
    )


async def close_embedder(embedder: TextEmbedder) -> None:
    if isinstance(embedder, RemoteEmbedder):
        await embedder.aclose()
    else:
        embedder.close()


@asynccontextmanager
async def _opened(
    settings: WorkerSettings, *, writable: bool = False
) -> AsyncIterator[tuple[TextEmbedder, MemoryStore]]:
    """The embedder, then the store (which checks its data against the embedder's size)."""
    embedder = await open_embedder(settings)
    try:
        store = open_store(settings, embedder.dimensions, writable=writable)
    except BaseException:
        await close_embedder(embedder)
        raise
    try:
        yield embedder, store
    finally:
        await store.close()
        await close_embedder(embedder)


def _unavailable(exc: Exception) -> bool:
    """A store error worth waiting out at start (MongoDB still starting or away)."""
    return isinstance(exc, StoreUnavailable)


async def _run(settings: WorkerSettings, *, burst: bool) -> None:
    stop = asyncio.Event()
    stop_on_signals(stop)  # from here on, SIGTERM ends any wait at start
    async with _opened(settings) as (embedder, store):
        if isinstance(store, SQLiteStore):  # a missing or foreign file: no waiting
            await store.connect()
        else:
            waiting = retry_while(
                store.connect, _unavailable, settings.connect_wait_s, "store", settings.store_url
            )
            await unless_stopped(waiting, stop)
        if stop.is_set():
            log.info("stopped before serving")
            return
        log.info("store ready", **store.describe())
        await Worker.from_settings(settings, embedder, store).run(stop, burst=burst)


async def _init(settings: WorkerSettings) -> None:
    async with _opened(settings, writable=True) as (embedder, store):
        print(f"embedder ready: {embedder.description}")
        await store.ensure_indexes()
        await store.connect()
        print(f"store ready: {store.describe()}")


def _export(settings: WorkerSettings) -> None:
    if settings.embed_provider != "local":
        print(f"nothing to export: the {settings.embed_provider} provider embeds remotely")
        return
    spec = resolved(settings.encoder_spec())
    if spec.backend != "onnx":
        print(f"nothing to export: the {spec.backend} backend runs the model as it is")
        return
    encoder = load_encoder(spec)
    print(f"ready: {encoder.description} ({encoder.dimensions} dimensions)")


async def _ingest(settings: WorkerSettings, path: Path, batch_size: int) -> int:
    async with _opened(settings, writable=True) as (embedder, store):
        report = await ingest_file(path, store, embedder, batch_size=batch_size)
        if isinstance(store, SQLiteStore):  # its large groups' vector files, fresh
            await store.ensure_indexes()
    for number, error in report.bad_lines:
        print(f"{path}:{number}: skipped: {error}", file=sys.stderr)
    print(f"stored {report.stored} memories, skipped {len(report.bad_lines)} bad lines")
    return 1 if report.bad_lines else 0
