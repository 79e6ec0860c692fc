"""The lab cluster against a real kernel: nodes, pods wired by the CNI bridge plugin, the
lab's own pod routes, whats-my-ip, reach(), graceful deletion and the API over the underlay.
No agent runs here (enable: []): this is the lab alone."""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kube_router_lab import netns as ns
from kube_router_lab.agents import Agent
from kube_router_lab.agents import AgentSpec
from kube_router_lab.cluster import Lab
from kube_router_lab.spec import parse_cluster

DEPLOY = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "myip", "namespace": "default"},
    "spec": {"replicas": 5, "selector": {"matchLabels": {"app": "myip"}},
             "template": {"metadata": {"labels": {"app": "myip"}}, "spec": {"containers": [
                 {"name": "web", "image": "whats-my-ip",
                  "ports": [{"name": "http", "containerPort": 8080},
                            {"name": "dns", "containerPort": 5353, "protocol": "UDP"}]}]}}},
}
SERVICE = {
    "apiVersion": "v1", "kind": "Service", "metadata": {"name": "myip", "namespace": "default"},
    "spec": {"type": "NodePort", "selector": {"app": "myip"},
             "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    started = time.monotonic()
    lab = Lab(parse_cluster({"nodes": 3, "enable": []}),
              workdir=tmp_path_factory.mktemp("lab"), grace=2.0)
    lab.up()
    try:
        lab.apply([DEPLOY, SERVICE])
        assert lab.settle(60), "pods did not come up"
        lab.startup_seconds = time.monotonic() - started  # type: ignore[attr-defined]
        print(f"lab up with 5 pods in {lab.startup_seconds:.1f} s", file=sys.stderr)
        yield lab
    finally:
        lab.down()
        assert not any(ns.exists(n) for n in ("node-0", "node-1", "node-2"))


def pods(lab: Lab) -> list[dict]:
    items, _ = lab.store.list("Pod", "default")
    return sorted((p for p in items if not p["metadata"].get("deletionTimestamp")),
                  key=lambda p: p["metadata"]["name"])


def test_up_with_five_pods_under_a_minute(lab: Lab) -> None:
    assert lab.startup_seconds < 60  # type: ignore[attr-defined]
    running = pods(lab)
    assert len(running) == 5
    nodes = sorted(p["spec"]["nodeName"] for p in running)
    assert sorted(nodes.count(n) for n in set(nodes)) == [1, 2, 2]


def test_pod_ip_from_node_cidr_behind_kube_bridge(lab: Lab) -> None:
    for p in pods(lab):
        node = p["spec"]["nodeName"]
        i = int(node.split("-")[1])
        cidr = ipaddress.ip_network(lab.spec.pod_cidr(i))
        ip = p["status"]["podIP"]
        assert ipaddress.ip_address(ip) in cidr, (p["metadata"]["name"], ip, cidr)
        assert p["status"]["phase"] == "Running"
        assert p["status"]["hostIP"] == lab.spec.node_ip(i)
        assert {"type": "Ready", "status": "True"}.items() <= p["status"]["conditions"][-1].items()
        rc, out, err = lab.run(node, ["ip", "-j", "addr", "show", "dev", "kube-bridge"])
        assert rc == 0, err
        addrs = [a["local"] for a in json.loads(out)[0]["addr_info"] if a["family"] == "inet"]
        assert addrs == [str(cidr[1])]
        where = f"default/{p['metadata']['name']}"
        rc, out, _ = lab.run(where, ["ip", "-j", "route", "show", "default"])
        assert rc == 0 and json.loads(out)[0]["gateway"] == str(cidr[1])


def test_pods_reach_each_other_across_nodes(lab: Lab) -> None:
    names = [f"default/{p['metadata']['name']}" for p in pods(lab)]
    for proto in ("", "/udp"):
        port = 8080 if not proto else 5353
        matrix = [[lab.reach(a, f"{b}:{port}{proto}") for b in names] for a in names]
        assert all(all(row) for row in matrix), matrix


def test_reach_says_no_for_closed_ports(lab: Lab) -> None:
    a, b = (f"default/{p['metadata']['name']}" for p in pods(lab)[:2])
    assert lab.reach(a, f"{b}:9999") is False
    assert lab.reach(a, f"{b}:9999/udp", timeout=0.5) is False
    assert lab.reach(a, f"{b}:8080/udp", timeout=0.5) is False  # 8080 is TCP only


def test_whatsmyip_answers_tcp_and_udp_with_the_line(lab: Lab) -> None:
    for p in pods(lab):
        name, ip = p["metadata"]["name"], p["status"]["podIP"]
        want = f"HOSTNAME:{name} IP:{ip}"
        rc, out, err = lab.run("node-0", ["curl", "-s", "-m", "3", f"http://{ip}:8080/x"])
        assert rc == 0 and out.strip() == want, (rc, out, err)
        s = ns.socket_in("node-1", socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.settimeout(2)
            s.sendto(b"anything", (ip, 5353))
            assert s.recv(1024).decode().strip() == want
        finally:
            s.close()


def _proto_pod(name: str, node: str, web: int) -> dict:
    other = 81 if web == 80 else 80
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "proto", "labels": {"app": "proto"}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "whats-my-ip",
                                                       "ports": [
                {"containerPort": web, "name": "web"},
                {"containerPort": other, "name": "web-alt"},
                {"containerPort": 80, "protocol": "UDP"},
                {"containerPort": web, "protocol": "SCTP", "name": "sig"}]}]}}


