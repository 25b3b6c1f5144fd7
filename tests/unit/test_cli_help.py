"""The installed `recallq` command: help at every level, from the package's script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

RECALLQ = Path(sys.executable).parent / "recallq"
COMMANDS = [
    [], ["worker"], ["worker", "run"], ["worker", "init"], ["worker", "export"],
    ["worker", "ingest"], ["worker", "definitions"], ["worker", "dead-letters"],
    ["ask"], ["bulk"],
]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "recallq")
def test_every_level_has_help(command: list[str]) -> None:
    done = subprocess.run([RECALLQ, *command, "--help"], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: recallq {' '.join(command)}".rstrip())
    assert "Traceback" not in done.stderr


def test_an_unknown_command_says_where_help_is() -> None:
    done = subprocess.run([RECALLQ, "serve"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr == "recallq: unknown command 'serve'; see recallq --help\n"


def test_the_module_entry_points_still_work() -> None:
    for module in ("worker", "producer", "recallq"):
        done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0 and done.stdout.startswith("usage:"), done.stderr
