"""Native libraries that must load together in one worker process, in either order.

usearch 2.26.2 to 2.26.6 (with numkong) imported before onnxruntime 1.32 made the
latter's import segfault: `recallq worker ingest` opens the store (usearch) before the
embedder (onnxruntime). Each order runs in a fresh interpreter, so a crash is an exit
code here, not a dead test run.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

ORDERS = [
    ("worker.store.vector_files", "onnxruntime"),
    ("onnxruntime", "worker.store.vector_files"),
    ("worker.store.vector_files", "torch"),
]


@pytest.mark.parametrize(("first", "then"), ORDERS)
def test_native_libraries_load_in_either_order(first: str, then: str) -> None:
    code = f"import {first}; import {then}; print('loaded')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert (done.returncode, done.stdout.strip()) == (0, "loaded"), done.stderr[-2000:]
