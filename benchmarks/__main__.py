"""`python -m benchmarks bulk-interactive [--quick]`."""

from __future__ import annotations

import argparse

from benchmarks import bulk_interactive


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    commands = parser.add_subparsers(dest="command", required=True)
    bulk = commands.add_parser("bulk-interactive", help="RPC latency while a bulk job runs")
    bulk.add_argument("--quick", action="store_true", help="a small run (about a minute)")
    args = parser.parse_args()
    if args.command == "bulk-interactive":
        bulk_interactive.main(quick=args.quick)


if __name__ == "__main__":
    main()
