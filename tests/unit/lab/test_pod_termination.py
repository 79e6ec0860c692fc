"""How the lab's kubelet ends a deleted pod: the scenario's pod-termination settings, the
pod's own fields over them, and the timeline they give."""

from __future__ import annotations

import pytest

from kube_router_lab.kubelet import pre_stop_seconds
from kube_router_lab.kubelet import termination_plan
from kube_router_lab.spec import PodTermination
from kube_router_lab.spec import SpecError
from kube_router_lab.spec import parse_cluster


def pod(grace: int | None = 6, pre_stop: object = None) -> dict:
    container: dict = {"name": "c"}
    if pre_stop is not None:
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": pre_stop}}}
    meta = {"name": "p", "namespace": "default", "deletionTimestamp": "2026-01-01T00:00:00Z"}
    if grace is not None:
        meta["deletionGracePeriodSeconds"] = grace
    return {"metadata": meta, "spec": {"containers": [{"name": "a"}, container]}}


def test_defaults_keep_serving_through_the_grace_period() -> None:
    spec = parse_cluster({})
    assert spec.termination == PodTermination(grace=2.0, pre_stop=0.0, serve_after_term=None)
    assert termination_plan(pod(grace=2), spec.termination) == (0.0, 2.0)


def test_pod_termination_parsed() -> None:
    spec = parse_cluster({"pod-termination": {"grace": 6, "pre-stop": 2,
                                              "serve-after-term": 0.5}})
    assert spec.termination == PodTermination(grace=6.0, pre_stop=2.0, serve_after_term=0.5)
    assert parse_cluster({"pod-termination": {}}).termination == PodTermination()


@pytest.mark.parametrize("raw, needle", [
    ({"pod-termination": 3}, "expected a mapping"),
    ({"pod-termination": {"grace": -1}}, "pod-termination.grace"),
    ({"pod-termination": {"pre-stop": "2s"}}, "pod-termination.pre-stop"),
    ({"pod-termination": {"serve-after-term": True}}, "serve-after-term"),
    ({"pod-termination": {"prestop": 1}}, "unknown key 'prestop'"),
])
def test_bad_pod_termination(raw: dict, needle: str) -> None:
    with pytest.raises(SpecError, match=needle):
        parse_cluster(raw)


def test_timeline_prestop_then_sigterm_then_exit_within_grace() -> None:
    lab = PodTermination(grace=6, pre_stop=2, serve_after_term=0)
    assert termination_plan(pod(grace=6), lab) == (2.0, 2.0)  # stops at SIGTERM
    lab = PodTermination(grace=8, pre_stop=0, serve_after_term=3)
    assert termination_plan(pod(grace=8), lab) == (0.0, 3.0)  # answers 3 s past SIGTERM
    # the pod's own preStop sleep wins over the lab's; the grace period caps everything
    assert termination_plan(pod(grace=15, pre_stop=10), lab) == (10.0, 13.0)
    assert termination_plan(pod(grace=4, pre_stop=10), lab) == (4.0, 4.0)
    assert termination_plan(pod(grace=None), lab) == (0.0, 0.0)


def test_pre_stop_seconds_reads_the_sleep_hook_only() -> None:
    assert pre_stop_seconds(pod(pre_stop=5), 1.0) == 5.0
    assert pre_stop_seconds(pod(), 1.0) == 1.0
    assert pre_stop_seconds(pod(pre_stop="5"), 1.0) == 1.0  # not a number: the default
    exec_hook = {"spec": {"containers": [{"lifecycle": {"preStop": {"exec": {"command": []}}}}]}}
    assert pre_stop_seconds(exec_hook, 0.0) == 0.0


def test_deletion_grace_from_the_pod_or_the_lab(store) -> None:
    """A pod's terminationGracePeriodSeconds wins over the lab's grace; 0 deletes at once."""
    from kube_router_lab.controllers import ClusterControllers

    spec = parse_cluster({"nodes": 1, "pod-termination": {"grace": 6}})
    ctl = ClusterControllers(store, spec, log=lambda line: None)
    store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
    for name, grace in (("lab", None), ("own", 15), ("now", 0)):
        body: dict = {"nodeName": "node-0", "containers": [{"name": "c"}]}
        if grace is not None:
            body["terminationGracePeriodSeconds"] = grace
        store.create({"apiVersion": "v1", "kind": "Pod",
                      "metadata": {"name": name, "namespace": "default"}, "spec": body})
        ctl.delete_pod("default", name)
    assert store.get("Pod", "default", "lab")["metadata"]["deletionGracePeriodSeconds"] == 6
    assert store.get("Pod", "default", "own")["metadata"]["deletionGracePeriodSeconds"] == 15
    assert store.get("Pod", "default", "now") is None
