"""`python -m benchmarks run [--quick]`, `... bulk-interactive`, `... gpu` and the others.

Each subcommand's module is imported only when it runs: `gpu` must start on a machine
without RabbitMQ's client, Celery or matplotlib, which the others import.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def batch_sizes(text: str) -> tuple[int, ...]:
    """Batch sizes from "1,2,4": integers, each at least 1."""
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes are integers >= 1: {text!r}")
    return sizes


def integers(what: str, unit: str = "") -> Callable[[str], tuple[int, ...]]:
    """A parser of "10,50" for `what` (offered loads, agents at once, sizes): integers,
    each at least 1, its error naming them."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            return batch_sizes(text)
        except argparse.ArgumentTypeError:
            message = f"{what} are integers >= 1{unit}: {text!r}"
            raise argparse.ArgumentTypeError(message) from None

    return parse


rates = integers("loads", " (req/s)")
agent_counts = integers("agents")
memory_counts = integers("sizes")


def add_gpu(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gpu = commands.add_parser(
        "gpu", help="embedder texts/s and pipeline req/s per batch size on a GPU, no broker"
    )
    gpu.add_argument("--device", help="cuda (default; fp16) or cpu (the default with --quick)")
    gpu.add_argument("--backend", choices=("torch", "onnx", "auto"), default="torch")
    gpu.add_argument("--batches", type=batch_sizes, help="default 1,2,4,...,256 (--quick: 1,4,16)")
    gpu.add_argument("--seconds-per-size", type=float, help="each measurement (default 10)")
    gpu.add_argument("--model", type=Path, help="a sentence-transformers directory")
    gpu.add_argument("--results", type=Path, help="where the JSON goes (benchmarks/results)")
    gpu.add_argument("--quick", action="store_true", help="CPU, small sizes, under a minute")
    gpu.add_argument(
        "--prepare", action="store_true",
        help="(here, online) write .bench-cache/gpu: the fp16 model and wheels to carry",
    )  # fmt: skip


def add_remote_embed(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    remote = commands.add_parser(
        "remote-embed",
        help="recallq vs one call per query against a slow, rate-limited embeddings API",
    )
    remote.add_argument("--quick", action="store_true", help="2 loads, 3 s each")
    remote.add_argument("--loads", type=rates, help="offered req/s (default 10,25,50,100,200)")
    remote.add_argument("--latency-ms", type=float, help="the provider's per call (default 80)")
    remote.add_argument(
        "--calls-per-minute", type=float, help="the provider's rate limit (default 3000)"
    )
    remote.add_argument("--results", type=Path, help="where the JSON goes (benchmarks/results)")


def positive(text: str) -> int:
    """An integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"an integer >= 1: {text!r}")
    return value


def add_agents(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    agents = commands.add_parser(
        "agents",
        help="memorizz agents' context building, memorizz's retrieval vs RecallqProvider",
    )
    agents.add_argument("--quick", action="store_true", help="N = 1, 4, two turns (~1 minute)")
    agents.add_argument("--agents", type=agent_counts, help="agents at once (default 1,8,32)")
    agents.add_argument("--turns", type=positive, help="timed turns per agent (default 10)")
    agents.add_argument("--results", type=Path, help="where the JSON goes (benchmarks/results)")


def add_scale(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    scale = commands.add_parser(
        "scale",
        help="one owner at 1k..1M memories: search p50/p99, q/s, recall@10, exact and HNSW",
    )
    scale.add_argument(
        "--sizes", type=memory_counts, help="memories (default 1000,10000,100000,1000000)"
    )
    scale.add_argument(
        "--data", choices=("clustered", "uniform"), default="clustered",
        help="clustered: topics, queries near memories; uniform: no structure (ANN worst case)",
    )  # fmt: skip
    scale.add_argument(
        "--index-min-rows", type=positive, help="rows for a vector file (the store's default)"
    )
    scale.add_argument("--workdir", type=Path, help="where the stores are built (a temp dir)")
    scale.add_argument("--no-rss", action="store_true", help="skip the serving process's RSS")
    scale.add_argument("--results", type=Path, help="where the JSON goes (benchmarks/results)")


def run_scale(args: argparse.Namespace) -> int:
    from benchmarks import scale

    plan = scale.Plan(
        data=args.data, rss=not args.no_rss, workdir=args.workdir,
        index_min_rows=args.index_min_rows or scale.Plan.index_min_rows,
    )  # fmt: skip
    return scale.main(args.sizes or scale.SIZES, plan, args.results)


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks") -> int:
    parser = argparse.ArgumentParser(prog=prog)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="embed ceiling, naive, Celery and recallq compared")
    run.add_argument("--quick", action="store_true", help="a smoke run, under 3 minutes")
    run.add_argument("--results", type=Path, help="where the JSON goes (benchmarks/results)")
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
    add_gpu(commands)
    add_remote_embed(commands)
    add_agents(commands)
    add_scale(commands)
    return dispatch(parser.parse_args(argv))


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "gpu":
        from benchmarks import gpu

        if args.prepare:
            return gpu.prepare()
        return gpu.main(
            args.device, args.batches, args.seconds_per_size, args.model,
            args.results or gpu.RESULTS, quick=args.quick, backend=args.backend,
        )  # fmt: skip
    if args.command == "run":
        from benchmarks import harness
        from benchmarks.common import RESULTS

        harness.main(quick=args.quick, results_dir=args.results or RESULTS)
    elif args.command == "bulk-interactive":
        from benchmarks import bulk_interactive

        bulk_interactive.main(quick=args.quick)
    elif args.command == "overload":
        from benchmarks import overload

        overload.main(args.factor, args.rate, quick=args.quick)
    elif args.command == "dashboard":
        from benchmarks import dashboard

        return dashboard.main()
    elif args.command == "quality":
        from benchmarks import quality

        return quality.main(args.data, quick=args.quick)
    elif args.command == "remote-embed":
        from benchmarks import remote_embed

        return remote_embed.main(
            args.quick, args.results, args.loads, args.latency_ms, args.calls_per_minute
        )
    elif args.command == "agents":
        from benchmarks import agents

        return agents.main(args.quick, args.results, args.agents, args.turns)
    elif args.command == "scale":
        return run_scale(args)
    elif args.command == "chaos":
        from benchmarks import chaos

        return chaos.main(args.requests, args.kills, args.cluster)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
