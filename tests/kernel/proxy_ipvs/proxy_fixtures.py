"""Building an agent with filled stores, and API objects, for the proxy's kernel tests."""

from __future__ import annotations

import argparse
from typing import Any

from kube_router import plugins
from kube_router.agent import Agent
from kube_router.kube.records import decode_endpointslice
from kube_router.kube.records import decode_node
from kube_router.kube.records import decode_service
from kube_router_proxy_ipvs import settings

NODE = "node-0"
NODE_IP = "192.168.77.10"


def make_config(*args: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hostname-override", default=NODE)
    settings.add_options(parser)
    return parser.parse_args(["--service-cluster-ip-range", "10.96.0.0/16", *args])


def make_agent(*args: str) -> Agent:
    pm = plugins.new_manager()
    from kube_router_proxy_ipvs import plugin

    pm.register(plugin, "proxy")
    return Agent(make_config(*args), pm, ["proxy"])


def service(name: str, ip: str, ports: list[tuple[str, str, int]], ns: str = "default",
            **spec: Any) -> dict:
    return {"metadata": {"namespace": ns, "name": name, "uid": name, "resourceVersion": "1",
                         **spec.pop("meta", {})},
            "spec": {"clusterIP": ip, "clusterIPs": [ip],
                     "ports": [{"name": n, "protocol": p, "port": port, **(
                         {"nodePort": 30000 + port} if spec.get("type") == "NodePort" else {})}
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
