"""Dual-stack Services with --enable-ipv6: an IPv6 virtual server beside the IPv4 one."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import Callable
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from kube_router_proxy_ipvs.controller import ProxyController
from kube_router_proxy_ipvs.service_netfilter import ServiceNetfilter

pytestmark = pytest.mark.kernel

VIP4, VIP6 = "10.96.0.70", "fd00:96::70"
POD4, POD6 = "10.252.0.2", "fd00:252::2"
NODE_IP6 = "fd00:77::10"

# Listens on both families (a v6 socket with IPV6_V6ONLY off) and echoes.
@pytest.fixture
def pod(clean_ipvs: None, sh: Callable[..., str], k8s: SimpleNamespace,
        echo_server: Callable[[str], object]) -> Iterator[None]:
    """The node's IPv4 and IPv6 addresses on a dummy link, and a dual-stack pod namespace."""
    sh(["ip", "link", "add", "px-node0", "type", "dummy"])
    sh(["ip", "addr", "add", f"{k8s.NODE_IP}/24", "dev", "px-node0"])
    sh(["ip", "addr", "add", f"{NODE_IP6}/64", "dev", "px-node0", "nodad"])
    sh(["ip", "link", "set", "px-node0", "up"])
    try:
        sh(["ip", "netns", "add", "px-v6pod"])
        sh(["ip", "link", "add", "px-v6veth", "type", "veth", "peer", "name", "eth0",
            "netns", "px-v6pod"])
        sh(["ip", "addr", "add", "10.252.0.1/24", "dev", "px-v6veth"])
        sh(["ip", "addr", "add", "fd00:252::1/64", "dev", "px-v6veth", "nodad"])
        sh(["ip", "link", "set", "px-v6veth", "up"])
        for argv in (["addr", "add", f"{POD4}/24", "dev", "eth0"],
                     ["addr", "add", f"{POD6}/64", "dev", "eth0", "nodad"],
                     ["link", "set", "eth0", "up"], ["link", "set", "lo", "up"],
                     ["route", "add", "default", "via", "10.252.0.1"],
                     ["-6", "route", "add", "default", "via", "fd00:252::1"]):
            sh(["ip", "-n", "px-v6pod", *argv])
        echo_server("px-v6pod")
        yield
    finally:
        subprocess.run(["ip", "netns", "del", "px-v6pod"], check=False)
        subprocess.run(["ip", "link", "del", "px-node0"], check=False)


def dual_service(k8s: SimpleNamespace, v6: bool = True) -> dict:
    obj = k8s.service("dual", VIP4, [("echo", "TCP", 80)])
    if v6:
        obj["spec"]["clusterIPs"] = [VIP4, VIP6]
        obj["spec"]["ipFamilies"] = ["IPv4", "IPv6"]
        obj["spec"]["ipFamilyPolicy"] = "PreferDualStack"
    return obj


def v6_slice(k8s: SimpleNamespace) -> dict:
    obj = k8s.endpointslice("dual", [POD6], [("echo", "TCP", 8080)], suffix="v6")
    obj["addressType"] = "IPv6"
    return obj


def node_dual(k8s: SimpleNamespace) -> dict:
    obj = k8s.node()
    obj["status"]["addresses"].append({"type": "InternalIP", "address": NODE_IP6})
    return obj


def dummy_addrs(sh: Callable[..., str], fam: str) -> set[str]:
    # the kernel's own link-local address is not a VIP
    out = sh(["ip", "-o", fam, "addr", "show", "dev", "kube-dummy-if"])
    return {w for w in (line.split()[3] for line in out.splitlines())
            if not w.startswith("fe80:")}


def roundtrip(addr: str, family: int) -> None:
    with socket.socket(family, socket.SOCK_STREAM) as c:
        c.settimeout(5)
        c.connect((addr, 80))
        c.sendall(b"hello\n")
        got = b""
        while len(got) < 6:
            chunk = c.recv(64)
            assert chunk, "connection closed"
            got += chunk
        assert got == b"hello\n"


