"""Worker threads that the operating system can tell apart.

`top -H`, py-spy and the benchmark's per-thread CPU accounting read the kernel's
thread name (/proc/PID/task/TID/comm); Python does not set it, so every thread
shows as "python". Names are cut to the kernel's 15 bytes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
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


def single_thread(name: str) -> ThreadPoolExecutor:
    """One worker thread, named `name` in Python and in the kernel."""
    return ThreadPoolExecutor(
        max_workers=1, thread_name_prefix=name, initializer=name_os_thread, initargs=(name,)
    )


def name_main_thread() -> None:
    if threading.current_thread() is threading.main_thread():
        name_os_thread("recallq-loop")
