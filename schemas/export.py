"""JSON Schema export, so producers in other languages can validate their messages."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from schemas.messages import MemoryHit, RetrievalRequest, RetrievalResponse

EXPORTED: dict[str, type[BaseModel]] = {
    "RetrievalRequest": RetrievalRequest,
    "RetrievalResponse": RetrievalResponse,
    "MemoryHit": MemoryHit,
}

COMMITTED_DIR = Path(__file__).parent / "json"


def render_schemas() -> dict[str, str]:
    """File name -> JSON text of each exported model's schema."""
    rendered = {}
    for name, model in EXPORTED.items():
        schema = model.model_json_schema(mode="validation")
        rendered[f"{name}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return rendered


def export(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, text in render_schemas().items():
        path = directory / filename
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
