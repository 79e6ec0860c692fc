"""Deployments into Pods (naming, spreading, scaling) and EndpointSlice building."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from kube_router_lab.controllers import SAFE_ALPHABET
from kube_router_lab.controllers import build_endpointslices
from kube_router_lab.controllers import node_object
from kube_router_lab.controllers import plan_deployment
from kube_router_lab.controllers import template_hash
from kube_router_lab.spec import ClusterSpec

NODES = ["node-0", "node-1", "node-2"]


def deployment(replicas: int, *, image: str = "a", uid: str = "d-uid") -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "myip", "namespace": "default", "uid": uid},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "myip"}},
                     "template": {"metadata": {"labels": {"app": "myip"}},
                                  "spec": {"containers": [{"name": "c", "image": image}]}}}}


def materialise(pods: list[dict], stamp: int = 0) -> list[dict]:
    for i, p in enumerate(pods):
        p["metadata"]["uid"] = f"p{stamp}-{i}"
        p["metadata"]["creationTimestamp"] = f"2024-01-01T00:00:{stamp:02d}Z"
    return pods


def test_pod_names_and_even_spread() -> None:
    create, delete = plan_deployment(deployment(5), [], NODES, rng=random.Random(1))
    assert delete == []
    h = template_hash(deployment(5)["spec"]["template"])
    pat = re.compile(rf"^myip-{h}-[{SAFE_ALPHABET}]{{5}}$")
    assert len(h) == 10 and all(pat.match(p["metadata"]["name"]) for p in create)
    assert len({p["metadata"]["name"] for p in create}) == 5
    assert sorted(Counter(p["spec"]["nodeName"] for p in create).values()) == [1, 2, 2]
    p = create[0]
    assert p["metadata"]["labels"] == {"app": "myip", "pod-template-hash": h}
    assert p["metadata"]["ownerReferences"][0]["uid"] == "d-uid"
    assert p["spec"]["containers"][0]["image"] == "a"


def test_scale_up_fills_emptiest_nodes_and_steady_state_is_quiet() -> None:
    pods = materialise(plan_deployment(deployment(2), [], NODES)[0])
    create, delete = plan_deployment(deployment(5), pods, NODES)
    everything = pods + materialise(create, 1)
    assert delete == [] and len(create) == 3
    assert sorted(Counter(p["spec"]["nodeName"] for p in everything).values()) == [1, 2, 2]
    assert plan_deployment(deployment(5), everything, NODES) == ([], [])


def test_scale_down_takes_from_fullest_node_newest_first() -> None:
    pods = materialise(plan_deployment(deployment(4), [], NODES)[0])
    pods[3]["metadata"]["creationTimestamp"] = "2024-01-01T00:01:00Z"  # the newest
    on_node0 = [p for p in pods if p["spec"]["nodeName"] == "node-0"]
    assert len(on_node0) == 2
    create, delete = plan_deployment(deployment(3), pods, NODES)
    assert create == [] and len(delete) == 1
    assert delete[0] in {p["metadata"]["name"] for p in on_node0}
    create, delete = plan_deployment(deployment(0), pods, NODES)
    assert sorted(delete) == sorted(p["metadata"]["name"] for p in pods)


def test_terminating_and_foreign_pods_are_not_counted() -> None:
    pods = materialise(plan_deployment(deployment(2), [], NODES)[0])
    pods[0]["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:09Z"
    foreign = {"metadata": {"name": "other", "namespace": "default", "labels": {"app": "myip"}},
               "spec": {"nodeName": "node-2"}}
    create, delete = plan_deployment(deployment(2), [*pods, foreign], NODES)
    assert len(create) == 1 and delete == []
    assert create[0]["spec"]["nodeName"] == "node-0"  # node-1 and node-2 hold a pod each


def ready(pods: list[dict]) -> list[dict]:
    for p in pods:
        p["status"] = {"phase": "Running", "podIP": "10.2.0.9",
                       "conditions": [{"type": "Ready", "status": "True"}]}
    return pods


def step(deploy: dict, pods: list[dict], stamp: int) -> tuple[list[dict], list[dict], list[str]]:
    """One reconcile: pods created (made ready) and deleted (gone at once)."""
    create, delete = plan_deployment(deploy, pods, NODES)
    pods = [p for p in pods if p["metadata"]["name"] not in delete]
    return pods + ready(materialise(create, stamp)), create, delete


def test_template_change_rolls_out_within_surge_and_unavailability() -> None:
    """replicas 4, maxSurge 25% (1), maxUnavailable 25% (1): at every step at least 3 pods
    are ready and at most 5 not terminating, until the 4 are of the new template."""
    pods = ready(materialise(plan_deployment(deployment(4, image="a"), [], NODES)[0]))
    new = deployment(4, image="b")
    h = template_hash(new["spec"]["template"])
    for i in range(1, 10):
        before = pods
        pods, create, delete = step(new, pods, i)
        ready_left = sum(1 for p in before if p["metadata"]["name"] not in delete)
        assert ready_left >= 3, f"step {i}: only {ready_left} ready pods left"
        assert len(pods) <= 5, f"step {i}: above maxSurge"
        if not create and not delete:
            break
    assert len(pods) == 4 and all(p["metadata"]["labels"]["pod-template-hash"] == h
                                  for p in pods)
    assert all(p["spec"]["containers"][0]["image"] == "b" for p in pods)


def test_template_change_waits_for_new_pods_to_be_ready() -> None:
    pods = ready(materialise(plan_deployment(deployment(1, image="a"), [], NODES)[0]))
    new = deployment(1, image="b")
    create, delete = plan_deployment(new, pods, NODES)
    assert len(create) == 1 and delete == []  # maxUnavailable rounds down to 0 of 1
    pods += materialise(create, 1)  # created, not yet ready
    assert plan_deployment(new, pods, NODES) == ([], [])
    ready(pods[1:])
    assert plan_deployment(new, pods, NODES) == ([], [pods[0]["metadata"]["name"]])


def test_recreate_and_not_ready_old_pods_go_at_once() -> None:
    pods = materialise(plan_deployment(deployment(2, image="a"), [], NODES)[0])
    new = deployment(2, image="b")
    create, delete = plan_deployment(new, pods, NODES)  # none ready: nothing to keep
    assert sorted(delete) == sorted(p["metadata"]["name"] for p in pods) and len(create) == 2
    ready(pods)
    new["spec"]["strategy"] = {"type": "Recreate"}
    create, delete = plan_deployment(new, pods, NODES)
    assert sorted(delete) == sorted(p["metadata"]["name"] for p in pods) and len(create) == 2
    new["spec"]["strategy"] = {"rollingUpdate": {"maxSurge": "x"}}
    with pytest.raises(ValueError, match="strategy"):
        plan_deployment(new, pods, NODES)


def test_invalid_replicas() -> None:
    with pytest.raises(ValueError, match="replicas"):
        plan_deployment(deployment(-1), [], NODES)


def test_node_object() -> None:
    n = node_object(ClusterSpec(), 1)
    assert n["spec"] == {"podCIDR": "10.2.1.0/24", "podCIDRs": ["10.2.1.0/24"]}
    assert {"type": "InternalIP", "address": "192.168.10.101"} in n["status"]["addresses"]
    assert n["status"]["conditions"][0]["type"] == "Ready"
    assert n["status"]["conditions"][0]["status"] == "True"


# -- EndpointSlices ------------------------------------------------------------------------


def service(ports: list[dict], **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default", "uid": "s-uid"},
            "spec": {"selector": {"app": "web"}, "ports": ports, **spec}}


def pod(name: str, ip: str | None, *, node: str = "node-0", ready: bool = True,
        terminating: bool = False, ports: list[dict] | None = None, labels: dict | None = None,
        ns: str = "default") -> dict:
    meta = {"name": name, "namespace": ns, "uid": f"uid-{name}",
            "labels": labels if labels is not None else {"app": "web"}}
    if terminating:
        meta["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    status: dict = {"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True" if ready else "False"}]}
    if ip:
        status["podIP"] = ip
    return {"metadata": meta, "status": status,
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": ports or []}]}}


def test_slice_fields_and_conditions() -> None:
    pods = [pod("a", "10.2.0.2"), pod("b", "10.2.1.2", node="node-1", ready=False),
            pod("c", "10.2.0.3", terminating=True), pod("d", None),
            pod("e", "10.2.0.9", labels={"app": "other"}),
            pod("f", "10.2.0.8", ns="elsewhere")]
    slices = build_endpointslices(service([{"name": "http", "port": 80, "targetPort": 8080,
                                            "protocol": "TCP"}]), pods)
    assert slices is not None and len(slices) == 1
    s = slices[0]
    assert s["apiVersion"] == "discovery.k8s.io/v1" and s["addressType"] == "IPv4"
    assert s["metadata"]["labels"]["kubernetes.io/service-name"] == "web"
    assert s["metadata"]["ownerReferences"][0]["uid"] == "s-uid"
    assert s["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    by_name = {e["targetRef"]["name"]: e for e in s["endpoints"]}
    assert sorted(by_name) == ["a", "b", "c"]
    assert by_name["a"]["conditions"] == {"ready": True, "serving": True, "terminating": False}
    assert by_name["b"]["conditions"] == {"ready": False, "serving": False, "terminating": False}
    assert by_name["c"]["conditions"] == {"ready": False, "serving": True, "terminating": True}
    assert by_name["b"]["nodeName"] == "node-1" and by_name["a"]["addresses"] == ["10.2.0.2"]
    assert by_name["a"]["targetRef"] == {"kind": "Pod", "namespace": "default", "name": "a",
                                         "uid": "uid-a"}


def test_named_target_port_resolution_splits_slices() -> None:
    http = [{"name": "http", "containerPort": 8080}]
    alt = [{"name": "http", "containerPort": 9090}]
    pods = [pod("a", "10.2.0.2", ports=http), pod("b", "10.2.0.3", ports=http),
            pod("c", "10.2.0.4", ports=alt), pod("d", "10.2.0.5")]
    svc = service([{"port": 80, "targetPort": "http", "protocol": "TCP"}])
    slices = build_endpointslices(svc, pods)
    assert slices is not None
    got = {tuple(p["port"] for p in s["ports"]): sorted(e["targetRef"]["name"]
                                                          for e in s["endpoints"])
           for s in slices}
    assert got == {(8080,): ["a", "b"], (9090,): ["c"], (): ["d"]}
    assert len({s["metadata"]["name"] for s in slices}) == 3
    # The biggest group keeps the first name whatever else changes.
    again = build_endpointslices(svc, pods[:2])
    assert again is not None and again[0]["metadata"]["name"] == slices[0]["metadata"]["name"]


def test_no_selector_is_not_managed_and_empty_service_has_a_slice() -> None:
    assert build_endpointslices(service([{"port": 80}], selector=None), []) is None
    slices = build_endpointslices(service([{"port": 80, "targetPort": 8080, "protocol": "UDP"},
                                           {"port": 81, "targetPort": "named"}]), [])
    assert slices is not None and len(slices) == 1
    assert slices[0]["endpoints"] == []
    assert slices[0]["ports"] == [{"name": "", "port": 8080, "protocol": "UDP"}]


def test_publish_not_ready_addresses() -> None:
    slices = build_endpointslices(service([{"port": 80, "targetPort": 80}],
                                          publishNotReadyAddresses=True),
                                  [pod("a", "10.2.0.2", ready=False)])
    assert slices is not None
    assert slices[0]["endpoints"][0]["conditions"]["ready"] is True
