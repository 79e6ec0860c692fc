"""Kernel tests of the lab cluster: they build namespaces, bridges and veths, so they run
only where that is safe: inside the lab guest (``kube-router-py lab exec``), or in a network
namespace of their own (``unshare -n``) whose only interface is ``lo``, never next to a
machine's real interfaces."""

from __future__ import annotations

import os
import shutil
import socket

import pytest


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if os.environ.get("KUBE_ROUTER_LAB_KERNEL"):
        return None
    if any(name != "lo" for _, name in socket.if_nameindex()):
        return "run inside the lab guest: kube-router-py lab exec -- pytest tests/kernel/lab"
    if not shutil.which("ip"):
        return "needs iproute2"
    return None


_REASON = _skip_reason()


@pytest.fixture(autouse=True)
def _kernel_prerequisites() -> None:
    """Skip, with the reason, where this directory's tests cannot run."""
    if _REASON is not None:
        pytest.skip(_REASON)