def test_sctp_and_named_ports(lab: Lab) -> None:
    """SCTP is served and probed like TCP; a target's port name resolves per pod, so one
    name may be 80 on one pod and 81 on the other."""
    lab.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "proto"}},
               _proto_pod("a", "node-0", 80), _proto_pod("b", "node-1", 81)])
    assert lab.settle(60), "pods did not come up"
    try:
        got = {(src, dst): lab.reach(src, dst, timeout=1.0)
               for src in ("proto/a", "proto/b", "node-2")
               for dst in ("proto/a:80/sctp", "proto/b:81/sctp", "proto/a:81/sctp",
                           "proto/b:80/sctp", "proto/a:web", "proto/b:web", "proto/b:sig/sctp",
                           "proto/b:web-alt", "proto/a:80/udp")}
        want_closed = {"proto/a:81/sctp", "proto/b:80/sctp"}
        assert {k: v for k, v in got.items() if v != (k[1] not in want_closed)} == {}
        assert lab._target("proto/b:web") == (lab.substitute("pod:proto/b"), 81, "TCP")
        assert lab._target("proto/a:sig/sctp")[1:] == (80, "SCTP")
        with pytest.raises(KeyError, match="declares no UDP port named 'web'"):
            lab._target("proto/a:web/udp")
        # the line comes back over SCTP as over TCP
        s = ns.socket_in("node-2", socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP)
        try:
            s.settimeout(3)
            ip = lab.substitute("pod:proto/b")
            s.connect((ip, 81))
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            assert data.decode().endswith(f"HOSTNAME:b IP:{ip}\n")
        finally:
            s.close()
    finally:
        lab.delete("Namespace", None, "proto")


def test_services_kubernetes_and_slices(lab: Lab) -> None:
    k = lab.store.get("Service", "default", "kubernetes")
    assert k["spec"]["clusterIP"] == lab.spec.kubernetes_service_ip() == "10.1.0.1"
    svc = lab.store.get("Service", "default", "myip")["spec"]
    assert ipaddress.ip_address(svc["clusterIP"]) in ipaddress.ip_network("10.1.0.0/16")
    assert svc["clusterIP"] != "10.1.0.1"
    assert 30000 <= svc["ports"][0]["nodePort"] <= 32767
    assert lab.substitute("svc:default/myip") == svc["clusterIP"]
    assert lab.substitute("nodeport:default/myip:80") == str(svc["ports"][0]["nodePort"])
    assert lab.substitute("node:node-2") == "192.168.10.102"
    assert lab.substitute("podcidr:node-2") == "10.2.2.0/24"
    with pytest.raises(KeyError):
        lab.substitute("svc:default/nope")
    slices, _ = lab.store.list("EndpointSlice", "default")
    mine = [s for s in slices if s["metadata"]["labels"]["kubernetes.io/service-name"] == "myip"]
    assert len(mine) == 1
    assert mine[0]["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    assert sorted(e["addresses"][0] for e in mine[0]["endpoints"]) == sorted(
        p["status"]["podIP"] for p in pods(lab))


