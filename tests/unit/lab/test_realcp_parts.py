"""The parts of the real control plane's lab support that need no control plane: the
scenario key, the certificates, the convergence gate's reading of the agents' readiness, and
the client's store interface against the embedded server."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from kube_router_lab.api.server import ApiServer
from kube_router_lab.api.store import ApiStore
from kube_router_lab.kubelet import pod_ready
from kube_router_lab.realcp.nodes import NodeHeartbeats
from kube_router_lab.realcp.pki import Pki
from kube_router_lab.realcp.remote import RemoteStore
from kube_router_lab.realcp.remote import with_pod_grace
from kube_router_lab.spec import SpecError
from kube_router_lab.spec import parse_cluster
from kube_router_lab.versions import SeenOrder
from kube_router_lab.versions import make_token
from kube_router_lab.versions import parse_token
from kube_router_lab.versions import unsynced_reason


def test_control_plane_key() -> None:
    assert parse_cluster({}).control_plane == "embedded"
    assert parse_cluster({"control-plane": "real"}).control_plane == "real"
    with pytest.raises(SpecError, match="control-plane"):
        parse_cluster({"control-plane": "kind"})


def test_pod_specs_get_the_labs_grace_unless_they_set_one() -> None:
    pod = {"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": []}}
    assert with_pod_grace(pod, 2.0)["spec"]["terminationGracePeriodSeconds"] == 2
    assert "terminationGracePeriodSeconds" not in pod["spec"]  # the caller's is left alone
    deploy = {"kind": "Deployment", "spec": {"replicas": 2,
                                             "template": {"spec": {"containers": []}}}}
    out = with_pod_grace(deploy, 0.5)
    assert out["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 1
    assert out["spec"]["replicas"] == 2
    own = {"kind": "Pod", "spec": {"terminationGracePeriodSeconds": 30}}
    assert with_pod_grace(own, 2.0) is own
    svc = {"kind": "Service", "spec": {"ports": []}}
    assert with_pod_grace(svc, 2.0) is svc


def test_certificates_chain_to_the_lab_ca(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    pki.make_ca()
    server = pki.issue("apiserver", cn="kube-apiserver", server=True,
                       ips=("192.168.10.1", "10.1.0.1"), dns=("kubernetes.default.svc",))
    client = pki.issue("admin", cn="lab", org="system:masters")
    for pair in (server, client):
        out = subprocess.run(["openssl", "verify", "-CAfile", str(pki.ca.cert), str(pair.cert)],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
    text = subprocess.run(["openssl", "x509", "-noout", "-text", "-in", str(server.cert)],
                          capture_output=True, text=True, check=True).stdout
    assert "IP Address:192.168.10.1" in text and "DNS:kubernetes.default.svc" in text
    subject = subprocess.run(["openssl", "x509", "-noout", "-subject", "-in", str(client.cert)],
                             capture_output=True, text=True, check=True).stdout
    assert "O = system:masters" in subject and "CN = lab" in subject


def _doc(**versions: dict[str, str]) -> dict:
    return {"controllers": {name: {"resourceVersions": v, "resourceVersion": "1",
                                   "synced": bool(v)}
                            for name, v in versions.items()}}


def test_gate_places_opaque_versions_by_the_order_the_lab_saw_them() -> None:
    # Versions that are not numbers, and whose text sorts the other way round from their
    # order: the gate must never read them as numbers or compare them as strings.
    order = SeenOrder()
    order.note("Service", "zz-list")  # the lab's list
    for rv, name in (("q7", "a"), ("c3", "b"), ("Ab", "a")):
        order.note("Service", rv, ("default", name, False))
    order.note("EndpointSlice", "x/9", ("default", "a-1", False))
    order.note("Node", "m", None)
    token = make_token(order.last())
    assert parse_token(token) == {"EndpointSlice": "x/9", "Node": "m", "Service": "Ab"}
    synced = _doc(proxy={"Service": "Ab", "EndpointSlice": "x/9", "Pod": "whatever"})
    assert unsynced_reason(synced, token, order.place) is None
    behind = _doc(proxy={"Service": "c3", "EndpointSlice": "x/9"})
    reason = unsynced_reason(behind, token, order.place)
    assert reason is not None and "Service at c3 of Ab" in reason
    assert "EndpointSlice" not in reason
    assert order.place("Service", "zz-list", "q7") is False  # "zz" > "q" as text: not used
    assert order.place("Service", "c3", "q7") is True
    # A version the lab never saw (an agent's bookmark) is behind until it can be placed.
    unseen = _doc(proxy={"Service": "bookmark-1"})
    assert "not placed yet" in (unsynced_reason(unseen, token, order.place) or "")
    assert unsynced_reason(unseen, token, lambda k, have, want: True) is None
    assert order.change("Service", "c3") == ("default", "b", False)
    assert "resourceVersions" in (unsynced_reason({"controllers": {"x": {}}}, token,
                                                  order.place) or "")
    assert unsynced_reason("connection refused", token, order.place) == "connection refused"
    assert "not synced yet" in (unsynced_reason(_doc(proxy={}), token, order.place) or "")


def test_embedded_store_places_only_versions_it_issued() -> None:
    store = ApiStore()
    store.create({"apiVersion": "v1", "kind": "Service",
                  "metadata": {"name": "a", "namespace": "default"}, "spec": {}})
    store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"}})
    assert store.last_changes() == {"Service": "1", "Namespace": "2"}
    assert store.placed("Service", "2", "1") is True
    assert store.placed("Service", "1", "2") is False
    assert store.placed("Service", "opaque", "1") is None


def test_remote_store_interface_against_the_embedded_server(tmp_path: Path) -> None:
    store = ApiStore()
    server = ApiServer(store, "127.0.0.1", 0, bookmark_interval=0.2)
    server.start()
    remote = RemoteStore(server.url, ca="", cert="", key="", watch_kinds=("Service",))
    seen: list[tuple[str, str]] = []
    seen_rv: list[str] = []
    try:
        remote.subscribe(lambda t, k, o: (seen.append((t, o["metadata"]["name"])),
                                          seen_rv.append(o["metadata"]["resourceVersion"])))
        remote.start(timeout=10)
        remote.create({"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": "a", "namespace": "default"},
                       "spec": {"ports": [{"port": 80}]}})
        assert remote.get("Service", "default", "a")["metadata"]["name"] == "a"
        assert remote.get("Service", "default", "nope") is None
        remote.patch("Service", "default", "a", {"metadata": {"annotations": {"x": "y"}}})
        items, _ = remote.list("Service")
        assert items[0]["metadata"]["annotations"] == {"x": "y"} and items[0]["kind"] == "Service"
        remote.delete("Service", "default", "a")
        deadline = time.monotonic() + 10
        while ("DELETED", "a") not in seen and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [t for t, n in seen if n == "a"] == ["ADDED", "MODIFIED", "DELETED"]
        last = parse_token(remote.resource_version())["Service"]
        assert last == store.resource_version()
        # the lab saw every change: the delete is placed after the create, by equality alone
        create_rv = seen_rv[0]
        assert remote.placed("Service", last, create_rv) is True
        assert remote.placed("Service", create_rv, last) is False
    finally:
        remote.stop()
        server.stop()


def test_pod_servers_stop_before_start_and_twice() -> None:
    # A bring-up that fails before the pod servers start tears them down, and the run's
    # teardown does again: neither may raise (it would hide why the bring-up failed).
    from kube_router_lab.whatsmyip import WhatsMyIp

    servers = WhatsMyIp(log=lambda _m: None)
    servers.stop()
    servers.stop()


def test_remote_store_places_versions_it_never_saw_by_exact_reads() -> None:
    # The lab watches Services only: the versions of Namespace changes are ones it never
    # saw, as an agent's bookmark or list version would be. Placed by reading the changed
    # Service as of that version and comparing resourceVersions for equality.
    store = ApiStore()
    server = ApiServer(store, "127.0.0.1", 0, bookmark_interval=60)
    server.start()
    svc = {"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "old", "namespace": "default"}, "spec": {}}
    store.create(svc)  # before the lab lists
    remote = RemoteStore(server.url, ca="", cert="", key="", watch_kinds=("Service",))

    def ns(name: str) -> str:
        return store.create({"apiVersion": "v1", "kind": "Namespace",
                             "metadata": {"name": name}})["metadata"]["resourceVersion"]

    def lab_saw(rv: str) -> None:
        deadline = time.monotonic() + 10
        while parse_token(remote.resource_version()).get("Service") != rv:
            assert time.monotonic() < deadline, remote.resource_version()
            time.sleep(0.05)

    try:
        remote.start(timeout=10)
        listed = parse_token(remote.resource_version())["Service"]
        after_list = ns("n0")
        assert remote.placed("Service", after_list, listed) is True  # same Services
        before = ns("n1")
        created = store.create({**svc, "metadata": {"name": "a", "namespace": "default"}}
                               )["metadata"]["resourceVersion"]
        between = ns("n2")
        patched = store.patch("Service", "default", "a", {"metadata": {"labels": {"x": "1"}}}
                              )["metadata"]["resourceVersion"]
        lab_saw(patched)
        assert remote.placed("Service", between, patched) is False
        assert remote.placed("Service", between, created) is True
        assert remote.placed("Service", before, created) is False  # not there yet
        later = ns("n3")
        assert remote.placed("Service", later, patched) is True
        gone = store.delete("Service", "default", "a")["metadata"]["resourceVersion"]
        lab_saw(gone)
        after = ns("n4")
        assert remote.placed("Service", after, gone) is True
        assert remote.placed("Service", later, gone) is False
        # the embedded server keeps no history across a restart: 410, so older
        server.stop()
        server.start()
        assert remote.placed("Service", before, gone) is False
    finally:
        remote.stop()
        server.stop()


def test_heartbeats_see_a_node_marked_not_ready_and_post_it_ready() -> None:
    store = ApiStore()
    store.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-0"},
                  "status": {"conditions": [{"type": "Ready", "status": "Unknown",
                                             "reason": "NodeStatusUnknown"}]}})
    beats = NodeHeartbeats(store, [("node-0", "192.0.2.10")], log=lambda _: None)  # type: ignore[arg-type]
    assert beats._says_ready("node-0") is False
    beats._post_status("node-0", "192.0.2.10")
    assert beats._says_ready("node-0") is True


def test_pod_ready_reads_the_ready_condition_only() -> None:
    cond = lambda t, s: {"status": {"conditions": [{"type": t, "status": s}]}}  # noqa: E731
    assert pod_ready(cond("Ready", "True"))
    assert not pod_ready(cond("Ready", "False"))
    assert not pod_ready(cond("ContainersReady", "True"))
    assert not pod_ready({"metadata": {"name": "p"}})