def test_dual_stack_service(pod: None, k8s: SimpleNamespace, sh: Callable[..., str],
                            ipvs_rules: Callable[[], list[str]]) -> None:
    v4_rules = [f"-A -t {VIP4}:80 -s rr", f"-a -t {VIP4}:80 -r {POD4}:8080 -m -w 1"]
    v6_rules = [f"-A -t [{VIP6}]:80 -s rr", f"-a -t [{VIP6}]:80 -r [{POD6}]:8080 -m -w 1"]

    from kube_router_proxy_ipvs.cleanup import cleanup

    agent = k8s.make_agent("--enable-ipv6", "--service-cluster-ip-range", "fd00:96::/112")

    async def main() -> None:
        proxy = agent.startup.of("proxy")
        ctl = ProxyController(agent, proxy, ServiceNetfilter(proxy))
        k8s.put(agent, node_dual(k8s))
        k8s.put(agent, dual_service(k8s))
        k8s.put(agent, k8s.endpointslice("dual", [POD4], [("echo", "TCP", 8080)]))
        k8s.put(agent, v6_slice(k8s))
        await ctl.start()
        await ctl.sync(None)
        assert sorted(ipvs_rules()) == sorted(v4_rules + v6_rules)
        assert dummy_addrs(sh, "-6") == {f"{VIP6}/128"}
        assert dummy_addrs(sh, "-4") == {f"{VIP4}/32"}
        # host-originated traffic to the v6 VIP leaves from the node's IPv6 address (the
        # kernel's own local route, which has no source, is gone: ours is the only one)
        local = sh(["ip", "-6", "route", "show", "table", "local", VIP6])
        assert len(local.splitlines()) == 1, local
        route = sh(["ip", "-6", "route", "get", VIP6])
        assert f"src {NODE_IP6}" in route, route
        roundtrip(VIP4, socket.AF_INET)
        roundtrip(VIP6, socket.AF_INET6)
        # a second sync has nothing to do
        await ctl.sync(None)
        assert ctl.last_result.ops == 0
        # nor a restarted controller, which reads our route back
        proxy = agent.startup.of("proxy")
        ctl2 = ProxyController(agent, proxy, ServiceNetfilter(proxy))
        await ctl2.start()
        assert ctl2.dummy.addrs == {VIP4: k8s.NODE_IP, VIP6: NODE_IP6}
        await ctl2.sync(None)
        assert ctl2.last_result.ops == 0
        await ctl2.stop()

        # the Service goes single-stack: the v6 virtual server and VIP go, v4 stays
        k8s.put(agent, dual_service(k8s, v6=False))
        k8s.remove(agent, "EndpointSlice", "default/dual-v6")
        await ctl.sync(frozenset({"default/dual"}))
        assert sorted(ipvs_rules()) == sorted(v4_rules)
        assert dummy_addrs(sh, "-6") == set()
        assert sh(["ip", "-6", "route", "show", "table", "local", VIP6]) == ""
        assert dummy_addrs(sh, "-4") == {f"{VIP4}/32"}
        roundtrip(VIP4, socket.AF_INET)

        # dual-stack again, then the Service deleted: nothing of it left
        k8s.put(agent, dual_service(k8s))
        k8s.put(agent, v6_slice(k8s))
        await ctl.sync(frozenset({"default/dual"}))
        assert sorted(ipvs_rules()) == sorted(v4_rules + v6_rules)
        roundtrip(VIP6, socket.AF_INET6)
        assert f"src {NODE_IP6}" in sh(["ip", "-6", "route", "get", VIP6])
        k8s.remove(agent, "Service", "default/dual")
        await ctl.sync(frozenset({"default/dual"}))
        assert ipvs_rules() == []
        assert dummy_addrs(sh, "-6") == set() and dummy_addrs(sh, "-4") == set()
        await ctl.stop()

    try:
        asyncio.run(main())
        assert "inet6:kube-router-svip" in sh(["ipset", "list", "-n"])
        assert "KUBE-ROUTER-SERVICES" in sh(["ip6tables-legacy-save"])
    finally:
        # also after a failure: later tests expect no chains or sets of ours. Cleanup run
        # without --enable-ipv6 removes the IPv6 side too (the flags may have changed since).
        asyncio.run(cleanup(k8s.make_agent().startup.of("proxy")))
    assert "KUBE-ROUTER" not in sh(["ip6tables-legacy-save"])
    assert "kube-router" not in sh(["ipset", "list", "-n"])
