"""``--cleanup-config`` for the router: only what it made."""

from __future__ import annotations

import logging
from pathlib import Path

from kube_router_routing_bgp.kernel_routes import RouteTable
from kube_router_routing_bgp.overlay import remove_all_tunnels
from kube_router_routing_bgp.pod_network import CONFLIST_NAME
from kube_router_routing_bgp.pod_network import delete_bridge_if_ours
from kube_router_routing_bgp.route_sync import RouteInstaller

log = logging.getLogger(__name__)


async def cleanup(cni_conf_dir: str) -> None:
    table = RouteTable()
    try:
        removed = await RouteInstaller(table).remove_all()
    finally:
        table.close()
    log.info("cleanup routes removed=%d protocol=17", removed)
    tunnels = await remove_all_tunnels()
    if tunnels:
        log.info("cleanup tunnels removed=%d", tunnels)
    if await delete_bridge_if_ours():
        log.info("cleanup bridge removed name=kube-bridge")
    conf = Path(cni_conf_dir) / CONFLIST_NAME
    if conf.exists():
        conf.unlink()
        log.info("cleanup cni configuration removed path=%s", conf)
    try:
        from kube_router_routing_bgp.egress import cleanup_egress
    except ImportError:
        return
    await cleanup_egress()
