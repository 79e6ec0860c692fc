"""Memory: the C allocator's process-wide tuning, and reused receive buffers."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import socket
from collections.abc import Callable
from typing import Literal

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's mallopt parameter


def one_malloc_arena() -> bool:
    """Make every thread allocate from glibc's main arena; False where that is not glibc.

    glibc gives each new thread an arena of its own, which only helps threads that allocate
    at the same time, and Python's threads take turns. With a second arena, a worker thread
    (the proxy encodes its bulk syncs in one) cannot reuse what the event loop's thread
    freed: every table it grows is fresh memory, whose pages are faulted in one by one, and
    the process keeps both arenas' free memory. Call it before any thread starts.
    """
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    ok = bool(mallopt(M_ARENA_MAX, 1))
    if not ok:
        log.debug("mallopt(M_ARENA_MAX, 1) refused")
    return ok


#: glibc's malloc_trim once looked up; False where the C library has none.
_trim: Callable[[int], int] | Literal[False] | None = None


def trim() -> bool:
    """Give the C heap's free pages back to the kernel (glibc ``malloc_trim(0)``).

    A full sync builds large tables and drops them; glibc keeps the freed memory mapped
    for reuse, so without a trim the resident set after a burst of churn stays near its
    peak. False where that is not glibc.
    """
    global _trim
    if _trim is None:
        name = ctypes.util.find_library("c")
        try:
            fn = ctypes.CDLL(name).malloc_trim if name else None
        except (OSError, AttributeError):  # not glibc
            fn = None
        if fn is not None:
            fn.argtypes = (ctypes.c_size_t,)
        _trim = fn if fn is not None else False
    if _trim is False:
        return False
    _trim(0)
    return True


class ReceiveBuffer:
    """One buffer for the replies to netlink dumps, mapped once and reused.

    ``sock.recv(1 << 20)`` makes a new megabyte object at every call (glibc maps it, the
    kernel writes into fresh pages, and it is unmapped again), which is most of the cost
    of reading thousands of small dumps. Here the pages are mapped on their first use and
    stay; each call copies out only what arrived. Not thread-safe: one per socket.
    """

    def __init__(self, size: int = 1 << 20) -> None:
        self._buf = mmap.mmap(-1, size)  # anonymous: no page is touched until written

    def recv(self, sock: socket.socket, flags: int = 0) -> bytes:
        """One datagram (a dump's reply is at most a few pages, far below the size)."""
        n = sock.recv_into(self._buf, 0, flags)
        return self._buf[:n]
