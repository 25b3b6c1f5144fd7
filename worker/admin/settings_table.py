"""The README's generated sections: the settings table (from the settings model) and the
least-privilege permissions (from schemas.permissions), so text and code never drift."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from schemas.permissions import Role, rabbitmqctl_commands
from schemas.topology import Layout, Topology
from worker.settings import WorkerSettings

BEGIN = "<!-- settings-table:begin -->"
END = "<!-- settings-table:end -->"
PERMISSIONS_BEGIN = "<!-- permissions:begin -->"
PERMISSIONS_END = "<!-- permissions:end -->"


def render_settings_table() -> str:
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in WorkerSettings.model_fields.items():
        default = "(host-pid)" if name == "worker_id" else field.default
        shown = f"`{default}`" if default not in ("", None) else "(empty)"
        rows.append(f"| `RECALLQ_{name.upper()}` | {shown} | {field.description or ''} |")
    return "\n".join([BEGIN, *rows, END])


def render_permissions() -> str:
    """rabbitmqctl calls for each role on the default prefix (after `add_user`)."""
    topology = Topology(layout=Layout.LEAST_PRIVILEGE)
    roles: list[tuple[Role, str]] = [
        ("producer", "<user>"), ("worker", "recallq-worker"), ("admin", "recallq-admin"),
    ]  # fmt: skip
    lines = [PERMISSIONS_BEGIN, "```sh"]
    for role, user in roles:
        lines.append(f"# {role}")
        commands = rabbitmqctl_commands(topology, role, user)
        lines += [f"rabbitmqctl {shlex.join(command)}" for command in commands]
    return "\n".join([*lines, "```", PERMISSIONS_END])


def replace_section(text: str, begin: str, end: str, content: str) -> str:
    before, found, rest = text.partition(begin)
    _, closed, after = rest.partition(end)
    if not (found and closed):
        raise ValueError(f"README lacks the {begin} ... {end} markers")
    return before + content + after


def update_readme(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    text = replace_section(text, BEGIN, END, render_settings_table())
    text = replace_section(text, PERMISSIONS_BEGIN, PERMISSIONS_END, render_permissions())
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"]:
        update_readme(Path(sys.argv[2] if len(sys.argv) > 2 else "README.md"))
    else:
        print(render_settings_table())
