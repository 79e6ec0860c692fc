"""Cleanups on a node that also carries other tools' state, against a real kernel.

``--cleanup-config`` runs on a lab node after its agent (every installed plugin) made its
IPVS services, dummy link, chains, ipsets, learned routes and CNI file; and
``cleanup-kube-proxy`` on a namespace holding what kube-proxy leaves. Each must remove its
own objects and leave the foreign ones exactly as they were.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

import pytest

from kube_router_lab.agents import agent_executable
from kube_router_lab.agents import installed_plugins
from kube_router_lab.cluster import Lab
from kube_router_lab.spec import parse_cluster

DEPLOY = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
             "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                 {"name": "c", "image": "whats-my-ip", "ports": [{"containerPort": 8080}]}]}}},
}
SERVICE = {
    "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
    "spec": {"type": "NodePort", "selector": {"app": "web"},
             "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
}
#: Other tools' state: an IPVS service outside the service range, a set, a chain with a
#: jump from a built-in chain, a route of another protocol, a dummy link.
FOREIGN = [
    ["ip", "link", "add", "foreign0", "type", "dummy"],
    ["ip", "addr", "add", "192.0.2.10/32", "dev", "foreign0"],
    ["ip", "link", "set", "foreign0", "up"],
    ["ipvsadm", "-A", "-t", "192.0.2.10:80", "-s", "wrr"],
    ["ipvsadm", "-a", "-t", "192.0.2.10:80", "-r", "192.0.2.11:80", "-m"],
    ["ipset", "create", "foreign-set", "hash:ip"],
    ["ipset", "add", "foreign-set", "198.51.100.7"],
    ["iptables-legacy", "-t", "filter", "-N", "FOREIGN-CHAIN"],
    ["iptables-legacy", "-t", "filter", "-A", "FOREIGN-CHAIN", "-m", "set", "--match-set",
     "foreign-set", "src", "-j", "RETURN"],
    ["iptables-legacy", "-t", "filter", "-A", "INPUT", "-j", "FOREIGN-CHAIN"],
    ["iptables-legacy", "-t", "nat", "-N", "FOREIGN-NAT"],
    ["iptables-legacy", "-t", "nat", "-A", "POSTROUTING", "-j", "FOREIGN-NAT"],
    ["ip", "route", "add", "198.51.100.0/24", "dev", "foreign0", "proto", "static"],
]


def sh(netns: str | None, argv: list[str], check: bool = True) -> str:
    full = ["ip", "netns", "exec", netns, *argv] if netns else argv
    proc = subprocess.run(full, capture_output=True, text=True, check=False)
    assert not check or proc.returncode == 0, f"{argv}: {proc.stderr.strip()}"
    return proc.stdout


def iptables_lines(netns: str, table: str) -> set[str]:
    """Chains and rules of a table, without packet counters."""
    out = sh(netns, ["iptables-legacy-save", "-t", table])
    return {re.sub(r" \[\d+:\d+\]$", "", line) for line in out.splitlines()
            if line.startswith((":", "-A"))}


def snapshot(netns: str) -> dict[str, set[str]]:
    routes = sh(netns, ["ip", "-o", "route", "show", "table", "all"])
    return {
        "ipvs": {line for line in sh(netns, ["ipvsadm", "-S", "-n"]).splitlines() if line},
        "sets": set(sh(netns, ["ipset", "list", "-n"]).split()),
        "filter": iptables_lines(netns, "filter"),
        "nat": iptables_lines(netns, "nat"),
        "mangle": iptables_lines(netns, "mangle"),
        "routes": {" ".join(r.split()) for r in routes.splitlines()},
        "links": {line.split(":")[1].strip().split("@")[0]
                  for line in sh(netns, ["ip", "-o", "link"]).splitlines()},
    }


def foreign_only(snap: dict[str, set[str]], ours: Callable[[str, str], bool]
                 ) -> dict[str, set[str]]:
    return {k: {x for x in v if not ours(k, x)} for k, v in snap.items()}


# -- --cleanup-config after every installed plugin ran on a lab node --------------------------


def plugin_owned(kind: str, item: str) -> bool:
    """The objects the installed plugins make, by the names, prefixes and protocol number
    they own (what the test expects gone)."""
    if kind == "ipvs":
        return "192.0.2.10" not in item
    if kind == "sets":  # the proxy's and router's; the firewall's per-policy sets
        return item.startswith(("kube-router-", "KUBE-SRC-", "KUBE-DST-", "inet6:KUBE-"))
    if kind in ("filter", "nat", "mangle"):
        return bool(re.search(r"KUBE-(ROUTER|POD-FW|NWPLCY|SRC|DST)|kube-router", item))
    if kind == "routes":
        return " proto 17" in f" {item}" or "kube-dummy-if" in item
    if kind == "links":
        return item == "kube-dummy-if"
    return False


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    enable = sorted(n for n in installed_plugins() if n in (
        "proxy", "router", "firewall", "scheduler-annotations"))
    lab = Lab(parse_cluster({"nodes": 2, "enable": enable}),
              workdir=tmp_path_factory.mktemp("lab"))
    lab.up()
    try:
        lab.apply([DEPLOY, SERVICE])
        if not lab.settle(180):
            lines: list[str] = []
            lab.diagnostics(lines.append)
            pytest.fail("pods did not come up\n" + "\n".join(lines))
        deadline = time.monotonic() + 120
        rv = lab.resource_version()
        # synced, and node-0 learned node-1's pod CIDR over BGP
        while lab.unsynced(rv) or not sh(lab.netns("node-0"),
                                         ["ip", "route", "show", "proto", "17"]).strip():
            assert time.monotonic() < deadline, f"not synced: {lab.unsynced(rv)}"
            time.sleep(1)
        yield lab
    finally:
        lab.down()


def test_cleanup_config_removes_every_plugin_object_and_nothing_else(lab: Lab) -> None:
    node = "node-0"
    netns = lab.netns(node)
    assert netns
    agent = lab.agents[node]
    agent.stop()  # it would remake what the cleanup removes
    for argv in FOREIGN:
        sh(netns, argv)
    before = snapshot(netns)
    # kube-bridge is the router's only when it made it (the alias says so); when a pod's CNI
    # bridge plugin made it first, it belongs to the pods and stays
    bridge_ours = "alias kube-router-py" in sh(netns, ["ip", "-d", "link", "show", "kube-bridge"],
                                             check=False)

    def owned(kind: str, item: str) -> bool:
        if bridge_ours and kind in ("links", "routes") and "kube-bridge" in item:
            return True
        return plugin_owned(kind, item)

    # the plugins' objects are there to remove
    assert any(plugin_owned("ipvs", x) for x in before["ipvs"]), before["ipvs"]
    assert "kube-dummy-if" in before["links"]
    assert any(plugin_owned("filter", x) for x in before["filter"])
    assert any(plugin_owned("sets", x) for x in before["sets"]), before["sets"]
    assert any(plugin_owned("routes", x) and "proto 17" in x for x in before["routes"])
    conf_dir = Path(agent.spec.argv[agent.spec.argv.index("--cni-conf-dir") + 1])
    assert any(conf_dir.glob("*kuberouter*"))

    rc = subprocess.run([*agent.spec.argv, "--cleanup-config"], capture_output=True,
                        text=True, timeout=120, check=False)
    assert rc.returncode == 0, rc.stderr

    after = snapshot(netns)
    left = {k: sorted(x for x in v if owned(k, x)) for k, v in after.items()}
    assert not any(left.values()), f"left behind: {left}"
    assert not any(conf_dir.glob("*kuberouter*"))
    # every foreign object exactly as it was (and nothing of theirs went with ours)
    assert foreign_only(after, owned) == foreign_only(before, owned)
    assert ("kube-bridge" in after["links"]) == (not bridge_ours)
    assert "-A INPUT -j FOREIGN-CHAIN" in after["filter"]
    assert "198.51.100.7" in sh(netns, ["ipset", "list", "foreign-set"])
    assert any("192.0.2.11:80" in x for x in after["ipvs"])


# -- cleanup-kube-proxy beside kube-router's, the kubelet's and other tools' state ------------

#: What kube-proxy (IPVS mode, with its iptables-mode chains from an earlier run) leaves.
KUBE_PROXY = [
    ["ip", "link", "add", "kube-ipvs0", "type", "dummy"],
    ["ip", "addr", "add", "10.96.0.1/32", "dev", "kube-ipvs0"],
    ["ip", "addr", "add", "10.96.0.10/32", "dev", "kube-ipvs0"],
    ["ipvsadm", "-A", "-t", "10.96.0.1:443", "-s", "rr"],
    ["ipvsadm", "-a", "-t", "10.96.0.1:443", "-r", "192.0.2.21:6443", "-m"],
    ["ipvsadm", "-A", "-u", "10.96.0.10:53", "-s", "rr"],
    ["ipset", "create", "KUBE-CLUSTER-IP", "hash:ip,port"],
    ["ipset", "add", "KUBE-CLUSTER-IP", "10.96.0.1,tcp:443"],
    ["ipset", "create", "KUBE-LOOP-BACK", "hash:ip,port,ip"],
    ["iptables-legacy", "-t", "nat", "-N", "KUBE-SERVICES"],
    ["iptables-legacy", "-t", "nat", "-N", "KUBE-POSTROUTING"],
    ["iptables-legacy", "-t", "nat", "-N", "KUBE-MARK-MASQ"],
    ["iptables-legacy", "-t", "nat", "-N", "KUBE-SVC-ERIFXISQEP7F7OF4"],
    ["iptables-legacy", "-t", "nat", "-N", "KUBE-SEP-ABCDEFGHIJKLMNOP"],
    ["iptables-legacy", "-t", "nat", "-A", "KUBE-SERVICES", "-m", "set", "--match-set",
     "KUBE-CLUSTER-IP", "dst,dst", "-j", "KUBE-MARK-MASQ"],
    ["iptables-legacy", "-t", "nat", "-A", "KUBE-SERVICES", "-d", "10.96.0.1/32", "-p", "tcp",
     "--dport", "443", "-j", "KUBE-SVC-ERIFXISQEP7F7OF4"],
    ["iptables-legacy", "-t", "nat", "-A", "KUBE-SVC-ERIFXISQEP7F7OF4", "-j",
     "KUBE-SEP-ABCDEFGHIJKLMNOP"],
    ["iptables-legacy", "-t", "nat", "-A", "PREROUTING", "-m", "comment", "--comment",
     "kubernetes service portals", "-j", "KUBE-SERVICES"],
    ["iptables-legacy", "-t", "nat", "-A", "OUTPUT", "-j", "KUBE-SERVICES"],
    ["iptables-legacy", "-t", "nat", "-A", "POSTROUTING", "-j", "KUBE-POSTROUTING"],
    ["iptables-legacy", "-t", "filter", "-N", "KUBE-FORWARD"],
    ["iptables-legacy", "-t", "filter", "-N", "KUBE-PROXY-FIREWALL"],
    ["iptables-legacy", "-t", "filter", "-A", "FORWARD", "-j", "KUBE-FORWARD"],
    ["iptables-legacy", "-t", "filter", "-A", "INPUT", "-m", "conntrack", "--ctstate", "NEW",
     "-j", "KUBE-PROXY-FIREWALL"],
    ["iptables-legacy", "-t", "mangle", "-N", "KUBE-PROXY-CANARY"],
]
#: Not kube-proxy's: the kubelet's chains, kube-router's, another tool's.
NOT_KUBE_PROXY = [
    ["iptables-legacy", "-t", "filter", "-N", "KUBE-FIREWALL"],
    ["iptables-legacy", "-t", "filter", "-A", "INPUT", "-j", "KUBE-FIREWALL"],
    ["iptables-legacy", "-t", "mangle", "-N", "KUBE-KUBELET-CANARY"],
    ["iptables-legacy", "-t", "filter", "-N", "KUBE-ROUTER-SERVICES"],
    ["iptables-legacy", "-t", "filter", "-A", "INPUT", "-j", "KUBE-ROUTER-SERVICES"],
    ["ipset", "create", "kube-router-svip", "hash:ip"],
    ["ip", "link", "add", "kube-dummy-if", "type", "dummy"],
    ["ip", "addr", "add", "10.96.5.5/32", "dev", "kube-dummy-if"],
    ["ipvsadm", "-A", "-t", "10.96.5.5:80", "-s", "rr"],
]


def kube_proxy_owned(kind: str, item: str) -> bool:
    if kind == "ipvs":
        return "10.96.0.1:" in item or "10.96.0.10:" in item
    if kind == "sets":
        return item in ("KUBE-CLUSTER-IP", "KUBE-LOOP-BACK")
    if kind in ("filter", "nat", "mangle"):
        return bool(re.search(r"KUBE-(SERVICES|POSTROUTING|MARK-MASQ|SVC-|SEP-|FORWARD|"
                              r"PROXY-FIREWALL|PROXY-CANARY)", item))
    if kind == "routes":
        return "kube-ipvs0" in item
    if kind == "links":
        return item == "kube-ipvs0"
    return False


@pytest.fixture
def node_ns() -> Iterator[str]:
    name = f"kp-{uuid.uuid4().hex[:8]}"
    sh(None, ["ip", "netns", "add", name])
    try:
        sh(name, ["ip", "link", "set", "lo", "up"])
        yield name
    finally:
        sh(None, ["ip", "netns", "delete", name], check=False)


def test_cleanup_kube_proxy_removes_only_its_leftovers(node_ns: str) -> None:
    for argv in [*KUBE_PROXY, *NOT_KUBE_PROXY, *FOREIGN]:
        sh(node_ns, argv)
    before = snapshot(node_ns)
    assert sum(kube_proxy_owned("nat", x) for x in before["nat"]) >= 8

    proc = subprocess.run(["ip", "netns", "exec", node_ns, agent_executable(),
                           "cleanup-kube-proxy"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr

    after = snapshot(node_ns)
    left = {k: sorted(x for x in v if kube_proxy_owned(k, x)) for k, v in after.items()}
    assert not any(left.values()), f"left behind: {left}\n{proc.stderr}"
    assert foreign_only(after, kube_proxy_owned) == foreign_only(before, kube_proxy_owned)
    assert "-A INPUT -j KUBE-FIREWALL" in after["filter"]
    assert "-A INPUT -j KUBE-ROUTER-SERVICES" in after["filter"]
    assert "kube-dummy-if" in after["links"] and "kube-router-svip" in after["sets"]
    # a second run finds nothing and succeeds
    again = subprocess.run(["ip", "netns", "exec", node_ns, agent_executable(),
                            "cleanup-kube-proxy"], capture_output=True, text=True, timeout=60,
                           check=False)
    assert again.returncode == 0, again.stderr
    assert snapshot(node_ns) == after
