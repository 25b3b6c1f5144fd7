"""How a spec turns into backend, lanes and threads on a machine with no GPU."""

from __future__ import annotations

import os

import pytest

from worker.embedding.backends import EncoderSpec, resolved
from worker.settings import WorkerSettings


def test_auto_on_cpu_is_onnx_with_a_single_threaded_lane_per_core() -> None:
    spec = resolved(EncoderSpec(device="cpu"))
    cores = os.cpu_count() or 1
    assert (spec.backend, spec.lanes, spec.threads) == ("onnx", cores, 1)


def test_torch_on_cpu_is_one_lane_with_every_core() -> None:
    spec = resolved(EncoderSpec(device="cpu", backend="torch"))
    assert (spec.lanes, spec.threads) == (1, os.cpu_count() or 1)


def test_explicit_lanes_and_threads_are_kept() -> None:
    spec = resolved(EncoderSpec(device="cpu", lanes=3, threads=2))
    assert (spec.lanes, spec.threads) == (3, 2)


def test_settings_reach_the_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECALLQ_EMBED_BACKEND", "torch")
    monkeypatch.setenv("RECALLQ_EMBED_LANES", "2")
    monkeypatch.setenv("RECALLQ_EMBED_QUANTIZE", "int8")
    spec = WorkerSettings().encoder_spec()
    assert (spec.backend, spec.lanes, spec.quantize) == ("torch", 2, "int8")


def test_an_unknown_backend_is_refused_by_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECALLQ_EMBED_BACKEND", "tensorrt")
    with pytest.raises(ValueError, match="embed_backend"):
        WorkerSettings()
