"""The proxy controller against the kernel: IPVS, kube-dummy-if, iptables and ipsets."""

from __future__ import annotations

import asyncio

import pytest
from proxy_fixtures import NODE_IP
from proxy_fixtures import endpointslice
from proxy_fixtures import make_agent
from proxy_fixtures import node
from proxy_fixtures import put
from proxy_fixtures import remove
from proxy_fixtures import service
from proxy_kernel_helpers import ipvsadm_rules
from proxy_kernel_helpers import run

from kube_router_proxy_ipvs.controller import ProxyController
from kube_router_proxy_ipvs.firewall import ServiceFirewall

pytestmark = pytest.mark.kernel

FOREIGN = ["-A -t 172.16.0.1:80 -s rr", "-a -t 172.16.0.1:80 -r 172.16.1.1:80 -m -w 1",
           "-A -t 10.96.200.1:80 -s rr"]  # the second is in the range but --excluded-cidrs


@pytest.fixture
def world(clean_ipvs: None):
    """A node link with the node IP, a foreign IPVS service, ipset and iptables rule."""
    run(["ip", "link", "add", "px-node0", "type", "dummy"])
    run(["ip", "addr", "add", f"{NODE_IP}/24", "dev", "px-node0"])
    run(["ip", "link", "set", "px-node0", "up"])
    run(["ipvsadm", "-R"], stdin="\n".join(FOREIGN) + "\n")
    run(["ipset", "create", "foreign-set", "hash:ip"])
    run(["iptables-legacy", "-t", "nat", "-A", "POSTROUTING", "-s", "1.2.3.4", "-j", "ACCEPT"])
    run(["iptables-legacy", "-A", "INPUT", "-s", "1.2.3.4", "-j", "ACCEPT"])
    yield
    run(["ip", "link", "del", "px-node0"])
    run(["ipset", "destroy", "foreign-set"])
    run(["iptables-legacy", "-t", "nat", "-D", "POSTROUTING", "-s", "1.2.3.4", "-j", "ACCEPT"])
    run(["iptables-legacy", "-D", "INPUT", "-s", "1.2.3.4", "-j", "ACCEPT"])


def _foreign_intact() -> None:
    rules = ipvsadm_rules()
    for line in FOREIGN:
        assert line in rules
    assert "foreign-set" in run(["ipset", "list", "-n"])
    assert "-A POSTROUTING -s 1.2.3.4/32 -j ACCEPT" in run(["iptables-legacy-save", "-t", "nat"])
    assert "-A INPUT -s 1.2.3.4/32 -j ACCEPT" in run(["iptables-legacy-save", "-t", "filter"])


def _ours() -> list[str]:
    return [r for r in ipvsadm_rules() if r not in FOREIGN]


def _dummy_addrs() -> set[str]:
    out = run(["ip", "-o", "-4", "addr", "show", "dev", "kube-dummy-if"])
    return {line.split()[3] for line in out.splitlines()}


async def _controller(*args: str) -> ProxyController:
    agent = make_agent("--excluded-cidrs", "10.96.200.0/24", *args)
    ctl = ProxyController(agent, ServiceFirewall(agent.config))
    put(agent, node())
    put(agent, service("web", "10.96.0.10", [("http", "TCP", 80)], type="NodePort"))
    put(agent, endpointslice("web", ["10.2.0.5", "10.2.0.6"], [("http", "TCP", 8080)]))
    put(agent, service("dns", "10.96.0.53", [("dns", "UDP", 53), ("dns-tcp", "TCP", 53)]))
    put(agent, endpointslice("dns", ["10.2.0.7"], [("dns", "UDP", 5353), ("dns-tcp", "TCP", 5353)]))
    put(agent, service("headless", "None", [("x", "TCP", 80)]))
    await ctl.start()
    return ctl


