"""Where the embedded API server behaves as a real kube-apiserver does, seen through the
official kubernetes client: bookmarks on each watch's own clock, watch history lost on a
restart, 429 with Retry-After, EndpointSlices of at most 100 endpoints."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes import config
from kubernetes import watch
from kubernetes.client.rest import ApiException

from kube_router_lab.apiserver import ApiServer
from kube_router_lab.apiserver import ApiStore
from kube_router_lab.controllers import ClusterControllers
from kube_router_lab.spec import parse_cluster


def pod_body(name: str, node: str = "n1", **labels: str) -> dict:
    return {"metadata": {"name": name, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "img"}]}}


def _client(server: ApiServer, tmp_path: Path) -> client.ApiClient:
    return config.new_client_from_config(str(server.write_kubeconfig(tmp_path / "kubeconfig")))


def _bookmark_times(v1: client.CoreV1Api, seconds: int, out: list[float]) -> None:
    start = time.monotonic()
    for e in watch.Watch().stream(v1.list_namespaced_pod, "default", resource_version="1",
                                  allow_watch_bookmarks=True, timeout_seconds=seconds):
        if e["type"] == "BOOKMARK":
            out.append(time.monotonic() - start)


def test_bookmarks_come_on_each_watchs_own_clock(tmp_path: Path) -> None:
    store = ApiStore()
    server = ApiServer(store, bookmark_interval=1.0)
    server.start()
    try:
        v1 = client.CoreV1Api(_client(server, tmp_path))
        v1.create_namespaced_pod("default", pod_body("a"))
        first: list[float] = []
        second: list[float] = []
        t1 = threading.Thread(target=_bookmark_times, args=(v1, 3, first))
        t1.start()
        time.sleep(0.5)  # the second watch starts half an interval later
        t2 = threading.Thread(target=_bookmark_times, args=(v1, 3, second))
        t2.start()
        t1.join(10)
        t2.join(10)
        # each watch's first bookmark one interval after it started, not on a shared tick
        for times in (first, second):
            assert 2 <= len(times) <= 3, times
            assert 0.9 <= times[0] <= 1.6, times
    finally:
        server.stop()


def test_default_bookmark_interval_is_a_minute_as_on_a_real_server(tmp_path: Path) -> None:
    store = ApiStore()
    server = ApiServer(store)
    assert server.bookmark_interval == 60.0
    server.start()
    try:
        v1 = client.CoreV1Api(_client(server, tmp_path))
        v1.create_namespaced_pod("default", pod_body("a"))
        times: list[float] = []
        _bookmark_times(v1, 2, times)
        assert times == []
    finally:
        server.stop()


def test_a_restarted_server_answers_an_old_resource_version_with_410(tmp_path: Path) -> None:
    store = ApiStore()
    server = ApiServer(store, bookmark_interval=0.2)
    server.start()
    try:
        v1 = client.CoreV1Api(_client(server, tmp_path))
        v1.create_namespaced_pod("default", pod_body("a"))
        old = v1.list_namespaced_pod("default").metadata.resource_version
        v1.create_namespaced_pod("default", pod_body("b"))
        # keep_history (the old behaviour, for the tests that need it): resumes across it
        server.keep_history = True
        server.stop()
        server.start()
        events = list(watch.Watch().stream(v1.list_namespaced_pod, "default",
                                           resource_version=old, timeout_seconds=1))
        assert [e["object"].metadata.name for e in events] == ["b"]
        server.keep_history = False
        server.stop()
        server.start()
        with pytest.raises(ApiException) as err:
            for _ in watch.Watch().stream(v1.list_namespaced_pod, "default",
                                          resource_version=old, timeout_seconds=1):
                pass
        assert err.value.status == 410
        # the data survived; a fresh list gives a version a watch resumes from
        listed = v1.list_namespaced_pod("default")
        assert sorted(p.metadata.name for p in listed.items) == ["a", "b"]
        assert list(watch.Watch().stream(v1.list_namespaced_pod, "default",
                                         resource_version=listed.metadata.resource_version,
                                         timeout_seconds=1)) == []
    finally:
        server.stop()


def test_injected_429_carries_retry_after(tmp_path: Path) -> None:
    store = ApiStore()
    server = ApiServer(store, bookmark_interval=0.2)
    server.start()
    try:
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
        # Without retries the client shows the answer itself.
        conf = client.Configuration()
        config.load_kube_config(str(kubeconfig), client_configuration=conf)
        conf.retries = False
        bare = client.CoreV1Api(client.ApiClient(conf))
        server.inject(429, count=1, retry_after=7,
                      when=lambda method, path, params: path.endswith("/pods"))
        with pytest.raises(ApiException) as err:
            bare.list_namespaced_pod("default")
        assert err.value.status == 429 and err.value.headers["Retry-After"] == "7"
        bare.list_namespaced_service("default")  # not selected: served
        assert bare.list_namespaced_pod("default").items == []  # the count is spent
        # The client as built from a kubeconfig honours Retry-After on its own (urllib3):
        # two refusals, each waited out, then the answer.
        v1 = client.CoreV1Api(_client(server, tmp_path))
        server.inject(429, count=2, retry_after=1,
                      when=lambda method, path, params: path.endswith("/pods"))
        before = sum(1 for r in server.requests if r[1].endswith("/pods"))
        started = time.monotonic()
        assert v1.list_namespaced_pod("default").items == []
        assert time.monotonic() - started >= 1.9
        assert sum(1 for r in server.requests if r[1].endswith("/pods")) - before == 3
    finally:
        server.stop()


def test_endpointslices_hold_at_most_100_endpoints(tmp_path: Path) -> None:
    store = ApiStore()
    ctl = ClusterControllers(store, parse_cluster({}), log=lambda _m: None)
    ctl.install_admission()
    ctl.start()
    server = ApiServer(store, bookmark_interval=0.2)
    server.start()
    try:
        api = _client(server, tmp_path)
        v1 = client.CoreV1Api(api)
        v1.create_namespaced_service("default", {
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 80}]}})
        for i in range(250):
            name = f"web-{i:03d}"
            v1.create_namespaced_pod("default", pod_body(name, node="node-0", app="web"))
            v1.patch_namespaced_pod_status(name, "default", {"status": {
                "phase": "Running", "podIP": f"10.2.{i // 200}.{i % 200 + 2}",
                "conditions": [{"type": "Ready", "status": "True"}]}})
        disc = client.DiscoveryV1Api(api)
        deadline = time.monotonic() + 30
        sizes: list[int] = []
        while time.monotonic() < deadline:
            slices = disc.list_namespaced_endpoint_slice(
                "default", label_selector="kubernetes.io/service-name=web").items
            sizes = sorted(len(s.endpoints or []) for s in slices)
            if sum(sizes) == 250:
                break
            time.sleep(0.2)
        assert sizes == [50, 100, 100]
        assert len({s.metadata.name for s in slices}) == 3
    finally:
        server.stop()
        ctl.stop()
