"""Kernel tests of the firewall: real iptables, ipsets and packets between pod namespaces.

A bridge in the guest's own namespace plays the node's kube-bridge; each pod is a network
namespace on it, serving TCP and UDP on 8080 and 9090 (and SCTP on 8080 where the kernel
has it). Helpers reach the tests as fixtures (``fw``): test directories are not importable.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from kube_router import plugins
from kube_router.agent import Agent
from kube_router.kube.records import decode_namespace
from kube_router.kube.records import decode_networkpolicy
from kube_router.kube.records import decode_node
from kube_router.kube.records import decode_pod
from kube_router.settings import parse
from kube_router_firewall_ipset import settings

NODE = "node-0"
BRIDGE = "fwt-br0"
CIDR = "10.77.0.0/24"
GATEWAY = "10.77.0.1"
CIDR6 = "fd77::/64"
GATEWAY6 = "fd77::1"

SERVER = r"""
import socket, sys, threading
name = sys.argv[1]
def tcp(family, port):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port)); s.listen(64)
    while True:
        c, _ = s.accept(); c.sendall(name.encode()); c.close()
def udp(family, port):
    s = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    while True:
        _, a = s.recvfrom(100); s.sendto(name.encode(), a)
for fam in (socket.AF_INET, socket.AF_INET6):
    for port in (8080, 9090):
        threading.Thread(target=tcp, args=(fam, port), daemon=True).start()
        threading.Thread(target=udp, args=(fam, port), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

def run(argv: list[str], stdin: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if check:
        assert proc.returncode == 0, f"{argv} rc={proc.returncode} stderr={proc.stderr.strip()}"
    return proc.stdout


@pytest.fixture(autouse=True)
def _kernel_prerequisites() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root; run inside the lab guest")
    os.environ.setdefault("KUBE_ROUTER_IPTABLES", "legacy")


class Pods:
    """Pod namespaces on a bridge, each with a server; ``reach`` probes from one to one."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:4]
        self.ns: dict[str, str] = {}
        self.ip: dict[str, str] = {}
        self.ip6: dict[str, str] = {}
        self.servers: list[subprocess.Popen[str]] = []
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        run(["ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE])
        run(["ip", "addr", "add", f"{GATEWAY6}/64", "dev", BRIDGE, "nodad"])
        run(["ip", "link", "set", BRIDGE, "up"])
        run(["modprobe", "br_netfilter"], check=False)
        for k in ("net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables",
                  "net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"):
            with open(f"/proc/sys/{k}", "w") as f:
                f.write("1")

    def add(self, name: str, octet: int) -> None:
        ns = f"fwt-{name}-{self.tag}"
        host_if, pod_if = f"fwh{name}{self.tag}"[:15], "eth0"
        run(["ip", "netns", "add", ns])
        run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", pod_if,
             "netns", ns])
        run(["ip", "link", "set", host_if, "master", BRIDGE, "up"])
        ip, ip6 = f"10.77.0.{octet}", f"fd77::{octet:x}"
        for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "link", "set", pod_if, "up"],
                    ["ip", "addr", "add", f"{ip}/24", "dev", pod_if],
                    ["ip", "addr", "add", f"{ip6}/64", "dev", pod_if, "nodad"],
                    ["ip", "route", "add", "default", "via", GATEWAY],
                    ["ip", "-6", "route", "add", "default", "via", GATEWAY6]):
            run(["ip", "netns", "exec", ns, *cmd])
        server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER,
                                   name], stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        self.servers.append(server)
        self.ns[name], self.ip[name], self.ip6[name] = ns, ip, ip6

    def reach(self, src: str, dst: str, port: int = 8080, proto: str = "tcp",
              v6: bool = False) -> bool:
        host = (self.ip6 if v6 else self.ip)[dst] if dst != "node" else (
            GATEWAY6 if v6 else GATEWAY)
        addr = f"[{host}]" if v6 else host
        kind = ("UDP6" if v6 else "UDP") if proto == "udp" else ("TCP6" if v6 else "TCP")
        # socat starts far faster than a Python in the guest; a REJECT answers at once
        argv = ["socat", "-T", "1", "-", f"{kind}:{addr}:{port},connect-timeout=1"]
        if src != "node":
            argv = ["ip", "netns", "exec", self.ns[src], *argv]
        proc = subprocess.run(argv, input="x", capture_output=True, text=True, check=False)
        return proc.stdout.strip() == dst

    def close(self) -> None:
        for s in self.servers:
            s.kill()
            s.wait()
        for ns in self.ns.values():
            run(["ip", "netns", "delete", ns], check=False)
        run(["ip", "link", "del", BRIDGE], check=False)


def make_agent(*args: str) -> Agent:
    config = parse(["--hostname-override", NODE, *args], settings.add_options)
    pm = plugins.new_manager()
    from kube_router_firewall_ipset import plugin

    pm.register(plugin, "firewall")
    return Agent.from_flags(config, pm, ["firewall"])


def pod(name: str, ns: str, ip: str | list[str], labels: dict[str, str] | None = None,
        ports: list[dict[str, Any]] | None = None, node: str = NODE) -> dict:
    ips = [ip] if isinstance(ip, str) else ip
    return {"kind": "Pod",
            "metadata": {"namespace": ns, "name": name, "uid": f"{ns}-{name}",
                         "resourceVersion": "1", "labels": labels or {}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": ports or []}]},
            "status": {"phase": "Running", "podIP": ips[0],
                       "podIPs": [{"ip": i} for i in ips]}}


def namespace(name: str, labels: dict[str, str] | None = None) -> dict:
    return {"kind": "Namespace", "metadata": {"name": name, "uid": name,
                                              "resourceVersion": "1", "labels": labels or {}}}


def policy(name: str, ns: str, spec: dict) -> dict:
    return {"kind": "NetworkPolicy", "metadata": {"namespace": ns, "name": name, "uid": name,
                                                  "resourceVersion": "1"}, "spec": spec}


def node(pod_cidrs: list[str] | None = None) -> dict:
    cidrs = pod_cidrs or [CIDR]
    return {"kind": "Node", "metadata": {"name": NODE, "uid": NODE, "resourceVersion": "1"},
            "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs}, "status": {"addresses": []}}


DECODE = {"Pod": decode_pod, "Namespace": decode_namespace,
          "NetworkPolicy": decode_networkpolicy, "Node": decode_node}


def put(agent: Agent, obj: dict) -> str:
    rec = DECODE[obj["kind"]](obj)
    agent.store(obj["kind"]).put(rec.key, rec)  # type: ignore[attr-defined]
    return rec.key  # type: ignore[attr-defined]


def remove(agent: Agent, kind: str, key: str) -> None:
    agent.store(kind).remove(key)


def wait_until(check: Any, timeout: float = 3.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.1)
    return bool(check())


@pytest.fixture
def pods() -> Iterator[Pods]:
    p = Pods()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def fw() -> Iterator[SimpleNamespace]:
    """Builders of an agent and its objects; cleans our kernel objects afterwards."""
    yield SimpleNamespace(make_agent=make_agent, pod=pod, namespace=namespace, policy=policy,
                          node=node, put=put, remove=remove, run=run, wait_until=wait_until)
    from kube_router_firewall_ipset.cleanup import cleanup_sync

    cleanup_sync()