def test_full_sync_then_second_sync_is_empty(world: None) -> None:
    async def main() -> None:
        ctl = await _controller()
        await ctl.sync(None)
        assert sorted(_ours()) == sorted([
            "-A -t 10.96.0.10:80 -s rr",
            "-a -t 10.96.0.10:80 -r 10.2.0.5:8080 -m -w 1",
            "-a -t 10.96.0.10:80 -r 10.2.0.6:8080 -m -w 1",
            f"-A -t {NODE_IP}:30080 -s rr",
            f"-a -t {NODE_IP}:30080 -r 10.2.0.5:8080 -m -w 1",
            f"-a -t {NODE_IP}:30080 -r 10.2.0.6:8080 -m -w 1",
            "-A -u 10.96.0.53:53 -s rr",
            "-a -u 10.96.0.53:53 -r 10.2.0.7:5353 -m -w 1",
            "-A -t 10.96.0.53:53 -s rr",
            "-a -t 10.96.0.53:53 -r 10.2.0.7:5353 -m -w 1",
        ])
        assert _dummy_addrs() == {"10.96.0.10/32", "10.96.0.53/32"}
        await ctl.sync(None)
        assert ctl.last_result.ops == 0
        # a fresh controller (an agent restart) reads the kernel and has nothing to do
        ctl2 = await _controller()
        await ctl2.sync(None)
        assert ctl2.last_result.ops == 0
        assert ctl2.firewall is not None and ctl2.firewall.writes == 0
        _foreign_intact()
        nat = run(["iptables-legacy-save", "-t", "nat"])
        assert "-A KUBE-ROUTER-IPVS-SNAT ! -s 10.2.0.0/24 -m ipvs --vdir ORIGINAL " \
               "--vmethod MASQ -j MASQUERADE" in nat
        svip = run(["ipset", "list", "kube-router-svip-prt"])
        assert "10.96.0.53,udp:53" in svip and f"{NODE_IP},tcp:30080" in svip
        assert NODE_IP in run(["ipset", "list", "kube-router-local-ips"])
        assert "10.96.0.10" not in run(["ipset", "list", "kube-router-local-ips"])
        filt = run(["iptables-legacy-save", "-t", "filter"])
        assert filt.count("-j KUBE-ROUTER-SERVICES") == 1
        assert nat.count("-j KUBE-ROUTER-HAIRPIN") == 1
        await ctl.stop()
        await ctl2.stop()

    asyncio.run(main())


def test_partial_sync_touches_one_service(world: None) -> None:
    async def main() -> None:
        ctl = await _controller()
        await ctl.sync(None)
        agent = ctl.agent
        put(agent, endpointslice("web", ["10.2.0.5", "10.2.0.8"], [("http", "TCP", 8080)]))
        await ctl.sync(frozenset({"default/web"}))
        # one dest added and one removed, on both the ClusterIP and the NodePort
        assert ctl.last_result.ops == 4
        rules = _ours()
        assert "-a -t 10.96.0.10:80 -r 10.2.0.8:8080 -m -w 1" in rules
        assert "-a -t 10.96.0.10:80 -r 10.2.0.6:8080 -m -w 1" not in rules
        # session affinity: changed in place
        put(agent, service("web", "10.96.0.10", [("http", "TCP", 80)], type="NodePort",
                           sessionAffinity="ClientIP"))
        await ctl.sync(frozenset({"default/web"}))
        assert ctl.last_result.ops == 2
        assert "-A -t 10.96.0.10:80 -s rr -p 10800" in _ours()
        # deleting the Service removes its VIP and virtual servers only
        remove(agent, "Service", "default/web")
        await ctl.sync(frozenset({"default/web"}))
        assert not [r for r in _ours() if "10.96.0.10" in r or "30080" in r]
        assert _dummy_addrs() == {"10.96.0.53/32"}
        assert "-A -u 10.96.0.53:53 -s rr" in _ours()
        _foreign_intact()
        await ctl.stop()

    asyncio.run(main())


def test_cleanup_removes_only_ours(world: None) -> None:
    async def main() -> None:
        ctl = await _controller()
        await ctl.sync(None)
        await ctl.stop()
        from kube_router_proxy_ipvs.cleanup import cleanup

        await cleanup(ctl.agent.config)

    asyncio.run(main())
    assert _ours() == []
    _foreign_intact()
    assert "kube-dummy-if" not in run(["ip", "-o", "link"])
    assert "KUBE-ROUTER" not in run(["iptables-legacy-save"])
    assert "kube-router" not in run(["ipset", "list", "-n"])
