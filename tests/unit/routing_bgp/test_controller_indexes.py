"""The router reads EndpointSlices by Service when it advertises Service VIPs: it must
declare that index itself, also when the proxy (which declares the same one) is not enabled."""

from __future__ import annotations

import kube_router_proxy_ipvs.plugin as proxy_plugin
import kube_router_routing_bgp.plugin as router_plugin
from kube_router import cli
from kube_router import plugins
from kube_router.agent import Agent
from kube_router.kube.records import slice_service
from kube_router.settings import Flags


def _agent(enable: list[str], *argv: str) -> Agent:
    pm = plugins.new_manager()
    plugins.register(pm, "router", router_plugin)
    plugins.register(pm, "proxy", proxy_plugin)
    flags = Flags(cli.build_parser(pm).parse_args(["--hostname-override", "n1", *argv]))
    agent = Agent.from_flags(flags, pm, enable)
    agent.build()
    return agent


def test_the_router_alone_declares_the_slice_index_it_reads() -> None:
    agent = _agent(["router"], "--advertise-cluster-ip")
    [router] = agent.controllers
    assert "EndpointSlice" in router.kinds
    assert agent.store("EndpointSlice")._index_funcs == {"service": slice_service}


def test_router_and_proxy_share_one_slice_index() -> None:
    agent = _agent(["proxy", "router"], "--advertise-cluster-ip")
    assert {c.name for c in agent.controllers} >= {"proxy", "router"}
    assert agent.store("EndpointSlice")._index_funcs == {"service": slice_service}


def test_the_router_without_advertising_reads_no_slices() -> None:
    agent = _agent(["router"])
    [router] = agent.controllers
    assert "EndpointSlice" not in router.kinds
    assert not agent.store("EndpointSlice")._index_funcs
