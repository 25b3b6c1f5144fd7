"""`python -m schemas export DIR`: write the JSON Schema of every message."""

from __future__ import annotations

import argparse
from pathlib import Path

from schemas.export import COMMITTED_DIR, export


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m schemas")
    commands = parser.add_subparsers(dest="command", required=True)
    export_cmd = commands.add_parser("export", help="write JSON Schema files")
    export_cmd.add_argument("directory", nargs="?", type=Path, default=COMMITTED_DIR)
    args = parser.parse_args()
    for path in export(args.directory):
        print(path)


if __name__ == "__main__":
    main()
