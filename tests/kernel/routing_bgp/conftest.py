"""Kernel tests of the router: real gobgpd, BIRD and kernel routes in network namespaces.

They need root and create their own namespaces; run them in the lab guest
(``kube-router-py lab exec -- .venv/bin/python -m pytest tests/kernel/routing_bgp``).
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator

import pytest

# With --import-mode=importlib a test directory is not importable by itself; the tests
# share one helpers module beside this file.
sys.path.insert(0, os.path.dirname(__file__))

from bgp_kernel_helpers import Pair
from bgp_kernel_helpers import ip


def _reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("gobgpd", "ip"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    return None


_REASON = _reason()


@pytest.fixture(autouse=True)
def _kernel_prerequisites() -> None:
    """Skip, with the reason, where this directory's tests cannot run."""
    if _REASON is not None:
        pytest.skip(_REASON)


@pytest.fixture
def pair() -> Iterator[Pair]:
    tag = uuid.uuid4().hex[:6]
    p = Pair(a=f"krt-a-{tag}", b=f"krt-b-{tag}")
    ip("netns", "add", p.a)
    ip("netns", "add", p.b)
    try:
        ip("-n", p.a, "link", "add", "name", "eth0", "type", "veth", "peer", "name", "eth0",
           "netns", p.b)
        for ns, addr in ((p.a, p.ip_a), (p.b, p.ip_b)):
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield p
    finally:
        for ns in (p.a, p.b):
            # Our gobgpd/bird children are stopped by the tests; deleting the namespace
            # removes its links and routes.
            ip("netns", "del", ns, check=False)
