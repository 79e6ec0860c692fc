"""The proxy controller against the kernel: IPVS, kube-dummy-if, iptables and ipsets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from kube_router import hookimpl
from kube_router_proxy_ipvs.api import IPVSScheduler
from kube_router_proxy_ipvs.controller import ProxyController
from kube_router_proxy_ipvs.service_netfilter import ServiceNetfilter

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

    def all_in_place(self) -> None:
        """The IPVS services, VIPs and routes the controller makes of its world."""
        assert sorted(self.ours()) == sorted([
            "-A -t 10.96.0.10:80 -s rr",
            "-a -t 10.96.0.10:80 -r 10.2.0.5:8080 -m -w 1",
            "-a -t 10.96.0.10:80 -r 10.2.0.6:8080 -m -w 1",
            f"-A -t {self.NODE_IP}:30080 -s rr",
            f"-a -t {self.NODE_IP}:30080 -r 10.2.0.5:8080 -m -w 1",
            f"-a -t {self.NODE_IP}:30080 -r 10.2.0.6:8080 -m -w 1",
            "-A -u 10.96.0.53:53 -s rr",
            "-a -u 10.96.0.53:53 -r 10.2.0.7:5353 -m -w 1",
            "-A -t 10.96.0.53:53 -s rr",
            "-a -t 10.96.0.53:53 -r 10.2.0.7:5353 -m -w 1",
        ])
        assert self.dummy_addrs() == {"10.96.0.10/32", "10.96.0.53/32"}
        # host-originated traffic to a VIP leaves from the node IP, not from the VIP
        assert self.local_routes() == {"10.96.0.10": self.NODE_IP,
                                       "10.96.0.53": self.NODE_IP}

    def ours(self) -> list[str]:
        return [r for r in self.rules() if r not in FOREIGN]

    def local_routes(self) -> dict[str, str]:
        """VIP -> preferred source of the local-table routes through kube-dummy-if."""
        out = self.sh(["ip", "-4", "route", "show", "table", "local", "dev", "kube-dummy-if"])
        routes = {}
        for line in out.splitlines():
            words = line.split()
            assert words[0] == "local", line
            routes[words[1]] = words[words.index("src") + 1]
        return routes

    def dummy_addrs(self) -> set[str]:
        out = self.sh(["ip", "-o", "-4", "addr", "show", "dev", "kube-dummy-if"])
        return {line.split()[3] for line in out.splitlines()}

    async def controller(self, *args: str) -> ProxyController:
        k = self.k8s
        agent = k.make_agent("--excluded-cidrs", "10.96.200.0/24", *args)
        proxy = agent.startup.of("proxy")
        ctl = ProxyController(agent, proxy, ServiceNetfilter(proxy))
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
        world.all_in_place()
        route = world.sh(["ip", "-4", "route", "get", "10.96.0.10"])
        assert f"src {world.NODE_IP}" in route, route
        states = dict(ctl.svc_states)
        assert ctl.netfilter is not None
        sets, chains = dict(ctl.netfilter._sets), dict(ctl.netfilter._chains)
        await ctl.sync(None)
        assert ctl.last_result.ops == 0
        # unchanged Services keep their state objects, and the netfilter manager its
        # record of the kernel (which it read again): nothing long-lived is rebuilt
        assert states and all(ctl.svc_states[n] is st for n, st in states.items())
        assert sets and all(ctl.netfilter._sets[n] is m for n, m in sets.items())
        assert chains and all(ctl.netfilter._chains[k] is r for k, r in chains.items())
        assert not len(ctl.dummy.plan({"10.96.0.10", "10.96.0.53"}, set(), ctl.vip_src))
        # a fresh controller (an agent restart) reads the kernel and has nothing to do
        ctl2 = await world.controller()
        assert ctl2.dummy.addrs == {"10.96.0.10": world.NODE_IP,
                                        "10.96.0.53": world.NODE_IP}
        await ctl2.sync(None)
        assert ctl2.last_result.ops == 0
        assert ctl2.netfilter is not None and ctl2.netfilter.writes == 0
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


def test_later_full_sync_repairs_what_others_changed(world: World) -> None:
    async def main() -> None:
        ctl = await world.controller()
        await ctl.sync(None)
        # behind the agent's back: a virtual server deleted, another's scheduler changed,
        # a VIP taken off the link
        world.sh(["ipvsadm", "-D", "-t", "10.96.0.10:80"])
        world.sh(["ipvsadm", "-E", "-u", "10.96.0.53:53", "-s", "wrr"])
        world.sh(["ip", "addr", "del", "10.96.0.53/32", "dev", "kube-dummy-if"])
        assert ctl.dummy.drift() == "addresses=1 expected=2"
        # and one added in the service range, which no Service wants
        world.sh(["ipvsadm", "-A", "-t", "10.96.7.7:80"])
        drift = await ctl.ipvs.drift()
        assert [d.split(" ")[0] for d in drift] == ["missing=1", "changed=1", "unknown=1"]
        assert "10.96.0.10" in drift[0] and "10.96.0.53" in drift[1], drift
        await ctl.sync(None)  # as every --ipvs-sync-period
        world.all_in_place()
        assert await ctl.ipvs.drift() == []
        assert "10.96.7.7" not in world.sh(["ipvsadm", "-Ln"])
        assert ctl.dummy.drift() is None
        # a VIP's local route given another source
        world.sh(["ip", "route", "replace", "table", "local", "local", "10.96.0.10", "dev",
                  "kube-dummy-if", "proto", "kernel", "scope", "host", "src", "127.0.0.1"])
        assert ctl.dummy.drift() == "route_sources_changed=1"
        await ctl.sync(None)
        assert ctl.dummy.drift() is None
        world.all_in_place()
        # the link itself deleted
        world.sh(["ip", "link", "del", "kube-dummy-if"])
        await ctl.sync(None)
        world.all_in_place()
        # nothing changed: the check costs one dump and the sync sends nothing
        await ctl.sync(None)
        assert ctl.last_result.ops == 0
        world.foreign_intact()
        await ctl.stop()

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
        # the route we replaced goes with its VIP (the kernel would leave it behind)
        assert world.local_routes() == {"10.96.0.53": world.NODE_IP}
        assert "10.96.0.10" not in world.sh(["ip", "-4", "route", "show", "table", "local"])
        assert "-A -u 10.96.0.53:53 -s rr" in world.ours()
        world.foreign_intact()
        await ctl.stop()

    asyncio.run(main())


def test_partial_sync_sends_only_the_difference(world: World,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A partial sync starts no tool process: a change that leaves the sets and chains as
    they are sends them nothing, and set members come and go over netlink. A full sync
    still compares with the kernel and puts back what someone else removed."""
    async def main() -> None:
        ctl = await world.controller()
        await ctl.sync(None)
        assert ctl.netfilter is not None
        agent = ctl.agent
        k = world.k8s
        started: list[tuple[object, ...]] = []
        real = asyncio.create_subprocess_exec
        moved = ctl.netfilter.set_changes  # (the sets may hold an earlier test's members)

        async def counting(*argv: object, **kwargs: object) -> asyncio.subprocess.Process:
            started.append(argv)
            return await real(*argv, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(asyncio, "create_subprocess_exec", counting)
        # other endpoints: IPVS changes, the sets and chains do not
        k.put(agent, k.endpointslice("web", ["10.2.0.5", "10.2.0.8"], [("http", "TCP", 8080)]))
        await ctl.sync(frozenset({"default/web"}))
        assert ctl.last_result.ops == 4
        assert started == []
        assert ctl.netfilter.set_changes == moved
        # a new Service: its VIP and VIP:port are added to the sets, and only they
        k.put(agent, k.service("api", "10.96.0.20", [("https", "TCP", 443)]))
        k.put(agent, k.endpointslice("api", ["10.2.0.9"], [("https", "TCP", 8443)]))
        await ctl.sync(frozenset({"default/api"}))
        assert started == []
        assert ctl.netfilter.set_changes == moved + 2
        assert "10.96.0.20" in world.sh(["ipset", "list", "kube-router-svip"])
        assert "10.96.0.20,tcp:443" in world.sh(["ipset", "list", "kube-router-svip-prt"])
        # and it goes again
        k.remove(agent, "Service", "default/api")
        await ctl.sync(frozenset({"default/api"}))
        assert started == []
        assert ctl.netfilter.set_changes == moved + 4
        assert "10.96.0.20" not in world.sh(["ipset", "list", "kube-router-svip-prt"])
        assert "10.96.0.10,tcp:80" in world.sh(["ipset", "list", "kube-router-svip-prt"])
        monkeypatch.undo()
        # behind our back: a member and a rule removed; the next full sync restores both
        world.sh(["ipset", "del", "kube-router-svip-prt", "10.96.0.53,udp:53"])
        world.sh(["iptables-legacy", "-t", "nat", "-F", "KUBE-ROUTER-IPVS-SNAT"])
        await ctl.sync(None)
        assert "10.96.0.53,udp:53" in world.sh(["ipset", "list", "kube-router-svip-prt"])
        assert "-A KUBE-ROUTER-IPVS-SNAT ! -s 10.2.0.0/24" in world.sh(
            ["iptables-legacy-save", "-t", "nat"])
        world.foreign_intact()
        await ctl.stop()

    asyncio.run(main())


def test_cleanup_removes_only_ours(world: World) -> None:
    async def main() -> None:
        ctl = await world.controller()
        await ctl.sync(None)
        await ctl.stop()
        from kube_router_proxy_ipvs.cleanup import cleanup

        await cleanup(ctl.agent.startup.of("proxy"))

    asyncio.run(main())
    assert world.ours() == []
    world.foreign_intact()
    assert "kube-dummy-if" not in world.sh(["ip", "-o", "link"])
    assert "KUBE-ROUTER" not in world.sh(["iptables-legacy-save"])
    assert "kube-router" not in world.sh(["ipset", "list", "-n"])


@pytest.fixture
def pod(world: World, echo_server: Callable[[str], object]) -> Iterator[str]:
    """A pod-like namespace 10.250.0.2 behind a veth, running a TCP echo server on 8080."""
    sh = world.sh
    sh(["ip", "netns", "add", "px-pod"])
    sh(["ip", "link", "add", "px-veth0", "type", "veth", "peer", "name", "eth0",
        "netns", "px-pod"])
    sh(["ip", "addr", "add", "10.250.0.1/24", "dev", "px-veth0"])
    sh(["ip", "link", "set", "px-veth0", "up"])
    for argv in (["ip", "addr", "add", "10.250.0.2/24", "dev", "eth0"],
                 ["ip", "link", "set", "eth0", "up"], ["ip", "link", "set", "lo", "up"],
                 ["ip", "route", "add", "default", "via", "10.250.0.1"]):
        sh(["ip", "-n", "px-pod", *argv[1:]])
    try:
        echo_server("px-pod")
        yield "10.250.0.2"
    finally:
        sh(["ip", "netns", "del", "px-pod"])


class _Scheduler:
    """A plugin answering the proxy's scheduler hook with whatever the test sets."""

    def __init__(self) -> None:
        self.name = "rr"

    @hookimpl
    def kube_router_ipvs_scheduler(self, service: object, config: object) -> IPVSScheduler:
        return IPVSScheduler(self.name)


def test_live_connection_survives_scheduler_and_persistence_changes(
        world: World, pod: str) -> None:
    import socket

    async def main() -> None:
        ctl = await world.controller()
        sched = _Scheduler()
        ctl.agent.pm.register(sched, "test-scheduler")
        k, agent = world.k8s, ctl.agent
        k.put(agent, k.service("live", "10.96.0.80", [("echo", "TCP", 80)]))
        k.put(agent, k.endpointslice("live", [pod], [("echo", "TCP", 8080)]))
        await ctl.sync(None)
        assert "-A -t 10.96.0.80:80 -s rr" in world.ours()

        conn = socket.create_connection(("10.96.0.80", 80), timeout=5)
        try:
            # the node's own client leaves from the node IP (the VIP's local route)
            assert conn.getsockname()[0] == world.NODE_IP

            def roundtrip(msg: bytes) -> None:
                conn.sendall(msg)
                got = b""
                while len(got) < len(msg):
                    chunk = conn.recv(4096)
                    assert chunk, "connection closed"
                    got += chunk
                assert got == msg

            roundtrip(b"before\n")
            # scheduler change: one SET, in place
            sched.name = "lc"
            await ctl.sync(frozenset({"default/live"}))
            assert ctl.last_result.ops == 1
            assert "-A -t 10.96.0.80:80 -s lc" in world.ours()
            roundtrip(b"after scheduler change\n")
            # persistence on: one SET, in place
            k.put(agent, k.service("live", "10.96.0.80", [("echo", "TCP", 80)],
                                   sessionAffinity="ClientIP"))
            await ctl.sync(frozenset({"default/live"}))
            assert ctl.last_result.ops == 1
            assert "-A -t 10.96.0.80:80 -s lc -p 10800" in world.ours()
            roundtrip(b"after persistence on\n")
            # persistence timeout changed, then persistence off: in place again
            k.put(agent, k.service("live", "10.96.0.80", [("echo", "TCP", 80)],
                                   sessionAffinity="ClientIP",
                                   sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}}))
            await ctl.sync(frozenset({"default/live"}))
            assert ctl.last_result.ops == 1
            assert "-A -t 10.96.0.80:80 -s lc -p 60" in world.ours()
            roundtrip(b"after timeout change\n")
            k.put(agent, k.service("live", "10.96.0.80", [("echo", "TCP", 80)]))
            await ctl.sync(frozenset({"default/live"}))
            assert "-A -t 10.96.0.80:80 -s lc" in world.ours()
            roundtrip(b"after persistence off\n")
            # the same IPVS connection carried it all
            conns = world.sh(["ipvsadm", "-L", "-n", "-c"])
            assert "ESTABLISHED" in conns and "10.96.0.80:80" in conns, conns
        finally:
            conn.close()
        await ctl.stop()

    asyncio.run(main())


