"""Kernel tests of the proxy: they need root and a kernel with IPVS (the lab guest)."""

from __future__ import annotations

import os
import sys

import pytest

# With --import-mode=importlib a test directory is not importable by itself; the tests
# share helper modules beside this file.
sys.path.insert(0, os.path.dirname(__file__))
from proxy_kernel_helpers import run

from kube_router_proxy_ipvs import ipvs_netlink as nl


def _ipvs_available() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    try:
        with nl.IPVSSocket():
            return None
    except OSError as exc:
        return f"no IPVS in this kernel ({exc}); run inside the lab guest"


_REASON = _ipvs_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _REASON is None:
        return
    skip = pytest.mark.skip(reason=_REASON)
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(skip)


@pytest.fixture
def clean_ipvs():
    """Start and end with an empty IPVS table (tests own the whole guest)."""
    run(["ipvsadm", "-C"])
    yield
    run(["ipvsadm", "-C"])
