"""Handing freed memory back to the operating system after a burst of connections or request bytes.

A storm of connections or a flood of large request bodies makes the C allocator (glibc's malloc)
grow its heap; once they are gone the memory is free but glibc keeps it (measured: 200 MB bodies
refused 413 left about 2.5 MiB held on a 47 MiB server). ``malloc_trim(0)`` returns the free pages;
it runs once a burst has passed, on the event loop (it takes about a millisecond on such a heap).
Only on Linux with glibc; elsewhere :func:`malloc_trim` does nothing and says so.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable
from functools import cache

__all__ = ["malloc_trim", "trim_available", "BurstWatch"]


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError):
        return False


@cache
def _trim_function() -> Callable[[int], int] | None:
    # os.confstr (what platform.libc_ver() also asks first): no file is read.
    if not sys.platform.startswith("linux") or not _glibc():
        return None
    try:
        function = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


def malloc_trim() -> bool:
    """Return the C heap's free memory to the OS (glibc ``malloc_trim(0)``); False where there is no such call.

    The first call looks the function up; :func:`_protocol_class` does it when a server starts, not
    on the event loop under load.
    """
    function = _trim_function()
    if function is None:
        return False
    function(0)
    return True


class BurstWatch:
    """Says when a burst has happened since the last trim: ``connections`` open at once, or ``received`` bytes read.

    The server reports each opened connection and the bytes it reads; :meth:`due` is true once
    either bound was reached since the last :meth:`trimmed`.
    """

    def __init__(self, connections: int = 256, received: int = 64 << 20) -> None:
        if connections < 1 or received < 1:
            raise ValueError(f"BurstWatch bounds must be >= 1, got connections={connections}, received={received}")
        self.connections = connections
        self.received = received
        self._peak = 0
        self._bytes = 0

    def opened(self, open_now: int) -> None:
        """A connection was opened; ``open_now`` are open including it."""
        self._peak = max(self._peak, open_now)

    def read(self, nbytes: int) -> None:
        """``nbytes`` were read from a client."""
        self._bytes += nbytes

    @property
    def due(self) -> bool:
        """Whether a burst happened since the last trim."""
        return self._peak >= self.connections or self._bytes >= self.received

    def trimmed(self, open_now: int) -> None:
        """The heap was trimmed with ``open_now`` connections open: start counting afresh."""
        self._peak = open_now
        self._bytes = 0


def trim_available() -> bool:
    """Whether :func:`malloc_trim` can trim here (Linux with glibc); the look-up is done once and kept."""
    return _trim_function() is not None
