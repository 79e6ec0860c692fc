"""The proxy controller against the kernel: IPVS, kube-dummy-if, iptables and ipsets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from kube_router_proxy_ipvs.controller import ProxyController
from kube_router_proxy_ipvs.firewall import ServiceFirewall

pytestmark = pytest.mark.kernel

FOREIGN = ["-A -t 172.16.0.1:80 -s rr", "-a -t 172.16.0.1:80 -r 172.16.1.1:80 -m -w 1",
           "-A -t 10.96.200.1:80 -s rr"]  # the second is in the range but --excluded-cidrs


class World:
    """A node link with the node IP, and a foreign IPVS service, ipset and iptables rule."""

    def __init__(self, sh: Callable[..., str], ipvs_rules: Callable[[], list[str]],
                 k8s: SimpleNamespace) -> None:
        self.sh = sh
        self.rules = ipvs_rules
        self.k8s = k8s
        self.NODE_IP = k8s.NODE_IP

    def foreign_intact(self) -> None:
        rules = self.rules()
        for line in FOREIGN:
            assert line in rules
        assert "foreign-set" in self.sh(["ipset", "list", "-n"])
        assert "-A POSTROUTING -s 1.2.3.4/32 -j ACCEPT" in self.sh(
            ["iptables-legacy-save", "-t", "nat"])
        assert "-A INPUT -s 1.2.3.4/32 -j ACCEPT" in self.sh(
            ["iptables-legacy-save", "-t", "filter"])

    def ours(self) -> list[str]:
        return [r for r in self.rules() if r not in FOREIGN]

    def dummy_addrs(self) -> set[str]:
        out = self.sh(["ip", "-o", "-4", "addr", "show", "dev", "kube-dummy-if"])
        return {line.split()[3] for line in out.splitlines()}

    async def controller(self, *args: str) -> ProxyController:
        k = self.k8s
        agent = k.make_agent("--excluded-cidrs", "10.96.200.0/24", *args)
        ctl = ProxyController(agent, ServiceFirewall(agent.config))
        k.put(agent, k.node())
        k.put(agent, k.service("web", "10.96.0.10", [("http", "TCP", 80)], type="NodePort"))
        k.put(agent, k.endpointslice("web", ["10.2.0.5", "10.2.0.6"], [("http", "TCP", 8080)]))
        k.put(agent, k.service("dns", "10.96.0.53", [("dns", "UDP", 53), ("dns-tcp", "TCP", 53)]))
        k.put(agent, k.endpointslice("dns", ["10.2.0.7"],
                                     [("dns", "UDP", 5353), ("dns-tcp", "TCP", 5353)]))
        k.put(agent, k.service("headless", "None", [("x", "TCP", 80)]))
        await ctl.start()
        return ctl


@pytest.fixture
def world(clean_ipvs: None, sh: Callable[..., str], ipvs_rules: Callable[[], list[str]],
          k8s: SimpleNamespace) -> Iterator[World]:
    ip = k8s.NODE_IP
    sh(["ip", "link", "add", "px-node0", "type", "dummy"])
    sh(["ip", "addr", "add", f"{ip}/24", "dev", "px-node0"])
    sh(["ip", "link", "set", "px-node0", "up"])
    sh(["ipvsadm", "-R"], stdin="\n".join(FOREIGN) + "\n")
    sh(["ipset", "create", "foreign-set", "hash:ip"])
    sh(["iptables-legacy", "-t", "nat", "-A", "POSTROUTING", "-s", "1.2.3.4", "-j", "ACCEPT"])
    sh(["iptables-legacy", "-A", "INPUT", "-s", "1.2.3.4", "-j", "ACCEPT"])
    yield World(sh, ipvs_rules, k8s)
    sh(["ip", "link", "del", "px-node0"])
    sh(["ipset", "destroy", "foreign-set"])
    sh(["iptables-legacy", "-t", "nat", "-D", "POSTROUTING", "-s", "1.2.3.4", "-j", "ACCEPT"])
    sh(["iptables-legacy", "-D", "INPUT", "-s", "1.2.3.4", "-j", "ACCEPT"])


def test_full_sync_then_second_sync_is_empty(world: World) -> None:
    async def main() -> None:
        ctl = await world.controller()
        await ctl.sync(None)
        assert sorted(world.ours()) == sorted([
            "-A -t 10.96.0.10:80 -s rr",
            "-a -t 10.96.0.10:80 -r 10.2.0.5:8080 -m -w 1",
            "-a -t 10.96.0.10:80 -r 10.2.0.6:8080 -m -w 1",
            f"-A -t {world.NODE_IP}:30080 -s rr",
            f"-a -t {world.NODE_IP}:30080 -r 10.2.0.5:8080 -m -w 1",
            f"-a -t {world.NODE_IP}:30080 -r 10.2.0.6:8080 -m -w 1",
            "-A -u 10.96.0.53:53 -s rr",
            "-a -u 10.96.0.53:53 -r 10.2.0.7:5353 -m -w 1",
            "-A -t 10.96.0.53:53 -s rr",
            "-a -t 10.96.0.53:53 -r 10.2.0.7:5353 -m -w 1",
        ])
        assert world.dummy_addrs() == {"10.96.0.10/32", "10.96.0.53/32"}
        await ctl.sync(None)
        assert ctl.last_result.ops == 0
        # a fresh controller (an agent restart) reads the kernel and has nothing to do
        ctl2 = await world.controller()
        await ctl2.sync(None)
        assert ctl2.last_result.ops == 0
        assert ctl2.firewall is not None and ctl2.firewall.writes == 0
        world.foreign_intact()
        nat = world.sh(["iptables-legacy-save", "-t", "nat"])
        assert "-A KUBE-ROUTER-IPVS-SNAT ! -s 10.2.0.0/24 -m ipvs --vdir ORIGINAL " \
               "--vmethod MASQ -j MASQUERADE" in nat
        svip = world.sh(["ipset", "list", "kube-router-svip-prt"])
        assert "10.96.0.53,udp:53" in svip and f"{world.NODE_IP},tcp:30080" in svip
        assert world.NODE_IP in world.sh(["ipset", "list", "kube-router-local-ips"])
        assert "10.96.0.10" not in world.sh(["ipset", "list", "kube-router-local-ips"])
        filt = world.sh(["iptables-legacy-save", "-t", "filter"])
        assert filt.count("-j KUBE-ROUTER-SERVICES") == 1
        assert nat.count("-j KUBE-ROUTER-HAIRPIN") == 1
        await ctl.stop()
        await ctl2.stop()

    asyncio.run(main())


def test_partial_sync_touches_one_service(world: World) -> None:
    async def main() -> None:
        ctl = await world.controller()
        await ctl.sync(None)
        agent = ctl.agent
        k = world.k8s
        k.put(agent, k.endpointslice("web", ["10.2.0.5", "10.2.0.8"], [("http", "TCP", 8080)]))
        await ctl.sync(frozenset({"default/web"}))
        # one dest added and one removed, on both the ClusterIP and the NodePort
        assert ctl.last_result.ops == 4
        rules = world.ours()
        assert "-a -t 10.96.0.10:80 -r 10.2.0.8:8080 -m -w 1" in rules
        assert "-a -t 10.96.0.10:80 -r 10.2.0.6:8080 -m -w 1" not in rules
        # session affinity: changed in place
        k.put(agent, k.service("web", "10.96.0.10", [("http", "TCP", 80)], type="NodePort",
                               sessionAffinity="ClientIP"))
        await ctl.sync(frozenset({"default/web"}))
        assert ctl.last_result.ops == 2
        assert "-A -t 10.96.0.10:80 -s rr -p 10800" in world.ours()
        # deleting the Service removes its VIP and virtual servers only
        k.remove(agent, "Service", "default/web")
        await ctl.sync(frozenset({"default/web"}))
        assert not [r for r in world.ours() if "10.96.0.10" in r or "30080" in r]
        assert world.dummy_addrs() == {"10.96.0.53/32"}
        assert "-A -u 10.96.0.53:53 -s rr" in world.ours()
        world.foreign_intact()
        await ctl.stop()

    asyncio.run(main())


def test_cleanup_removes_only_ours(world: World) -> None:
    async def main() -> None:
        ctl = await world.controller()
        await ctl.sync(None)
        await ctl.stop()
        from kube_router_proxy_ipvs.cleanup import cleanup

        await cleanup(ctl.agent.config)

    asyncio.run(main())
    assert world.ours() == []
    world.foreign_intact()
    assert "kube-dummy-if" not in world.sh(["ip", "-o", "link"])
    assert "KUBE-ROUTER" not in world.sh(["iptables-legacy-save"])
    assert "kube-router" not in world.sh(["ipset", "list", "-n"])
