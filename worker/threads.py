"""Worker threads that the operating system can tell apart.

`top -H`, py-spy and the benchmark's per-thread CPU accounting read the kernel's
thread name (/proc/PID/task/TID/comm); Python does not set it, so every thread
shows as "python". Names are cut to the kernel's 15 bytes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

PR_SET_NAME = 15


def name_os_thread(name: str) -> None:
    """Give the calling thread `name` in the kernel (Linux only; elsewhere nothing)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except OSError:
        return


def single_thread(name: str, nice: int = 0) -> ThreadPoolExecutor:
    """One worker thread, named `name` in Python and in the kernel, at OS priority
    `nice` (threads it starts, such as ONNX Runtime's pool, inherit it)."""
    return ThreadPoolExecutor(
        max_workers=1, thread_name_prefix=name, initializer=_start_thread, initargs=(name, nice)
    )


def _start_thread(name: str, nice: int) -> None:
    name_os_thread(name)
    if nice and hasattr(os, "setpriority"):
        # Linux keeps a nice value per thread: this lowers only the calling thread.
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


def name_main_thread() -> None:
    if threading.current_thread() is threading.main_thread():
        name_os_thread("recallq-loop")
