"""The lab tier: scenarios and the guest, driven through the ``kube-router-py lab`` command
on this machine (it boots the guest kernel itself). Skipped, with the reason, where the guest
cannot run."""

from __future__ import annotations

import pytest
from labtools import guest_problem
from labtools import kube_router_py


@pytest.fixture(scope="session")
def lab_cmd() -> list[str]:
    problem = guest_problem()
    if problem:
        pytest.skip(problem)
    return kube_router_py()
