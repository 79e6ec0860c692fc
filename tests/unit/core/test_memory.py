import socket
import subprocess
import sys

import pytest

# A worker thread allocates, then glibc's malloc_stats() lists the arenas on stderr.
_PROBE = """
import ctypes, ctypes.util, sys, threading
from kube_router.linux.memory import one_malloc_arena
if sys.argv[1] == "one":
    assert one_malloc_arena()
kept = []
t = threading.Thread(target=lambda: kept.append(bytearray(1 << 20)))
t.start(); t.join()
ctypes.CDLL(ctypes.util.find_library("c")).malloc_stats()
"""


def _arenas(mode: str) -> int:
    proc = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True,
                          text=True, check=True)
    return sum(line.startswith("Arena ") for line in proc.stderr.splitlines())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_worker_thread_allocates_from_the_main_arena() -> None:
    if _arenas("default") < 2:
        pytest.skip("this C library does not give threads arenas of their own")
    assert _arenas("one") == 1



def test_receive_buffer_returns_each_datagram_whole() -> None:
    from kube_router.linux.memory import ReceiveBuffer

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        buf = ReceiveBuffer(size=64 * 1024)
        a.send(b"x" * 40000)
        a.send(b"short")
        assert buf.recv(b) == b"x" * 40000
        assert buf.recv(b) == b"short"  # nothing left over from the longer one


def test_trim_returns_the_heap_s_free_pages_where_glibc_is():
    from kube_router.linux.memory import trim

    blocks = [bytearray(200_000) for _ in range(200)]  # ~40 MB from malloc (not pymalloc)
    del blocks
    import platform

    glibc = platform.libc_ver()[0] == "glibc"
    assert trim() is glibc
    assert trim() is glibc  # resolved once, the same answer every time
