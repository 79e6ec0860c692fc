"""The IPVS port-reuse mode follows the kernel, as kube-proxy's does."""

from __future__ import annotations

import pytest

from kube_router_proxy_ipvs.service_netfilter import conn_reuse_mode


@pytest.mark.parametrize(("release", "mode"), [
    ("6.1.176", 1), ("5.9.0-1-amd64", 1), ("5.10.0-28-cloud-amd64", 1), ("10.0", 1),
    ("5.8.18", 0), ("4.19.0-26-amd64", 0), ("unknown", 0),
])
def test_reused_ports_rescheduled_where_the_kernel_does_it_without_a_stall(
        release: str, mode: int) -> None:
    assert conn_reuse_mode(release) == mode
