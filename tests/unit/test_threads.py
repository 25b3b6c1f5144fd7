"""Named worker threads at a lower OS priority: the model yields to the event loop."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from worker.threads import single_thread

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux threads")


def own_nice_and_name() -> tuple[int, str]:
    tid = threading.get_native_id()
    comm = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
    return os.getpriority(os.PRIO_PROCESS, tid), comm


def test_a_lane_thread_runs_niced_and_named_while_the_caller_keeps_its_priority() -> None:
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    with single_thread("recallq-test", nice=5) as thread:
        nice, name = thread.submit(own_nice_and_name).result()
    assert nice == min(19, before + 5)
    assert name == "recallq-test"
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before
