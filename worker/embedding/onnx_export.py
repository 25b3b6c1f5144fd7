"""The ONNX export cache: one graph per (model files, precision), made here, made once.

The graph is exported from the configured sentence-transformers model on this
machine (no hub), with every module after the tokenizer inside it: the
transformer, the model's own pooling and, when the model has one, its
Normalize. So pooling, normalisation and max_seq_length come from the model's
configuration, not from recallq. The tokenizer travels beside the graph with the
model's truncation and padding baked in.

An entry is a directory named by a hash of the model's files and the precision.
It is built in a temporary directory and renamed into place (atomic on one file
system), under an exclusive lock, so two workers starting at once export once
and never see half an entry. Its manifest records each file's SHA-256; an entry
whose files do not match (truncated, overwritten) is exported again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog

log = structlog.get_logger(__name__)

FORMAT = 1  # bump when the layout or the export changes: old entries are ignored
OPSET = 17
MANIFEST = "manifest.json"
GRAPH = "model.onnx"
TOKENIZER = "tokenizer.json"
Precision = Literal["fp32", "int8"]


@dataclass(frozen=True)
class Export:
    """A verified cache entry: the graph, the tokenizer and what the model declares."""

    directory: Path
    input_names: tuple[str, ...]
    dimensions: int
    max_seq_length: int

    @property
    def graph(self) -> Path:
        return self.directory / GRAPH

    @property
    def tokenizer(self) -> Path:
        return self.directory / TOKENIZER


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "recallq" / "onnx"


def model_hash(model_dir: Path) -> str:
    """SHA-256 over every file of the model directory (relative path and bytes)."""
    digest = hashlib.sha256(f"recallq-onnx-{FORMAT}-opset{OPSET}".encode())
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(model_dir)).encode() + b"\0")
        digest.update(_file_hash(path).encode())
    return digest.hexdigest()


def prepared(model_dir: Path, cache_dir: Path, precision: Precision = "fp32") -> Export:
    """The cache entry for this model and precision, exported first when missing or corrupt."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    entry = cache_dir / f"{model_hash(model_dir)[:24]}-{precision}"
    found = _verified(entry)
    if found is not None:
        return found
    with _locked(cache_dir / f"{entry.name}.lock"):
        found = _verified(entry)  # another worker may have exported while we waited
        if found is not None:
            return found
        log.warning("exporting the model to ONNX (once per model)", model=str(model_dir),
                    precision=precision, cache=str(entry))  # fmt: skip
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=f".{entry.name}.") as scratch:
            building = Path(scratch) / "entry"
            building.mkdir()
            if precision == "fp32":
                _export(model_dir, building)
            else:
                _quantize(prepared(model_dir, cache_dir, "fp32"), building)
            _replace(entry, building, Path(scratch) / "old")
    found = _verified(entry)
    if found is None:
        raise RuntimeError(f"the ONNX export in {entry} does not verify after writing it")
    return found


def _verified(entry: Path) -> Export | None:
    """The entry when its manifest and every file it lists match; None otherwise."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        if manifest.get("format") != FORMAT:
            return None
        for name, expected in manifest["files"].items():
            if _file_hash(entry / name) != expected:
                log.warning("ONNX export cache entry is corrupt; exporting again",
                            cache=str(entry), file=name)  # fmt: skip
                return None
        return Export(
            entry,
            tuple(manifest["input_names"]),
            int(manifest["dimensions"]),
            int(manifest["max_seq_length"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _replace(entry: Path, building: Path, old: Path) -> None:
    """Move the built entry into place; a corrupt one there is moved aside first."""
    if entry.exists():
        entry.rename(old)
    building.rename(entry)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _export(model_dir: Path, out: Path) -> None:
    from worker.embedding.torch_backend import load_sentence_transformer

    model = load_sentence_transformer(str(model_dir), "cpu")
    names = _input_names(model)
    sample = model.preprocess(["recallq exports this model", "once"])
    _trace(model, names, tuple(sample[name] for name in names), out / GRAPH)
    _save_tokenizer(model, out / TOKENIZER)
    _write_manifest(out, names, int(model.get_embedding_dimension()), int(model.max_seq_length))


def _input_names(model: Any) -> tuple[str, ...]:
    sample = model.preprocess(["x"])
    return tuple(name for name in model.tokenizer.model_input_names if name in sample)


def _trace(model: Any, names: tuple[str, ...], sample: tuple[Any, ...], path: Path) -> None:
    import torch

    class Sentence(torch.nn.Module):
        """Tensors in, in `names` order; every module after the tokenizer; vectors out."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            features = dict(zip(names, tensors, strict=True))
            out: torch.Tensor = self.model(features)["sentence_embedding"]
            return out

    axes = {name: {0: "batch", 1: "tokens"} for name in names}
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on branches fixed for every input
        torch.onnx.export(
            Sentence().eval(), sample, str(path), input_names=list(names),
            output_names=["sentence_embedding"],
            dynamic_axes={**axes, "sentence_embedding": {0: "batch"}},
            opset_version=OPSET, dynamo=False,
        )  # fmt: skip


def _save_tokenizer(model: Any, path: Path) -> None:
    """The fast tokenizer with the model's truncation and padding written into it."""
    hf = model.tokenizer
    fast = hf.backend_tokenizer
    fast.enable_truncation(max_length=int(model.max_seq_length))
    fast.enable_padding(
        pad_id=int(hf.pad_token_id), pad_token=str(hf.pad_token),
        pad_type_id=int(getattr(hf, "pad_token_type_id", 0)),
    )  # fmt: skip
    fast.save(str(path))


def _quantize(fp32: Export, out: Path) -> None:
    """Dynamic int8 MatMul weights, one scale per output channel; activations stay float.

    Per-tensor scales (the default) kept 0.84 of fp32's top-5 on the demo set, per-channel
    0.91 at the same speed (2x fp32 here); the embedding Gather stays fp32.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(fp32.graph), str(out / GRAPH), weight_type=QuantType.QInt8,
        per_channel=True, op_types_to_quantize=["MatMul"],
    )  # fmt: skip
    shutil.copyfile(fp32.tokenizer, out / TOKENIZER)
    _write_manifest(out, fp32.input_names, fp32.dimensions, fp32.max_seq_length)


def _write_manifest(
    out: Path, names: tuple[str, ...], dimensions: int, max_seq_length: int
) -> None:
    manifest = {
        "format": FORMAT,
        "input_names": list(names),
        "dimensions": dimensions,
        "max_seq_length": max_seq_length,
        "files": {name: _file_hash(out / name) for name in (GRAPH, TOKENIZER)},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