def test_timeouts_status_table_and_metrics(world: World, pod: str) -> None:
    import re
    import socket

    from prometheus_client import CollectorRegistry
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from kube_router_proxy_ipvs import ipvs_netlink as nl
    from kube_router_proxy_ipvs.metrics import register_metrics
    from kube_router_proxy_ipvs.status import status_sections
    from kube_router_proxy_ipvs.status import write_names

    with nl.IPVSSocket() as s:
        before = s.timeouts()

    async def main() -> None:
        ctl = await world.controller("--service-tcp-timeout", "15m",
                                     "--service-udp-timeout", "45s")
        # the flags reach the kernel; a zero (tcpfin) keeps the system's value
        out = world.sh(["ipvsadm", "-L", "-n", "--timeout"])
        assert f"Timeout (tcp tcpfin udp): 900 {before[1]} 45" in out, out
        k, agent = world.k8s, ctl.agent
        k.put(agent, k.service("live", "10.96.0.80", [("echo", "TCP", 80)]))
        k.put(agent, k.endpointslice("live", [pod], [("echo", "TCP", 8080)]))
        await ctl.sync(None)
        for _ in range(3):
            with socket.create_connection(("10.96.0.80", 80), timeout=5) as c:
                c.sendall(b"ping\n")
                assert c.recv(16) == b"ping\n"
        # IPVS folds its per-CPU counters into the reported ones every 2 s
        await asyncio.sleep(2.5)
        stats = world.sh(["ipvsadm", "-L", "-n", "--stats", "-t", "10.96.0.80:80"])
        assert re.search(r"^TCP\s+10\.96\.0\.80:80\s+3\s", stats, re.M), stats

        # status: the table like ipvsadm -Ln, with Service names
        write_names(ctl.svc_states)
        [section] = status_sections()
        rows = [[cell.strip() for cell in row] for row in section.rows]
        at = rows.index(["TCP", "10.96.0.80:80", "rr", "", "default/live", "", "", "", "",
                         ""])
        assert rows[at + 1][5:8] == ["-> 10.250.0.2:8080", "Masq", "1"]
        assert ["UDP", "10.96.0.53:53", "rr", "", "default/dns", "", "", "", "", ""] in rows
        assert any(r[1] == "172.16.0.1:80" and r[4] == "-" for r in rows)  # foreign: no name

        # metrics: a scrape reads the stats from IPVS
        registry = CollectorRegistry()
        register_metrics(registry, ctl)
        samples = {}
        for family in text_string_to_metric_families(generate_latest(registry).decode()):
            for smp in family.samples:
                labels = smp.labels
                svc = f"{labels.get('svc_namespace')}/{labels.get('service_name')}"
                samples[(smp.name, svc, labels.get("service_vip"), labels.get("protocol"),
                         labels.get("port"))] = smp.value
        live = ("default/live", "10.96.0.80", "TCP", "80")
        assert samples[("kube_router_service_total_connections", *live)] == 3
        assert samples[("kube_router_service_bytes_in", *live)] > 0
        assert samples[("kube_router_service_packets_out", *live)] > 0
        assert samples[("kube_router_service_total_connections", "default/web",
                        world.NODE_IP, "TCP", "30080")] == 0
        # the web ClusterIP and NodePort, dns over UDP and TCP, and live
        assert samples[("kube_router_controller_ipvs_services", "None/None", None, None,
                        None)] == 5
        assert not [k for k in samples if k[2] == "172.16.0.1"]  # not ours
        await ctl.stop()

    try:
        asyncio.run(main())
    finally:
        with nl.IPVSSocket() as s:
            s.set_timeouts(*before)
