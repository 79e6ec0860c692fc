"""The kind backend's own parts, without a cluster: how the lab's node names and images map
onto a real cluster, and that it is a complete backend of the shared runner."""

from __future__ import annotations

import inspect
import json
import types

import pytest

from kube_router_lab.backend import Backend
from kube_router_lab.backend import reach_target
from kube_router_lab.backend import substitute
from kube_router_lab.cluster import Lab
from kube_router_lab.kind import GATE_KINDS
from kube_router_lab.kind import KindCluster
from kube_router_lab.kind import KindError
from kube_router_lab.kind import gate_watch
from kube_router_lab.kind import node_names_by_cidr
from kube_router_lab.kind import translate
from kube_router_lab.spec import ClusterSpec
from kube_router_lab.versions import SeenOrder
from kube_router_lab.versions import make_token


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
    with pytest.raises(KeyError, match="node node-0 has no pod CIDR"):
        substitute("podcidr:node-0", get, ips.__getitem__)
    objects[("Node", None, "k-worker")] = node("k-worker", "10.2.3.0/24")
    names = {"node-0": "k-worker"}
    assert substitute("podcidr:node-0", get, ips.__getitem__, names.__getitem__) == "10.2.3.0/24"
    resolve = lambda key: substitute(key, get, ips.__getitem__)  # noqa: E731
    assert reach_target("svc:default/web:80", resolve) == ("10.1.0.9", 80, False)
    assert reach_target("default/a:5353/udp", resolve) == ("10.2.1.5", 5353, True)
    with pytest.raises(KeyError, match="expected NS/POD:PORT"):
        reach_target("default/a", resolve)


class Watched(SeenOrder):
    """The lab's watch of the cluster, as far as the gate uses it."""

    def resource_version(self) -> str:
        return make_token(self.last())

    def placed(self, kind: str, have: str, want: str) -> bool | None:
        return self.place(kind, have, want)


def _readyz(versions: dict[str, str]) -> str:
    return json.dumps({"ready": True, "controllers": {"proxy": {
        "synced": True, "lastError": None, "resourceVersions": versions}}})


def test_the_kind_gate_places_opaque_versions_kind_by_kind() -> None:
    kind = KindCluster(ClusterSpec(nodes=1), kubeconfig="unused")
    kind.nodes = {"node-0": "k-worker"}
    seen = Watched()
    # Versions that are not numbers, and a newer one that reads as a smaller number.
    for rv in ("a9", "b1"):
        seen.note("Service", rv, ("default", "web", False))
    for rv in ("900", "12"):
        seen.note("EndpointSlice", rv, ("default", "web-x", False))
    kind.versions = seen  # type: ignore[assignment]
    want = kind.resource_version()
    assert want == "EndpointSlice=12,Service=b1"
    answers: list[dict[str, str]] = []
    kind._docker_exec = lambda node, argv, timeout=30.0: (  # type: ignore[method-assign]
        0, _readyz(answers[-1]), "")

    answers.append({"Service": "b1", "EndpointSlice": "12", "Node": "7"})
    assert kind.unsynced(want) == {}
    answers.append({"Service": "b1", "EndpointSlice": "900"})
    assert "EndpointSlice at 900 of 12" in kind.unsynced(want)["node-0"]
    answers.append({"Service": "zz", "EndpointSlice": "12"})  # a version the lab never saw
    assert "(not placed yet)" in kind.unsynced(want)["node-0"]


def test_the_kind_gate_watches_with_the_kubeconfigs_client_certificate(tmp_path) -> None:
    files = {n: str(tmp_path / n) for n in ("ca", "crt", "key")}
    cfg = types.SimpleNamespace(host="https://127.0.0.1:6443", ssl_ca_cert=files["ca"],
                                cert_file=files["crt"], key_file=files["key"])
    store = gate_watch(cfg)
    assert store.server == "https://127.0.0.1:6443"
    assert store.watch_kinds == GATE_KINDS
    with pytest.raises(KindError, match="no client certificate"):
        gate_watch(types.SimpleNamespace(host="https://x", ssl_ca_cert=None, cert_file=None,
                                         key_file=None))
