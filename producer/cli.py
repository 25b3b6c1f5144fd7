"""`python -m producer ask "QUERY" --memory-id ID [--limit TYPE=N ...] | bulk INPUT --output F`."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import textwrap
import time
from pathlib import Path

from pydantic import ValidationError

from producer.bulk import BulkJob, BulkSummary
from producer.client import RetrievalClient, RetrievalError, RetrievalTimeout
from schemas.connect import broker_line, exit_in_one_line
from schemas.logs import configure_logging
from schemas.messages import NAME_PATTERN, MemoryType, RetrievalResponse
from schemas.settings import BrokerSettings, settings_error_line

DEFAULT_LIMITS = {
    MemoryType.CONVERSATION.value: 3,
    MemoryType.LONG_TERM.value: 3,
    MemoryType.PROCEDURAL.value: 3,
}
TYPE_NAME = re.compile(NAME_PATTERN)  # the wire's rule for memory type names


def parse_limit(text: str) -> tuple[str, int]:
    """TYPE=N; which types a worker serves is its store profile's (it names them when
    refusing one)."""
    name, _, count = text.partition("=")
    if not TYPE_NAME.fullmatch(name) or not (count or "5").isdigit():
        raise argparse.ArgumentTypeError("expected TYPE=N, TYPE a memory type such as "
                                         "conversation_memory")  # fmt: skip
    return name, int(count or 5)


def parse_filter(text: str) -> tuple[str, str]:
    field, sep, value = text.partition("=")
    if not sep or not field or not value:
        raise argparse.ArgumentTypeError("expected FIELD=VALUE, e.g. user_id=alice")
    return field, value


def main(argv: list[str] | None = None, prog: str = "python -m producer") -> int:
    """Exit 0 on an ok answer; 1 on an error answer or an unfinished job; 2 with one
    line on stderr when the request could not be made (a traceback only with --debug)."""
    args = build_parser(prog).parse_args(argv)
    where = f"{prog} {args.command}"
    try:
        settings = BrokerSettings()
    except ValidationError as exc:
        return exit_in_one_line(exc, settings_error_line(exc), where, args.debug)
    configure_logging(settings.log_level, settings.log_format)  # on stderr: stdout is output
    try:
        if args.command == "bulk":
            return run_bulk(
                args.input, args.output, args.job_id, args.concurrency, settings, args.json
            )
        limits = dict(args.limit) if args.limit else DEFAULT_LIMITS
        filters = dict(args.filter) if args.filter else None
        return asyncio.run(_ask(args, limits, filters, settings))
    except Exception as exc:
        return exit_in_one_line(exc, failure_line(exc, settings.amqp_url), where, args.debug)


def failure_line(exc: Exception, amqp_url: str) -> str | None:
    """One line for a failure a person must fix, or None for a bug: the broker's
    explanation for what the broker client raised only, never for a file."""
    if (line := broker_line(exc, amqp_url)) is not None:
        return line
    if isinstance(exc, RetrievalError):  # a bulk job's publish the broker refused
        return str(exc)
    if isinstance(exc, OSError) and isinstance(exc.filename, str):
        return f"cannot use {exc.filename} ({exc.strerror}): check the input and --output paths"
    return None


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of failures")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ask = commands.add_parser("ask", help="retrieve memories for one query over RPC")
    ask.add_argument("query")
    ask.add_argument("--memory-id", required=True, help="whose memories (the owner value)")
    ask.add_argument(
        "--limit",
        type=parse_limit,
        action="append",
        metavar="TYPE=N",
        help="hits per memory type (repeatable); default: conversation, long-term, procedural x3",
    )
    ask.add_argument("--filter", type=parse_filter, action="append", metavar="FIELD=VALUE",
                     help="a scope equality such as user_id=alice (repeatable)")  # fmt: skip
    ask.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the reply")
    ask.add_argument("--json", action="store_true", help="print the raw response")
    bulk = commands.add_parser("bulk", help="run a resumable bulk retrieval job")
    bulk.add_argument("input", type=Path, help="JSONL: query, memory_id, limits[, request_id]")
    bulk.add_argument("--output", type=Path, required=True, help="results, one JSON line each")
    bulk.add_argument("--job-id", default="", help="default: derived from input and output paths")
    bulk.add_argument("--concurrency", type=int, default=64, help="publishes in flight")
    bulk.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


def run_bulk(
    input_path: Path,
    output: Path,
    job_id: str,
    concurrency: int,
    settings: BrokerSettings | None = None,
    as_json: bool = False,
) -> int:
    if not input_path.is_file():
        print(f"no such file: {input_path}", file=sys.stderr)
        return 2
    job = BulkJob(input_path, output, job_id=job_id, concurrency=max(1, concurrency),
                  settings=settings or BrokerSettings())  # fmt: skip
    try:
        summary = asyncio.run(job.run())
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: {output} holds every result written so far; "
            "run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    if summary.bad_lines:
        print(f"{summary.bad_lines} bad input lines skipped, listed in {job.errors_path}",
              file=sys.stderr)  # fmt: skip
    print(json.dumps(summary.as_dict()) if as_json else render_summary(summary))
    return 0 if summary.complete else 1


def render_summary(summary: BulkSummary) -> str:
    statuses = ", ".join(f"{status} {count}" for status, count in summary.by_status.most_common())
    return (
        f"job {summary.job_id}: {summary.already_done + summary.written}/{summary.total} done "
        f"({summary.already_done} from earlier runs); this run wrote {summary.written} "
        f"[{statuses or 'nothing'}] in {summary.seconds:.1f} s = {summary.rate:.0f} requests/s; "
        f"{summary.duplicates_dropped} duplicate results dropped"
    )


async def _ask(
    args: argparse.Namespace,
    limits: dict[str, int],
    filters: dict[str, str] | None,
    settings: BrokerSettings,
) -> int:
    query, as_json = args.query, args.json
    started = time.perf_counter()
    try:
        async with RetrievalClient(settings, timeout=args.timeout) as client:
            response = await client.retrieve(query, args.memory_id, limits, filters=filters)
    except ValidationError as exc:
        print(f"invalid request: {exc}", file=sys.stderr)
        return 2
    except RetrievalTimeout as exc:
        print(f"{exc}: is a worker running? (python -m worker run)", file=sys.stderr)
        return 1
    except RetrievalError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    elapsed_ms = (time.perf_counter() - started) * 1000
    if as_json:
        print(response.model_dump_json(indent=2))
    else:
        print(render(query, response, elapsed_ms))
    return 0 if response.status == "ok" else 1


def render(query: str, response: RetrievalResponse, round_trip_ms: float | None = None) -> str:
    """A readable table of a response: hits per memory type, then the timings."""
    lines = [f"Q: {query}"]
    if response.error is not None:
        lines.append(f"  error {response.error.code}: {response.error.message}")
    now = time.time()
    for memory_type, hits in response.results.items():
        lines.append(f"  {memory_type} ({len(hits)})")
        if not hits:
            lines.append("    (no memories)")
        for rank, hit in enumerate(hits, start=1):
            age = (
                "     -"
                if hit.timestamp is None
                else f"{max(0.0, now - hit.timestamp) / 86400:5.1f}d"
            )
            who = f"[{hit.role}] " if hit.role else ""
            text = textwrap.shorten(f"{who}{hit.content}", width=86, placeholder="...")
            lines.append(
                f"    {rank}. signal {hit.signal:.3f}  cos {hit.score:+.3f}  {age}  {text}"
            )
    t = response.timings
    timing = (
        f"  timings: queue {t.queue_ms:.1f} ms, embed {t.embed_ms:.1f} ms, "
        f"search {t.search_ms:.1f} ms, worker total {t.total_ms:.1f} ms, "
        f"batch of {response.batch_size}"
    )
    if round_trip_ms is not None:
        timing += f", round trip {round_trip_ms:.1f} ms"
    lines.append(timing)
    return "\n".join(lines)
