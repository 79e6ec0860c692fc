"""The informer's contract against the real API server (kube-apiserver, its controllers and
etcd from ``make controlplane``). It runs inside the lab guest, whose network and /run are
its own:

    kube-router-py lab exec --mem 2500M -- .venv/bin/python -m pytest tests/realcp

Anywhere else, or with the control plane not built, it is skipped with the reason.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

HOW = ("run them with: kube-router-py lab exec --mem 2500M -- "
       ".venv/bin/python -m pytest tests/realcp")


def _problem() -> str | None:
    if not os.environ.get("KUBE_ROUTER_LAB_OUT"):
        return f"not inside the lab guest; {HOW}"
    from kube_router_lab.realcp import binaries

    try:
        binaries.find()
    except (binaries.BinariesMissing, OSError, subprocess.CalledProcessError) as exc:
        return str(exc)
    return None


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    problem = _problem()
    if problem:
        pytest.skip(problem)
    from kube_router_lab.cluster import DAEMONSET_MANIFEST
    from kube_router_lab.realcp.control import RealControlPlane
    from kube_router_lab.spec import ClusterSpec

    spec = ClusterSpec()
    # The address the API server binds, on the guest's own loopback device.
    subprocess.run(["ip", "addr", "add", f"{spec.apiserver_ip()}/32", "dev", "lo"], check=True)
    cp = RealControlPlane(spec, workdir=Path(tmp_path_factory.mktemp("realcp")))
    try:
        cp.start()
        cp.install_agent_identity(DAEMONSET_MANIFEST)
        yield cp
    finally:
        cp.stop()
