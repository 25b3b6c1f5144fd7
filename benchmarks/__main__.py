"""`python -m benchmarks run [--quick]` and `python -m benchmarks bulk-interactive [--quick]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks import bulk_interactive, harness
from benchmarks.common import RESULTS


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="embed ceiling, naive, Celery and recallq compared")
    run.add_argument("--quick", action="store_true", help="a smoke run, under 3 minutes")
    run.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes")
    bulk = commands.add_parser("bulk-interactive", help="RPC latency while a bulk job runs")
    bulk.add_argument("--quick", action="store_true", help="a small run (about a minute)")
    args = parser.parse_args()
    if args.command == "run":
        harness.main(quick=args.quick, results_dir=args.results)
    elif args.command == "bulk-interactive":
        bulk_interactive.main(quick=args.quick)


if __name__ == "__main__":
    main()
