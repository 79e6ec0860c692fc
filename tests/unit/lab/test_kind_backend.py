"""The kind backend's own parts, without a cluster: how the lab's node names and images map
onto a real cluster, and that it is a complete backend of the shared runner."""

from __future__ import annotations

import inspect

import pytest

from kube_router_lab.backend import Backend
from kube_router_lab.backend import reach_target
from kube_router_lab.backend import substitute
from kube_router_lab.cluster import Lab
from kube_router_lab.kind import KindCluster
from kube_router_lab.kind import KindError
from kube_router_lab.kind import node_names_by_cidr
from kube_router_lab.kind import translate
from kube_router_lab.spec import ClusterSpec


def node(name: str, cidr: str | None) -> dict:
    return {"metadata": {"name": name}, "spec": {"podCIDR": cidr} if cidr else {}}


def test_lab_nodes_map_to_the_kind_nodes_holding_their_pod_cidrs() -> None:
    spec = ClusterSpec(nodes=3, cluster_cidr="10.2.0.0/16")
    nodes = [node("k-control-plane", "10.2.2.0/24"), node("k-worker", "10.2.0.0/24"),
             node("k-worker2", "10.2.1.0/24")]
    assert node_names_by_cidr(spec, nodes) == {
        "node-0": "k-worker", "node-1": "k-worker2", "node-2": "k-control-plane"}


def test_nodes_without_a_matching_cidr_fill_in_by_name() -> None:
    spec = ClusterSpec(nodes=2, cluster_cidr="10.2.0.0/16")
    nodes = [node("b", None), node("a", "10.2.1.0/24"), node("c", None)]
    assert node_names_by_cidr(spec, nodes) == {"node-0": "b", "node-1": "a"}
    with pytest.raises(KindError, match="needs 3 nodes, the cluster has 2"):
        node_names_by_cidr(ClusterSpec(nodes=3), nodes[:2])


def test_objects_get_the_real_node_names_and_image() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"},
           "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "whats-my-ip"},
                                                         {"name": "d", "image": "busybox"}]}}
    out = translate(pod, {"node-1": "k-worker"})
    assert out["spec"]["nodeName"] == "k-worker"
    assert [c["image"] for c in out["spec"]["containers"]] == [
        "cloudnativelabs/whats-my-ip", "busybox"]
    assert pod["spec"]["nodeName"] == "node-1"  # the scenario's own object is unchanged
    deploy = {"kind": "Deployment", "spec": {"template": {"spec": {
        "containers": [{"name": "c", "image": "whats-my-ip"}]}}}}
    assert translate(deploy, {})["spec"]["template"]["spec"]["containers"][0]["image"] == \
        "cloudnativelabs/whats-my-ip"


def test_both_backends_implement_every_method_the_runner_calls() -> None:
    wanted = {name for name, _ in inspect.getmembers(Backend, inspect.isfunction)
              if not name.startswith("_")}
    assert {"apply", "run", "reach", "unsynced", "diagnostics"} <= wanted
    for impl in (Lab, KindCluster):
        missing = [m for m in wanted if not callable(getattr(impl, m, None))]
        assert not missing, f"{impl.__name__} lacks {missing}"


def test_shared_substitutions_and_reach_targets() -> None:
    objects = {("Service", "default", "web"): {"spec": {"clusterIP": "10.1.0.9", "ports": [
        {"port": 80, "nodePort": 30080}]}},
        ("Pod", "default", "a"): {"status": {"podIP": "10.2.1.5"}}}
    get = lambda kind, ns, name: objects.get((kind, ns, name))  # noqa: E731
    ips = {"node-0": "172.18.0.2"}
    assert substitute("svc:default/web", get, ips.__getitem__) == "10.1.0.9"
    assert substitute("nodeport:default/web:80", get, ips.__getitem__) == "30080"
    assert substitute("pod:default/a", get, ips.__getitem__) == "10.2.1.5"
    assert substitute("node:node-0", get, ips.__getitem__) == "172.18.0.2"
    with pytest.raises(KeyError, match="no node port for port '81'"):
        substitute("nodeport:default/web:81", get, ips.__getitem__)
    resolve = lambda key: substitute(key, get, ips.__getitem__)  # noqa: E731
    assert reach_target("svc:default/web:80", resolve) == ("10.1.0.9", 80, False)
    assert reach_target("default/a:5353/udp", resolve) == ("10.2.1.5", 5353, True)
    with pytest.raises(KeyError, match="expected NS/POD:PORT"):
        reach_target("default/a", resolve)
