"""`python -m benchmarks run [--quick]` and `python -m benchmarks bulk-interactive [--quick]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks import bulk_interactive, chaos, dashboard, harness, overload, quality
from benchmarks.common import RESULTS


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks") -> int:
    parser = argparse.ArgumentParser(prog=prog)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="embed ceiling, naive, Celery and recallq compared")
    run.add_argument("--quick", action="store_true", help="a smoke run, under 3 minutes")
    run.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes")
    chaos_cmd = commands.add_parser("chaos", help="kill workers and restart the broker under load")
    chaos_cmd.add_argument("--requests", type=int, default=10_000)
    chaos_cmd.add_argument("--kills", type=int, default=4, help="SIGKILLs of one worker")
    chaos_cmd.add_argument(
        "--cluster", type=int, default=1,
        help="RabbitMQ nodes of the run's own (1: one node stopped and started; 3: a cluster "
        "whose leader node is killed); 0: RECALLQ_AMQP_URL, no broker failure",
    )  # fmt: skip
    burst = commands.add_parser("overload", help="a burst of 10 x the queue bound, one worker")
    burst.add_argument("--factor", type=int, default=10, help="burst size / queue bound")
    burst.add_argument("--rate", type=float, default=2_500.0, help="offered req/s in the burst")
    burst.add_argument("--quick", action="store_true", help="a small smoke run")
    bulk = commands.add_parser("bulk-interactive", help="RPC latency while a bulk job runs")
    bulk.add_argument("--quick", action="store_true", help="a small run (about a minute)")
    commands.add_parser(
        "dashboard", help="the Grafana dashboard's queries on a live 2-worker fleet, drawn"
    )
    quality_cmd = commands.add_parser(
        "quality", help="LoCoMo recall (R@5/10/25/50) of every search mode through a worker"
    )
    quality_cmd.add_argument("--data", type=Path, help="locomo JSON (default: ../shared/data)")
    quality_cmd.add_argument("--quick", action="store_true", help="20 questions a conversation")
    args = parser.parse_args(argv)
    if args.command == "run":
        harness.main(quick=args.quick, results_dir=args.results)
    elif args.command == "bulk-interactive":
        bulk_interactive.main(quick=args.quick)
    elif args.command == "overload":
        overload.main(args.factor, args.rate, quick=args.quick)
    elif args.command == "dashboard":
        return dashboard.main()
    elif args.command == "quality":
        return quality.main(args.data, quick=args.quick)
    elif args.command == "chaos":
        return chaos.main(args.requests, args.kills, args.cluster)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
