"""Worker processes that never outlive their parent.

A process killed with SIGKILL cannot stop its workers. :func:`die_with_parent`, called first
thing in a worker, makes the kernel send the worker SIGKILL when its parent dies (Linux
``prctl(PR_SET_PDEATHSIG)``); elsewhere a daemon thread polls the parent's pid and exits the
worker within a fraction of a second.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1


def die_with_parent(poll_seconds: float = 0.2) -> None:
    """Make this process exit as soon as the process that started it dies."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != parent:  # the parent died before the call took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()
