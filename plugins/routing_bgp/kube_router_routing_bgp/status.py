"""``kube-router-py status`` for the router: gobgpd's peers and the learned kernel routes."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from kube_router.status import StatusSection
from kube_router_routing_bgp.gobgpd import Gobgpd
from kube_router_routing_bgp.gobgpd import GobgpError
from kube_router_routing_bgp.gobgpd import format_uptime
from kube_router_routing_bgp.kernel_routes import RT_TABLE_MAIN
from kube_router_routing_bgp.kernel_routes import RouteTable

if TYPE_CHECKING:
    from kube_router_routing_bgp.settings import RouterSettings


async def peers_section(config: RouterSettings) -> StatusSection:
    section = StatusSection("BGP peers", ["Peer", "AS", "Up/Down", "State", "#Received",
                                          "Accepted"])
    if not config.gobgp_admin_port:
        section.note = "gobgpd's admin API is off (--gobgp-admin-port 0)"
        return section
    client = Gobgpd(api_host=f"{config.gobgp_admin_address}:{config.gobgp_admin_port}")
    client.connect()
    try:
        peers = await client.list_peers()
    except GobgpError as exc:
        section.note = f"gobgpd not reachable at {client.api_host}: {exc}"
        return section
    finally:
        await client._close_channel()
    for p in sorted(peers, key=lambda p: p.address):
        section.rows.append([p.address, str(p.asn), format_uptime(p.uptime), p.state,
                             str(p.received), str(p.accepted)])
    return section


def routes_section() -> StatusSection:
    section = StatusSection("Routes learned over BGP (proto 17)", ["Destination", "Via"])
    table = RouteTable()
    try:
        routes = [r for r in table.dump() if r.table == RT_TABLE_MAIN]
    finally:
        table.close()
    for r in sorted(routes, key=lambda r: r.dst):
        section.rows.append([r.dst, r.gateway or f"dev index {r.oif}"])
    return section


async def status(config: RouterSettings) -> list[StatusSection]:
    peers = await peers_section(config)
    routes = await asyncio.to_thread(routes_section)
    return [peers, routes]
