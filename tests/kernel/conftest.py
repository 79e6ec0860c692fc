"""The kernel tier: tests that need a kernel with IPVS, dummy links and root. They run inside
the lab guest:

    kube-router-py lab exec -- .venv/bin/python -m pytest tests/kernel

Anywhere else they are skipped, with the reason.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

HOW = "run them with: kube-router-py lab exec -- .venv/bin/python -m pytest tests/kernel"


def _kernel_problem() -> str | None:
    if os.geteuid() != 0:
        return f"kernel tests need root; {HOW}"
    if not Path("/proc/net/ip_vs").exists():
        return f"not inside a kernel with IPVS; {HOW}"
    if not Path("/sys/module/dummy").exists():
        return f"no dummy links in this kernel; {HOW}"
    return None


KERNEL_PROBLEM = _kernel_problem()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if KERNEL_PROBLEM is None:
        return
    here = str(Path(__file__).parent)
    skip = pytest.mark.skip(reason=KERNEL_PROBLEM)
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(skip)


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace (lo up) for one test, deleted afterwards."""
    name = f"kt-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True,
                       capture_output=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)
