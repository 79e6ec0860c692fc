"""kube-router-local-ips follows the node's addresses between full syncs: a link that comes
with an address (the router's kube-bridge) is seen within a second, and so is its going."""

from __future__ import annotations

import asyncio
import subprocess
from types import SimpleNamespace

import pytest

from kube_router_proxy_ipvs.addr_watch import AddressWatch
from kube_router_proxy_ipvs.service_netfilter import ServiceNetfilter

pytestmark = pytest.mark.kernel
LINK = "kt-aw-bridge"
ADDR = "192.0.2.77"


async def _watch_one_link(nf: ServiceNetfilter) -> list[tuple[bool, frozenset[str]]]:
    await nf.refresh_local_ips()
    seen: list[tuple[bool, frozenset[str]]] = []
    changed = asyncio.Event()

    async def on_change() -> None:
        seen.append((await nf.refresh_local_ips(), frozenset(nf.local_ips)))
        if seen[-1][0]:
            changed.set()

    watch = AddressWatch(on_change)
    watch.start()
    try:
        assert ADDR not in nf.local_ips
        subprocess.run(["ip", "link", "add", LINK, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", f"{ADDR}/24", "dev", LINK], check=True)
        subprocess.run(["ip", "link", "set", LINK, "up"], check=True)
        await asyncio.wait_for(changed.wait(), 5)
        changed.clear()
        subprocess.run(["ip", "link", "del", LINK], check=True)
        await asyncio.wait_for(changed.wait(), 5)
    finally:
        watch.close()
        subprocess.run(["ip", "link", "del", LINK], check=False, capture_output=True)
    return seen


def test_local_ips_follow_a_link_that_comes_and_goes(k8s: SimpleNamespace) -> None:
    nf = ServiceNetfilter(k8s.make_agent().startup.of("proxy"))
    seen = asyncio.run(_watch_one_link(nf))
    changes = [ips for changed, ips in seen if changed]
    assert ADDR in changes[0]
    assert ADDR not in changes[-1]
