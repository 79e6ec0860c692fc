"""The official kubernetes client against the embedded API server, unchanged."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest
from kubernetes import client
from kubernetes import watch
from kubernetes.client.rest import ApiException

from kube_router_lab.apiserver import ApiServer
from kube_router_lab.apiserver import ApiStore


def pod_body(name: str, node: str = "n1", **labels: str) -> dict:
    return {"metadata": {"name": name, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "img"}]}}


def test_discovery_and_version(server: ApiServer, api: client.ApiClient) -> None:
    assert client.VersionApi(api).get_code().git_version.startswith("v1.")
    assert client.CoreApi(api).get_api_versions().versions == ["v1"]
    groups = {g.name for g in client.ApisApi(api).get_api_versions().groups}
    assert {"apps", "discovery.k8s.io", "networking.k8s.io"} <= groups
    names = {r.name for r in client.CoreV1Api(api).get_api_resources().resources}
    assert {"pods", "pods/status", "services", "nodes", "namespaces", "endpoints"} <= names


def test_core_v1_round_trips(api: client.ApiClient) -> None:
    v1 = client.CoreV1Api(api)
    v1.create_namespace({"metadata": {"name": "x", "labels": {"team": "a"}}})
    v1.create_node({"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.2.1.0/24"}})
    created = v1.create_namespaced_pod("x", pod_body("a", app="web"))
    assert created.metadata.namespace == "x" and created.metadata.uid
    got = v1.read_namespaced_pod("a", "x")
    got.metadata.labels["tier"] = "front"
    replaced = v1.replace_namespaced_pod("a", "x", got)
    assert int(replaced.metadata.resource_version) > int(created.metadata.resource_version)
    patched = v1.patch_namespaced_pod("a", "x", {"metadata": {"labels": {"tier": None}}})
    assert patched.metadata.labels == {"app": "web"}
    merged = v1.patch_namespaced_pod(
        "a", "x", {"spec": {"containers": [{"name": "d", "image": "img2"}]}},
        _content_type="application/merge-patch+json")
    assert [c.name for c in merged.spec.containers] == ["d"]  # merge patch replaces lists
    strategic = v1.patch_namespaced_pod(
        "a", "x", {"spec": {"containers": [{"name": "e", "image": "img3"}]}})
    assert [c.name for c in strategic.spec.containers] == ["d", "e"]  # merged by name
    status = v1.patch_namespaced_pod_status(
        "a", "x", {"status": {"phase": "Running", "podIP": "10.2.1.5"}})
    assert status.status.pod_ip == "10.2.1.5"
    svc = v1.create_namespaced_service("x", {
        "metadata": {"name": "s"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "protocol": "TCP"}]}})
    assert svc.spec.ports[0].port == 80
    v1.create_namespaced_config_map("x", {"metadata": {"name": "cm"}, "data": {"k": "v"}})
    v1.create_namespaced_secret("x", {"metadata": {"name": "sec"}, "stringData": {"k": "v"}})
    v1.create_namespaced_endpoints("x", {"metadata": {"name": "s"}, "subsets": []})
    assert v1.read_namespaced_config_map("cm", "x").data == {"k": "v"}
    assert v1.read_node("n1").spec.pod_cidr == "10.2.1.0/24"
    v1.delete_namespaced_pod("a", "x")
    with pytest.raises(ApiException) as err:
        v1.read_namespaced_pod("a", "x")
    assert err.value.status == 404
    assert json.loads(err.value.body)["reason"] == "NotFound"


def test_apps_discovery_networking_round_trips(api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    dep = apps.create_namespaced_deployment("default", {
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "c", "image": "img"}]}}}})
    assert dep.spec.replicas == 2 and dep.metadata.generation == 1
    dep = apps.patch_namespaced_deployment("web", "default", {"spec": {"replicas": 3}})
    assert dep.spec.replicas == 3 and dep.metadata.generation == 2
    assert [d.metadata.name for d in apps.list_deployment_for_all_namespaces().items] == ["web"]

    disc = client.DiscoveryV1Api(api)
    disc.create_namespaced_endpoint_slice("default", {
        "metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.2.0.5"], "conditions": {"ready": True}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
    slices = disc.list_namespaced_endpoint_slice(
        "default", label_selector="kubernetes.io/service-name=web")
    assert [s.endpoints[0].addresses for s in slices.items] == [["10.2.0.5"]]
    got = disc.read_namespaced_endpoint_slice("web-abc", "default")
    got.endpoints[0].addresses = ["10.2.0.6"]
    assert disc.replace_namespaced_endpoint_slice(
        "web-abc", "default", got).endpoints[0].addresses == ["10.2.0.6"]
    disc.delete_namespaced_endpoint_slice("web-abc", "default")
    assert disc.list_endpoint_slice_for_all_namespaces().items == []

    net = client.NetworkingV1Api(api)
    net.create_namespaced_network_policy("default", {
        "metadata": {"name": "deny"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}})
    pol = net.patch_namespaced_network_policy(
        "deny", "default", [{"op": "add", "path": "/spec/policyTypes/-", "value": "Egress"}])
    assert pol.spec.policy_types == ["Ingress", "Egress"]
    net.delete_namespaced_network_policy("deny", "default")
    assert net.list_network_policy_for_all_namespaces().items == []


def test_errors_are_status_objects_with_the_right_code(api: client.ApiClient) -> None:
    v1 = client.CoreV1Api(api)
    first = v1.create_namespaced_pod("default", pod_body("a"))
    cases = [
        (lambda: v1.create_namespaced_pod("default", pod_body("a")), 409, "AlreadyExists"),
        (lambda: v1.create_namespaced_pod("default", pod_body("UPPER")), 422, "Invalid"),
        (lambda: v1.delete_namespaced_pod("zz", "default"), 404, "NotFound"),
    ]
    v1.patch_namespaced_pod("a", "default", {"metadata": {"labels": {"x": "1"}}})
    cases.append((lambda: v1.replace_namespaced_pod("a", "default", first), 409, "Conflict"))
    for call, code, reason in cases:
        with pytest.raises(ApiException) as err:
            call()
        assert err.value.status == code
        body = json.loads(err.value.body)
        assert (body["kind"], body["code"], body["reason"]) == ("Status", code, reason)


def test_list_selectors_across_and_within_namespaces(api: client.ApiClient) -> None:
    v1 = client.CoreV1Api(api)
    v1.create_namespaced_pod("a", pod_body("p1", node="n1", app="web", tier="front"))
    v1.create_namespaced_pod("a", pod_body("p2", node="n2", app="web"))
    v1.create_namespaced_pod("b", pod_body("p3", node="n1", app="db"))

    def names(resp: object) -> list[str]:
        return sorted(p.metadata.name for p in resp.items)

    assert names(v1.list_pod_for_all_namespaces()) == ["p1", "p2", "p3"]
    assert names(v1.list_namespaced_pod("a")) == ["p1", "p2"]
    assert names(v1.list_pod_for_all_namespaces(label_selector="app=web")) == ["p1", "p2"]
    assert names(v1.list_pod_for_all_namespaces(label_selector="app in (web,db),!tier")) == [
        "p2", "p3"]
    assert names(v1.list_pod_for_all_namespaces(label_selector="app!=web")) == ["p3"]
    assert names(v1.list_pod_for_all_namespaces(field_selector="spec.nodeName=n1")) == [
        "p1", "p3"]
    assert names(v1.list_pod_for_all_namespaces(
        field_selector="metadata.namespace=a,metadata.name!=p1")) == ["p2"]
    assert names(v1.list_namespaced_pod("b", field_selector="metadata.name=p3")) == ["p3"]
    with pytest.raises(ApiException) as err:
        v1.list_pod_for_all_namespaces(label_selector="app in web")
    assert err.value.status == 400


def test_watch_resumes_from_resource_version(store: ApiStore, api: client.ApiClient) -> None:
    v1 = client.CoreV1Api(api)
    v1.create_namespaced_pod("default", pod_body("before"))
    rv = v1.list_namespaced_pod("default").metadata.resource_version
    v1.create_namespaced_pod("default", pod_body("a"))
    v1.patch_namespaced_pod("a", "default", {"metadata": {"labels": {"x": "1"}}})
    v1.create_namespaced_service("default", {"metadata": {"name": "other"},
                                             "spec": {"ports": [{"port": 1}]}})
    v1.delete_namespaced_pod("a", "default")
    events = [(e["type"], e["object"].metadata.name, e["object"].metadata.resource_version)
              for e in watch.Watch().stream(v1.list_namespaced_pod, "default",
                                            resource_version=rv, timeout_seconds=1)]
    assert events == [("ADDED", "a", "2"), ("MODIFIED", "a", "3"), ("DELETED", "a", "5")]
    assert store.resource_version() == "5"


def test_watch_without_resource_version_starts_with_current_state(api: client.ApiClient) -> None:
    v1 = client.CoreV1Api(api)
    v1.create_namespaced_pod("default", pod_body("a"))
    v1.create_namespaced_pod("other", pod_body("b"))
    for rv in (None, "0"):
        kwargs = {"timeout_seconds": 1} if rv is None else {"timeout_seconds": 1,
                                                            "resource_version": rv}
        seen = [(e["type"], e["object"].metadata.name)
                for e in watch.Watch().stream(v1.list_pod_for_all_namespaces, **kwargs)]
        assert sorted(seen) == [("ADDED", "a"), ("ADDED", "b")]


def test_live_events_reach_an_open_watch(api: client.ApiClient) -> None:
    v1 = client.CoreV1Api(api)
    rv = v1.list_namespaced_pod("default").metadata.resource_version
    w = watch.Watch()
    got: list[str] = []

    def consume() -> None:
        for e in w.stream(v1.list_namespaced_pod, "default", resource_version=rv,
                          timeout_seconds=5):
            got.append(e["object"].metadata.name)
            if len(got) == 3:
                w.stop()

    t = threading.Thread(target=consume)
    t.start()
    for name in ("a", "b", "c"):
        time.sleep(0.05)
        v1.create_namespaced_pod("default", pod_body(name))
    t.join(5)
    assert got == ["a", "b", "c"]


def test_watch_gets_410_gone_after_compact(store: ApiStore, api: client.ApiClient) -> None:
    v1 = client.CoreV1Api(api)
    v1.create_namespaced_pod("default", pod_body("a"))
    v1.create_namespaced_pod("default", pod_body("b"))
    store.compact()
    with pytest.raises(ApiException) as err:
        for _ in watch.Watch().stream(v1.list_namespaced_pod, "default", resource_version="1",
                                      timeout_seconds=1):
            pass
    assert err.value.status == 410 and "Expired" in err.value.reason
    # the current version still resumes
    events = list(watch.Watch().stream(v1.list_namespaced_pod, "default",
                                       resource_version=store.resource_version(),
                                       timeout_seconds=1))
    assert events == []


def test_bookmarks_arrive_with_the_current_resource_version(
        store: ApiStore, api: client.ApiClient) -> None:
    v1 = client.CoreV1Api(api)
    v1.create_namespaced_pod("default", pod_body("a"))
    store.create({"kind": "Service", "metadata": {"name": "s"}})  # moves the global RV on
    events = list(watch.Watch().stream(v1.list_namespaced_pod, "default",
                                       resource_version="1", allow_watch_bookmarks=True,
                                       timeout_seconds=1))
    bookmarks = [e for e in events if e["type"] == "BOOKMARK"]
    assert len(bookmarks) >= 3  # interval 0.2 s over 1 s
    assert all(b["raw_object"]["metadata"]["resourceVersion"] == "2" for b in bookmarks)
    assert bookmarks[0]["raw_object"]["kind"] == "Pod"
    quiet = list(watch.Watch().stream(v1.list_namespaced_pod, "default", resource_version="1",
                                      timeout_seconds=1))
    assert [e["type"] for e in quiet] == []  # no bookmarks unless asked for


def test_filtered_watch_sees_objects_leave_and_enter_the_selection(api: client.ApiClient
                                                                   ) -> None:
    v1 = client.CoreV1Api(api)
    v1.create_namespaced_pod("default", pod_body("a", app="web"))
    rv = v1.list_namespaced_pod("default").metadata.resource_version
    v1.patch_namespaced_pod("a", "default", {"metadata": {"labels": {"app": "db"}}})
    v1.patch_namespaced_pod("a", "default", {"metadata": {"labels": {"x": "1"}}})
    v1.patch_namespaced_pod("a", "default", {"metadata": {"labels": {"app": "web"}}})
    events = [e["type"] for e in watch.Watch().stream(
        v1.list_namespaced_pod, "default", label_selector="app=web", resource_version=rv,
        timeout_seconds=1)]
    assert events == ["DELETED", "ADDED"]


def test_stop_start_keeps_data_port_and_ends_watches(server: ApiServer,
                                                     api: client.ApiClient) -> None:
    v1 = client.CoreV1Api(api)
    v1.create_namespaced_pod("default", pod_body("a"))
    url = server.url
    ended = threading.Event()

    def consume() -> None:
        try:
            for _ in watch.Watch().stream(v1.list_namespaced_pod, "default",
                                          resource_version="1", timeout_seconds=30):
                pass
        except Exception:
            pass  # a connection cut mid-stream is what a restart looks like
        ended.set()

    watchers = [threading.Thread(target=consume, daemon=True) for _ in range(20)]
    for t in watchers:
        t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    server.stop()
    assert time.monotonic() - t0 < 3
    with pytest.raises(Exception):  # noqa: B017 - any connection error: nobody listens
        v1.list_namespaced_pod("default", _request_timeout=1)
    server.start()
    assert server.url == url
    assert [p.metadata.name for p in v1.list_namespaced_pod("default").items] == ["a"]
    for t in watchers:
        t.join(5)
    assert ended.is_set() and not any(t.is_alive() for t in watchers)


def test_many_concurrent_watches_all_get_each_event(api: client.ApiClient) -> None:
    v1 = client.CoreV1Api(api)
    n = 40
    counts = [0] * n
    ready = threading.Barrier(n + 1)

    def consume(i: int) -> None:
        w = watch.Watch()
        ready.wait()
        for _ in w.stream(v1.list_namespaced_pod, "default", resource_version="0",
                          timeout_seconds=5):
            counts[i] += 1
            if counts[i] == 5:
                w.stop()

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    ready.wait()
    for j in range(5):
        v1.create_namespaced_pod("default", pod_body(f"p{j}"))
    for t in threads:
        t.join(10)
    assert counts == [5] * n


def test_list_of_50k_pods_is_fast_server_side(store: ApiStore, server: ApiServer) -> None:
    for i in range(50_000):
        store.create({"kind": "Pod", "metadata": {
            "name": f"p{i}", "namespace": f"ns{i % 50}", "labels": {"app": f"a{i % 100}"}},
            "spec": {"nodeName": f"node-{i % 3}",
                     "containers": [{"name": "c", "image": "img", "ports": [
                         {"containerPort": 8080, "protocol": "TCP"}]}]},
            "status": {"phase": "Running", "podIP": f"10.2.{i // 250}.{i % 250}"}})
    best = 1e9
    for _ in range(3):
        t0 = time.perf_counter()
        with urllib.request.urlopen(server.url + "/api/v1/pods") as resp:
            body = resp.read()
        best = min(best, time.perf_counter() - t0)
    assert body.count(b'"kind":"Pod"') == 50_000
    assert best < 1.0, f"listing 50k pods took {best:.2f}s"


def test_paged_list_with_limit_and_continue(store: ApiStore, api: client.ApiClient) -> None:
    v1 = client.CoreV1Api(api)
    for ns, name in [("b", "p1"), ("a", "p2"), ("a", "p1"), ("c", "p0"), ("a", "p3")]:
        v1.create_namespaced_pod(ns, pod_body(name, app="web" if name != "p3" else "db"))
    first = v1.list_pod_for_all_namespaces(limit=2)
    pages = [[(p.metadata.namespace, p.metadata.name) for p in first.items]]
    token = first.metadata._continue
    while token:
        page = v1.list_pod_for_all_namespaces(limit=2, _continue=token)
        assert page.metadata.resource_version == first.metadata.resource_version
        pages.append([(p.metadata.namespace, p.metadata.name) for p in page.items])
        token = page.metadata._continue
    assert pages == [[("a", "p1"), ("a", "p2")], [("a", "p3"), ("b", "p1")], [("c", "p0")]]
    one_ns = v1.list_namespaced_pod("a", limit=5, label_selector="app=web")
    assert [p.metadata.name for p in one_ns.items] == ["p1", "p2"]
    assert one_ns.metadata._continue is None
    stale = v1.list_pod_for_all_namespaces(limit=1).metadata._continue
    v1.create_namespaced_pod("d", pod_body("late"))
    store.compact()
    with pytest.raises(ApiException) as err:
        v1.list_pod_for_all_namespaces(limit=1, _continue=stale)
    assert err.value.status == 410


def test_server_side_apply_yaml_and_unknown_paths(server: ApiServer, store: ApiStore) -> None:
    body = b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\ndata: {a: '1'}\n"
    req = urllib.request.Request(
        server.url + "/api/v1/namespaces/default/configmaps/cm?fieldManager=t", data=body,
        method="PATCH", headers={"Content-Type": "application/apply-patch+yaml"})
    with urllib.request.urlopen(req) as resp:
        assert json.loads(resp.read())["data"] == {"a": "1"}
    assert store.get("ConfigMap", "default", "cm")["data"] == {"a": "1"}
    for path in ("/api/v1/widgets", "/apis/apps/v1/namespaces/x/deployments/a/scale", "/nope"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(server.url + path)
        assert err.value.code == 404
        assert json.loads(err.value.read())["kind"] == "Status"


def test_failing_admission_is_a_500_and_the_server_keeps_serving(
        store: ApiStore, api: client.ApiClient) -> None:
    def broken(new: dict, old: dict | None) -> dict:
        raise KeyError("spec")

    store.add_admission("ConfigMap", broken)
    v1 = client.CoreV1Api(api)
    with pytest.raises(ApiException) as err:
        v1.create_namespaced_config_map("default", {"metadata": {"name": "cm"}})
    assert err.value.status == 500
    assert v1.list_namespaced_config_map("default").items == []
