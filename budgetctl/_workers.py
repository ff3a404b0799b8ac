"""Worker processes for the simulators and the learner: started clean, never forked from a running process.

``fork`` copies a process with its threads' locks held and its event loop, sockets and open files
live: it is unsafe on macOS (system libraries abort in the child) and absent on Windows. Workers
here come from ``forkserver`` where the platform has it (a clean server process forks them; the
default on Linux from Python 3.14) and from ``spawn`` elsewhere. Either way a worker imports what
its task needs, so the functions and arguments sent to it must be picklable by reference (module-
level functions, policies and settings that pickle), which the pools here already required.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import BaseContext

__all__ = ["worker_context"]


def worker_context() -> BaseContext:
    """The multiprocessing context worker pools use: ``forkserver`` where available, else ``spawn``."""
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method)
