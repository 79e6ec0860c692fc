"""Kernel tests of the proxy: they need root and a kernel with IPVS (the lab guest).

Helpers reach the tests as fixtures (``sh``, ``ipvs_rules``, ``k8s``): with
--import-mode=importlib a test directory is not importable, so nothing here is imported by
module name.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from kube_router import plugins
from kube_router.agent import Agent
from kube_router.kube.records import decode_endpointslice
from kube_router.kube.records import decode_node
from kube_router.kube.records import decode_service
from kube_router.settings import parse
from kube_router_proxy_ipvs import ipvs_netlink as nl
from kube_router_proxy_ipvs import settings

NODE = "node-0"
NODE_IP = "192.168.77.10"


def run(argv: list[str], stdin: str | None = None) -> str:
    """Run a tool; fail the test with its stderr when it fails."""
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{argv} rc={proc.returncode} stderr={proc.stderr.strip()}"
    return proc.stdout


def ipvsadm_rules() -> list[str]:
    return sorted(line for line in run(["ipvsadm", "-S", "-n"]).splitlines() if line)


def _ipvs_available() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    try:
        with nl.IPVSSocket():
            return None
    except OSError as exc:
        return f"no IPVS in this kernel ({exc}); run inside the lab guest"


_REASON = _ipvs_available()


@pytest.fixture(autouse=True)
def _kernel_prerequisites() -> None:
    """Skip, with the reason, where this directory's tests cannot run."""
    if _REASON is not None:
        pytest.skip(_REASON)


@pytest.fixture
def sh() -> Callable[..., str]:
    """``sh(argv, stdin=None)``: run a tool, fail the test on a non-zero status."""
    return run


@pytest.fixture
def ipvs_rules() -> Callable[[], list[str]]:
    """``ipvs_rules()``: the sorted lines of ``ipvsadm -S -n``."""
    return ipvsadm_rules


@pytest.fixture
def clean_ipvs() -> Iterator[None]:
    """Start and end with an empty IPVS table (tests own the whole guest)."""
    run(["ipvsadm", "-C"])
    yield
    run(["ipvsadm", "-C"])


# -- an agent with filled stores, and API objects ------------------------------------------


def make_config(*args: str) -> argparse.Namespace:
    return parse(["--hostname-override", NODE, "--service-cluster-ip-range", "10.96.0.0/16",
                  *args], settings.add_options)


def make_agent(*args: str) -> Agent:
    """An agent with the proxy enabled; ``agent.startup.of("proxy")`` is its settings."""
    pm = plugins.new_manager()
    from kube_router_proxy_ipvs import plugin

    pm.register(plugin, "proxy")
    return Agent.from_flags(make_config(*args), pm, ["proxy"])


def service(name: str, ip: str, ports: list[tuple[str, str, int]], ns: str = "default",
            **spec: Any) -> dict:
    node_ports = spec.get("type") in ("NodePort", "LoadBalancer")
    return {"metadata": {"namespace": ns, "name": name, "uid": name, "resourceVersion": "1",
                         **spec.pop("meta", {})},
            "spec": {"clusterIP": ip, "clusterIPs": [ip],
                     "ports": [{"name": n, "protocol": p, "port": port, **(
                         {"nodePort": 30000 + port} if node_ports else {})}
                               for n, p, port in ports], **spec}}


def endpointslice(svc: str, ips: list[str], ports: list[tuple[str, str, int]],
                  ns: str = "default", suffix: str = "a", node: str = NODE) -> dict:
    return {"metadata": {"namespace": ns, "name": f"{svc}-{suffix}", "uid": f"{svc}-{suffix}",
                         "resourceVersion": "1",
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}, "nodeName": node}
                          for ip in ips],
            "ports": [{"name": n, "protocol": p, "port": port} for n, p, port in ports]}


def node(name: str = NODE, ip: str = NODE_IP, pod_cidr: str = "10.2.0.0/24") -> dict:
    return {"metadata": {"name": name, "uid": name, "resourceVersion": "1"},
            "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}


def put(agent: Agent, obj: dict) -> None:
    if "addressType" in obj:
        rec = decode_endpointslice(obj)
        agent.store("EndpointSlice").put(rec.key, rec)
    elif "clusterIP" in obj.get("spec", {}):
        rec = decode_service(obj)
        agent.store("Service").put(rec.key, rec)
    else:
        rec = decode_node(obj)
        agent.store("Node").put(rec.key, rec)


def remove(agent: Agent, kind: str, key: str) -> None:
    agent.store(kind).remove(key)


@pytest.fixture
def k8s() -> SimpleNamespace:
    """Builders of API objects and of an agent whose stores the tests fill by hand."""
    return SimpleNamespace(NODE=NODE, NODE_IP=NODE_IP, make_agent=make_agent,
                           service=service, endpointslice=endpointslice, node=node, put=put,
                           remove=remove)


#: A TCP echo server on port 8080, IPv4 and IPv6 alike, for a pod namespace.
ECHO_SERVER = """
import socket, threading
srv = socket.socket(socket.AF_INET6)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
srv.bind(("::", 8080))
srv.listen(16)
print("ready", flush=True)
def echo(c):
    while True:
        data = c.recv(4096)
        if not data:
            break
        c.sendall(data)
while True:
    conn, _ = srv.accept()
    threading.Thread(target=echo, args=(conn,), daemon=True).start()
"""


@pytest.fixture
def echo_server() -> Iterator[Callable[[str], subprocess.Popen[str]]]:
    """Start the echo server in a namespace; returns once it listens, stops it after."""
    started: list[subprocess.Popen[str]] = []

    def start(netns: str) -> subprocess.Popen[str]:
        server = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c",
                                   ECHO_SERVER], stdout=subprocess.PIPE, text=True)
        started.append(server)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        return server

    yield start
    for server in started:
        server.kill()
        server.wait()
