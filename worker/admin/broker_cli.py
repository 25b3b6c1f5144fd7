"""The broker-side commands of `python -m worker`: definitions and dead-letters."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from worker.admin import dead_letters
from worker.admin.definitions import build_definitions, parse_users
from worker.settings import WorkerSettings

BROKER_COMMANDS = ("definitions", "dead-letters")


def add_broker_commands(commands: Any) -> None:
    definitions = commands.add_parser(
        "definitions",
        help="write RabbitMQ definitions for the least-privilege topology "
        "(passwords from RECALLQ_PASSWORD_<USER>)",
    )
    definitions.add_argument(
        "--user", action="append", default=[], metavar="ROLE:NAME",
        help="producer:NAME, worker:NAME or admin:NAME; repeat for each user",
    )  # fmt: skip
    definitions.add_argument("--vhost", default="/")
    definitions.add_argument("--out", type=Path, help="file to write (default: stdout)")
    dead = commands.add_parser("dead-letters", help="list, requeue or purge dead letters")
    dead.add_argument("action", choices=("list", "requeue", "purge"))
    dead.add_argument("--limit", type=int, default=100, help="most dead letters to look at")
    dead.add_argument("--request-id", help="requeue only this request")
    dead.add_argument("--json", action="store_true", help="list: one JSON object a line")


def run_broker_command(args: argparse.Namespace, settings: WorkerSettings) -> int:
    """Exit status 0, or raises RecallqError (the caller prints it as one line)."""
    if args.command == "definitions":
        document = build_definitions(settings.topology, parse_users(args.user), args.vhost)
        text = json.dumps(document, indent=2) + "\n"
        if args.out:
            args.out.write_text(text)
            print(f"wrote {args.out}: {len(document['users'])} users", file=sys.stderr)
        else:
            sys.stdout.write(text)
        return 0
    if args.action == "list":
        letters = asyncio.run(dead_letters.list_dead_letters(settings, args.limit))
        if args.json:
            for letter in letters:
                print(dead_letters.as_json(letter))
        elif letters:
            print(dead_letters.as_table(letters))
        print(f"{len(letters)} dead letters: {dead_letters.summarise(letters)}", file=sys.stderr)
    elif args.action == "requeue":
        moved = asyncio.run(dead_letters.requeue(settings, args.limit, args.request_id))
        print(f"requeued {moved} dead letters", file=sys.stderr)
    else:
        print(f"purged {asyncio.run(dead_letters.purge(settings))} dead letters", file=sys.stderr)
    return 0
