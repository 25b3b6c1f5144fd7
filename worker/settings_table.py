"""The README's settings table, rendered from the settings model so the two never drift."""

from __future__ import annotations

import sys
from pathlib import Path

from worker.settings import WorkerSettings

BEGIN = "<!-- settings-table:begin -->"
END = "<!-- settings-table:end -->"


def render_settings_table() -> str:
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in WorkerSettings.model_fields.items():
        default = "(host-pid)" if name == "worker_id" else field.default
        shown = f"`{default}`" if default not in ("", None) else "(empty)"
        rows.append(f"| `RECALLQ_{name.upper()}` | {shown} | {field.description or ''} |")
    return "\n".join([BEGIN, *rows, END])


def update_readme(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    before, _, rest = text.partition(BEGIN)
    _, _, after = rest.partition(END)
    path.write_text(before + render_settings_table() + after, encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"]:
        update_readme(Path(sys.argv[2] if len(sys.argv) > 2 else "README.md"))
    else:
        print(render_settings_table())
