"""Process-wide tuning of the C allocator."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

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
