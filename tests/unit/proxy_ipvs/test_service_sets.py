"""The proxy's ipsets between full syncs: the members a partial sync moves, and the record
of them it keeps."""

from __future__ import annotations

import asyncio
import socket

from kube_router.settings import CoreSettings
from kube_router.settings import parse
from kube_router_proxy_ipvs import ipvs_netlink as nl
from kube_router_proxy_ipvs import settings
from kube_router_proxy_ipvs.desired import Dests
from kube_router_proxy_ipvs.desired import ServiceState
from kube_router_proxy_ipvs.desired import VirtualServer
from kube_router_proxy_ipvs.service_netfilter import ServiceNetfilter


def _state(vip: str, port: int) -> ServiceState:
    key = nl.ServiceKey(socket.AF_INET, socket.IPPROTO_TCP, vip, port)
    return ServiceState(servers=(VirtualServer(key, nl.ServiceAttrs(), Dests((), port)),),
                        vips=(vip,))


def test_a_partial_sync_moves_only_the_difference_into_the_record_it_holds() -> None:
    flags = parse([], settings.add_options)
    nf = ServiceNetfilter(settings.ProxySettings.from_flags(flags, CoreSettings.from_flags(flags)))
    nf.local_ips = {"192.168.1.1"}
    sent: list[tuple[str, str, bool]] = []

    async def change_many(moves: list[tuple[str, str, bool]]) -> None:
        sent.extend(moves)

    nf._members.change_many = change_many  # type: ignore[method-assign]
    a, b, c = _state("10.96.0.1", 80), _state("10.96.0.2", 53), _state("10.96.0.3", 443)
    before = nf._set_members([a, b], 4)
    nf._sets.update(before)
    asyncio.run(nf._sync_sets([a, c], 4, full=False))
    assert sorted(sent) == sorted([
        ("kube-router-svip", "10.96.0.2", False), ("kube-router-svip", "10.96.0.3", True),
        ("kube-router-svip-prt", "10.96.0.2,tcp:53", False),
        ("kube-router-svip-prt", "10.96.0.3,tcp:443", True)])
    assert nf._sets == nf._set_members([a, c], 4)
    # the same set objects, changed in place (the sync's own copy of every member dies)
    assert all(nf._sets[name] is members for name, members in before.items())