def test_api_server_reachable_from_nodes(lab: Lab) -> None:
    rc, out, err = lab.run("node-2", ["curl", "-s", "-m", "5",
                                      f"http://{lab.spec.apiserver_ip()}:6443/api/v1/nodes"])
    assert rc == 0, err
    assert sorted(n["metadata"]["name"] for n in json.loads(out)["items"]) == [
        "node-0", "node-1", "node-2"]
    assert lab.kubeconfig.exists()


def test_graceful_pod_deletion_and_replacement(lab: Lab) -> None:
    victim = pods(lab)[0]
    name, ip = victim["metadata"]["name"], victim["status"]["podIP"]
    netns_name = lab.netns(f"default/{name}")
    other = f"default/{pods(lab)[1]['metadata']['name']}"
    lab.delete("Pod", "default", name)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the endpoint turns terminating but still serving
        slices, _ = lab.store.list("EndpointSlice", "default")
        eps = [e for s in slices for e in s["endpoints"] if e["addresses"] == [ip]]
        if eps and eps[0]["conditions"]["terminating"]:
            break
        time.sleep(0.05)
    assert eps[0]["conditions"] == {"ready": False, "serving": True, "terminating": True}
    assert lab.reach(other, f"default/{name}:8080"), "a terminating pod serves its grace"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and lab.store.get("Pod", "default", name):
        time.sleep(0.1)
    assert lab.store.get("Pod", "default", name) is None
    assert lab.settle(30)
    assert len(pods(lab)) == 5, "the Deployment replaced the pod"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and netns_name and ns.exists(netns_name):
        time.sleep(0.1)
    assert netns_name and not ns.exists(netns_name)
    slices, _ = lab.store.list("EndpointSlice", "default")
    assert ip not in {e["addresses"][0] for s in slices for e in s["endpoints"]} or any(
        p["status"]["podIP"] == ip for p in pods(lab))  # host-local may hand it out again


def test_scale_down_then_up(lab: Lab) -> None:
    lab.apply([{**DEPLOY, "spec": {**DEPLOY["spec"], "replicas": 2}}])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(lab.store.list("Pod", "default")[0]) != 2:
        time.sleep(0.1)
    assert len(lab.store.list("Pod", "default")[0]) == 2
    assert lab.store.get("Deployment", "default", "myip")["status"]["replicas"] == 2
    lab.apply([DEPLOY])
    assert lab.settle(30)
    assert len(pods(lab)) == 5
    names = [f"default/{p['metadata']['name']}" for p in pods(lab)]
    assert all(lab.reach(names[0], f"{b}:8080") for b in names)


def test_agent_supervisor_restarts_a_dying_agent(tmp_path: Path) -> None:
    lines: list[str] = []
    spec = AgentSpec(node="node-x", netns="", ip="127.0.0.1",
                     argv=("sh", "-c", "echo started; exit 3"), env=(),
                     log_path=tmp_path / "agent.log")
    agent = Agent(spec, log=lines.append, max_backoff=0.2)
    agent.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and agent.restarts < 2:
        time.sleep(0.05)
    agent.stop()
    assert agent.restarts >= 2
    assert any("event=agent_exited" in line and "rc=3" in line and "started" in line
               for line in lines)


def test_host_network_pod_answers_on_the_node_address(lab: Lab) -> None:
    lab.apply([{"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "hostnet", "namespace": "default"},
                "spec": {"nodeName": "node-2", "hostNetwork": True, "containers": [
                    {"name": "c", "ports": [{"containerPort": 8181}]}]}}])
    assert lab.settle(20)
    pod = lab.store.get("Pod", "default", "hostnet")
    assert pod["status"]["podIP"] == "192.168.10.102"
    assert lab.netns("default/hostnet") == "node-2"
    rc, out, _ = lab.run("node-0", ["curl", "-s", "-m", "3", "http://192.168.10.102:8181/"])
    assert rc == 0 and out.strip() == "HOSTNAME:hostnet IP:192.168.10.102"
    lab.delete("Pod", "default", "hostnet")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and lab.store.get("Pod", "default", "hostnet"):
        time.sleep(0.1)
    assert lab.store.get("Pod", "default", "hostnet") is None
    assert ns.exists("node-2")
