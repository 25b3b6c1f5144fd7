"""`recallq worker ...`, `recallq ask ...`, `recallq bulk ...`, `recallq bench ...`.

A dispatcher, nothing more: each group is the CLI of its own package (worker and
producer never import each other), imported only when asked for, so `recallq ask`
does not load the model's libraries. argparse, like the packages' own CLIs: the tree
is small, it adds no dependency to the worker image, and typer/click would only add
import time and a second way to declare options.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable

USAGE = """usage: recallq [--help] COMMAND ...

Batched retrieval for agent memory over RabbitMQ.

commands:
  worker      run, init, export, ingest, definitions, dead-letters (recallq worker --help)
  ask         retrieve memories for one query over RPC
  bulk        run a resumable bulk retrieval job from a JSONL file
  bench       the benchmarks, from a source checkout (recallq bench --help)

Every command takes --help. Settings come from RECALLQ_* variables or .env (README).
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    runners: dict[str, Callable[[list[str]], int]] = {
        "worker": _worker, "ask": _producer(command), "bulk": _producer(command),
        "bench": _bench,
    }  # fmt: skip
    runner = runners.get(command)
    if runner is None:
        print(f"recallq: unknown command {command!r}; see recallq --help", file=sys.stderr)
        return 2
    return runner(rest)


def _worker(rest: list[str]) -> int:
    from worker.cli import main as worker_main

    return worker_main(rest, prog="recallq worker")


def _producer(command: str) -> Callable[[list[str]], int]:
    def run(rest: list[str]) -> int:
        from producer.cli import main as producer_main

        # Options before the command (--debug) belong to the producer's parser.
        debug = [arg for arg in rest if arg == "--debug"]
        return producer_main([*debug, command, *(a for a in rest if a != "--debug")],
                             prog="recallq")  # fmt: skip

    return run


def _bench(rest: list[str]) -> int:
    """The benchmark harness is not installed with the package (it needs Celery and
    matplotlib); it runs from the root of a source checkout."""
    if importlib.util.find_spec("benchmarks") is None and os.path.isdir("benchmarks"):
        sys.path.insert(0, os.getcwd())
    if importlib.util.find_spec("benchmarks") is None:
        print("recallq bench: the benchmarks live in the source checkout; run this from its "
              "root (or python -m benchmarks there)", file=sys.stderr)  # fmt: skip
        return 2
    bench = importlib.import_module("benchmarks.__main__")  # not a typed, installed package
    status: int = bench.main(rest, prog="recallq bench")
    return status
