"""``--cleanup-config``: remove exactly what the proxy made.

IPVS services are deleted only when they are in the proxy's ranges (and not in
--excluded-cidrs) or on kube-dummy-if; other tools' services stay. Then the chains, jumps
and sets of :mod:`service_netfilter`, and the dummy link itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from kube_router_proxy_ipvs import desired as dz
from kube_router_proxy_ipvs import ipvs_netlink as nl
from kube_router_proxy_ipvs.dummy_if import DummyInterface
from kube_router_proxy_ipvs.dummy_if import delete_link
from kube_router_proxy_ipvs.dummy_if import local_addresses
from kube_router_proxy_ipvs.service_netfilter import cleanup_netfilter
from kube_router_proxy_ipvs.settings import ProxySettings
from kube_router_proxy_ipvs.status import NAMES_FILE

log = logging.getLogger(__name__)


def delete_ipvs_services(owned: Callable[[nl.ServiceKey], bool], who: str) -> int:
    """Delete the IPVS services ``owned`` picks (fwmark services are never ours); the
    number deleted. Used by this clean-up and by kube-proxy's (``who`` names it in logs)."""
    try:
        sock = nl.IPVSSocket()
    except OSError as exc:
        log.info("no ipvs to clean error=%s", exc)
        return 0
    with sock:
        ops = [nl.del_service(s.key) for s in sock.services(stats=False)
               if s.key is not None and owned(s.key)]
        failures = sock.apply(ops)
    for op, err in failures:
        log.warning("%s ipvs service kept op=%r error=%s", who, op.desc, err.strerror)
    return len(ops) - len(failures)


async def cleanup(proxy: ProxySettings) -> None:
    settings = proxy.desired()
    dummy = DummyInterface()
    dummy_addrs: set[str] = set()
    try:
        from pyroute2 import AsyncIPRoute

        async with AsyncIPRoute() as ipr:
            found = await ipr.link_lookup(ifname=dummy.name)
        if found:
            await dummy.load()
            dummy_addrs = set(dummy.addrs)
    except Exception as exc:
        log.warning("cleanup cannot read link name=%s error=%s", dummy.name, exc)
    node_ips = await local_addresses()
    deleted = await asyncio.to_thread(
        delete_ipvs_services, lambda key: dz.owns(key, settings, node_ips, dummy_addrs),
        "cleanup")
    # Both families whatever the flags say now: the node may have run with the other one.
    await cleanup_netfilter([4, 6])
    try:
        removed = await delete_link()
    except Exception as exc:
        log.warning("cleanup cannot delete link name=%s error=%s", dummy.name, exc)
        removed = False
    NAMES_FILE.unlink(missing_ok=True)
    log.info("proxy cleanup done ipvs_services=%d dummy_link_removed=%s", deleted, removed)
