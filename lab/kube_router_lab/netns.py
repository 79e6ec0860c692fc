"""Network namespaces by name: enter one in the calling thread, open sockets and run
commands inside it.

Linux keeps the network namespace per thread, so a thread may enter a namespace, create a
socket (which stays bound to that namespace for its whole life) and come back, while the
other threads of the process are unaffected. A child process started from such a thread is
born in that namespace, which saves the extra ``ip netns exec`` process per command.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path

from kube_router.linux.netlink import setns as _setns

NETNS_DIR = Path("/run/netns")


def path_of(netns: str) -> Path:
    return NETNS_DIR / netns


def exists(netns: str) -> bool:
    return path_of(netns).exists()


@contextlib.contextmanager
def entered(netns: str | None) -> Iterator[None]:
    """Run the body with the calling thread inside ``netns`` (None: stay where we are)."""
    if netns is None:
        yield
        return
    try:
        target = os.open(path_of(netns), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KeyError(f"network namespace {netns!r} does not exist") from None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            # Going home must not fail silently: a thread left in a pod's namespace would
            # quietly send everything it does later from the wrong place.
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def socket_in(netns: str | None, family: int = socket.AF_INET,
              type: int = socket.SOCK_STREAM, proto: int = 0) -> socket.socket:
    """A socket created inside ``netns``; it keeps working there from any thread."""
    with entered(netns):
        return socket.socket(family, type, proto)


def popen_in(netns: str | None, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
             **kwargs: object) -> subprocess.Popen:
    """Start ``argv`` inside ``netns``; the child inherits this thread's namespace."""
    with entered(netns):
        return subprocess.Popen(list(argv), env=None if env is None else dict(env),
                                **kwargs)  # type: ignore[call-overload]


def run_in(netns: str | None, argv: Sequence[str], *, timeout: float = 30.0,
           input: bytes | None = None,
           env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``argv`` inside ``netns``: (exit status, stdout, stderr). A timeout is rc 124."""
    proc = popen_in(netns, argv, env=env, stdin=subprocess.PIPE if input is not None
                    else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return 124, out.decode(errors="replace"), (err.decode(errors="replace")
                                                  + f"\ntimed out after {timeout:g} s")
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def write_sysctl(netns: str | None, key: str, value: str) -> None:
    """Set a per-namespace sysctl (``net.ipv4.ip_forward``) as seen from ``netns``."""
    # /proc/sys/net resolves against the opening thread's namespace.
    with entered(netns):
        Path("/proc/sys", *key.split(".")).write_text(value)


def inode(netns: str) -> tuple[int, int]:
    """(device, inode) naming the namespace; /proc/PID/ns/net of its members matches it."""
    st = os.stat(path_of(netns))
    return st.st_dev, st.st_ino


def pids_in(netns: str) -> list[int]:
    """PIDs of the processes living in ``netns``."""
    want = inode(netns)
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == want:
            found.append(int(entry.name))
    return found
