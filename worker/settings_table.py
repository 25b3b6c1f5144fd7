"""The README's settings table, rendered from the settings model so the two never drift."""

from __future__ import annotations

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


if __name__ == "__main__":
    print(render_settings_table())
