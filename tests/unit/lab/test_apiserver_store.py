"""The ApiStore on its own: metadata, conflicts, patches, apply, admission, subscribers."""

from __future__ import annotations

import threading

import pytest

from kube_router_lab.apiserver import ApiError
from kube_router_lab.apiserver import ApiStore


def pod(name: str, ns: str | None = "default", **labels: str) -> dict:
    meta: dict = {"name": name, "labels": labels}
    if ns is not None:
        meta["namespace"] = ns
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": "c", "image": "img"}]}}


def service(name: str, ns: str = "default") -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"ports": [{"port": 80, "protocol": "TCP"}]}}


def test_create_assigns_server_metadata_and_default_namespace(store: ApiStore) -> None:
    created = store.create(pod("a", ns=None))
    meta = created["metadata"]
    assert meta["namespace"] == "default"
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert meta["resourceVersion"] == store.resource_version() == "1"
    assert meta["generation"] == 1
    node = store.create({"kind": "Node", "metadata": {"name": "n1", "namespace": "x"}})
    assert "namespace" not in node["metadata"]  # cluster-scoped kinds have none
    assert store.get("Node", None, "n1")["metadata"]["resourceVersion"] == "2"


def test_create_existing_is_409_already_exists(store: ApiStore) -> None:
    store.create(pod("a"))
    with pytest.raises(ApiError) as err:
        store.create(pod("a"))
    assert (err.value.code, err.value.reason) == (409, "AlreadyExists")


def test_invalid_objects_are_rejected_with_422(store: ApiStore) -> None:
    for bad in (pod("Bad_Name"), {"kind": "Pod", "metadata": {}}):
        with pytest.raises(ApiError) as err:
            store.create(bad)
        assert (err.value.code, err.value.reason) == (422, "Invalid")
    with pytest.raises(ApiError) as err:
        store.create({"kind": "Widget", "metadata": {"name": "w"}})
    assert err.value.code == 404
    assert store.resource_version() == "0"


def test_update_with_stale_resource_version_is_409_conflict(store: ApiStore) -> None:
    first = store.create(pod("a"))
    first["metadata"]["labels"] = {"v": "2"}
    second = store.update(first)
    assert second["metadata"]["labels"] == {"v": "2"}
    first["metadata"]["labels"] = {"v": "3"}  # still carries the older resourceVersion
    with pytest.raises(ApiError) as err:
        store.update(first)
    assert (err.value.code, err.value.reason) == (409, "Conflict")
    del first["metadata"]["resourceVersion"]  # no precondition: last write wins
    assert store.update(first)["metadata"]["labels"] == {"v": "3"}


def test_generation_counts_spec_changes_only(store: ApiStore) -> None:
    obj = store.create(service("s"))
    obj["metadata"]["labels"] = {"a": "b"}
    obj = store.update(obj)
    assert obj["metadata"]["generation"] == 1
    obj["spec"]["ports"][0]["port"] = 81
    assert store.update(obj)["metadata"]["generation"] == 2


def test_noop_update_makes_no_new_version(store: ApiStore) -> None:
    obj = store.create(service("s"))
    again = store.update(obj)
    assert again["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]
    assert store.resource_version() == "1"


def test_update_of_missing_object_is_404(store: ApiStore) -> None:
    with pytest.raises(ApiError) as err:
        store.update(pod("ghost"))
    assert (err.value.code, err.value.reason) == (404, "NotFound")


def test_patch_merge_strategic_and_json(store: ApiStore) -> None:
    store.create({**pod("a", app="x"), "status": {"phase": "Pending"}})
    out = store.patch("Pod", "default", "a", {"metadata": {"labels": {"app": None, "t": "1"}}})
    assert out["metadata"]["labels"] == {"t": "1"}
    out = store.patch("Pod", "default", "a",
                      {"spec": {"containers": [{"name": "d", "image": "i2"}]}}, "strategic")
    assert [c["name"] for c in out["spec"]["containers"]] == ["c", "d"]  # merged by name
    out = store.patch("Pod", "default", "a",
                      {"spec": {"containers": [{"name": "d", "image": "i2"}]}}, "merge")
    assert [c["name"] for c in out["spec"]["containers"]] == ["d"]  # replaced
    out = store.patch("Pod", "default", "a", [
        {"op": "add", "path": "/metadata/annotations", "value": {"k/x": "v"}},
        {"op": "replace", "path": "/spec/containers/0/image", "value": "i3"},
        {"op": "test", "path": "/metadata/labels/t", "value": "1"},
    ], "json")
    assert out["metadata"]["annotations"] == {"k/x": "v"}
    assert out["spec"]["containers"][0]["image"] == "i3"
    with pytest.raises(ApiError) as err:
        store.patch("Pod", "default", "a", [{"op": "test", "path": "/spec/x", "value": 1}],
                    "json")
    assert err.value.code == 422
    out = store.patch("Pod", "default", "a", {"status": {"phase": "Running"},
                                              "spec": {"nodeName": "ignored"}},
                      subresource="status")
    assert out["status"]["phase"] == "Running" and "nodeName" not in out["spec"]


def test_apply_keeps_fields_it_never_set_and_drops_removed_ones(store: ApiStore) -> None:
    def allocate(new: dict, old: dict | None) -> dict:
        new["spec"].setdefault("clusterIP", (old or {}).get("spec", {}).get("clusterIP",
                                                                            "10.1.0.10"))
        return new

    store.add_admission("Service", allocate)
    manifest = service("s")
    manifest["metadata"]["labels"] = {"a": "1", "b": "2"}
    store.apply(manifest)
    store.patch("Service", "default", "s", {"status": {"loadBalancer": {}}})
    manifest["metadata"]["labels"] = {"a": "1"}
    out = store.apply(manifest)
    assert out["metadata"]["labels"] == {"a": "1"}
    assert out["spec"]["clusterIP"] == "10.1.0.10"
    assert out["status"] == {"loadBalancer": {}}
    assert store.apply(manifest)["metadata"]["resourceVersion"] == out["metadata"][
        "resourceVersion"]  # applying the same manifest again changes nothing


def test_delete_returns_final_version_and_missing_is_404(store: ApiStore) -> None:
    store.create(pod("a"))
    gone = store.delete("Pod", "default", "a")
    assert gone["metadata"]["resourceVersion"] == "2" == store.resource_version()
    assert store.get("Pod", "default", "a") is None
    with pytest.raises(ApiError) as err:
        store.delete("Pod", "default", "a")
    assert (err.value.code, err.value.reason) == (404, "NotFound")


def test_namespace_delete_removes_its_objects(store: ApiStore) -> None:
    store.create({"kind": "Namespace", "metadata": {"name": "x"}})
    store.create(pod("a", ns="x"))
    store.create(pod("b", ns="y"))
    store.delete("Namespace", None, "x")
    assert [p["metadata"]["name"] for p in store.list("Pod")[0]] == ["b"]


def test_list_all_namespaces_and_one(store: ApiStore) -> None:
    store.create(pod("a", ns="x"))
    store.create(pod("b", ns="y"))
    items, rv = store.list("Pod")
    assert sorted(p["metadata"]["name"] for p in items) == ["a", "b"] and rv == "2"
    assert [p["metadata"]["name"] for p in store.list("Pod", "y")[0]] == ["b"]


def test_admission_mutator_applied_on_create_update_and_patch(store: ApiStore) -> None:
    seen: list[tuple[str | None, str | None]] = []

    def mutate(new: dict, old: dict | None) -> dict:
        seen.append((old and old["metadata"]["labels"].get("n"),
                     new["metadata"]["labels"].get("n")))
        if new["metadata"]["labels"].get("n") == "bad":
            raise ApiError(422, "Invalid", "n must not be bad")
        new["metadata"]["labels"]["admitted"] = "yes"
        return new

    store.add_admission("Pod", mutate)
    assert store.create(pod("a", n="1"))["metadata"]["labels"]["admitted"] == "yes"
    out = store.patch("Pod", "default", "a", {"metadata": {"labels": {"n": "2"}}})
    assert out["metadata"]["labels"] == {"n": "2", "admitted": "yes"}
    with pytest.raises(ApiError) as err:
        store.patch("Pod", "default", "a", {"metadata": {"labels": {"n": "bad"}}})
    assert err.value.code == 422
    assert store.get("Pod", "default", "a")["metadata"]["labels"]["n"] == "2"
    assert seen == [(None, "1"), ("1", "2"), ("2", "bad")]
    assert store.create(service("s"))["metadata"].get("labels") is None  # other kinds untouched


def test_subscribe_callback_order_across_threads(store: ApiStore) -> None:
    got: list[tuple[str, str, int]] = []
    unsubscribe = store.subscribe(
        lambda etype, kind, obj: got.append((etype, kind, int(obj["metadata"]["resourceVersion"]))))

    def writer(i: int) -> None:
        for j in range(50):
            store.create(pod(f"p-{i}-{j}"))
            store.delete("Pod", "default", f"p-{i}-{j}")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [rv for _, _, rv in got] == list(range(1, 401))
    assert sum(1 for e, _, _ in got if e == "DELETED") == 200
    unsubscribe()
    store.create(pod("after"))
    assert len(got) == 400


def test_write_inside_callback_is_delivered_after_the_current_event(store: ApiStore) -> None:
    order: list[tuple[str, str, str]] = []

    def first(etype: str, kind: str, obj: dict) -> None:
        order.append(("first", kind, etype))
        if kind == "Service" and etype == "ADDED":
            store.create({"kind": "Endpoints", "metadata": {"name": obj["metadata"]["name"]}})

    store.subscribe(first)
    store.subscribe(lambda etype, kind, obj: order.append(("second", kind, etype)))
    store.create(service("s"))
    assert order == [("first", "Service", "ADDED"), ("second", "Service", "ADDED"),
                     ("first", "Endpoints", "ADDED"), ("second", "Endpoints", "ADDED")]
    assert store.get("Endpoints", "default", "s") is not None


def test_failing_subscriber_does_not_stop_the_others(store: ApiStore) -> None:
    got = []

    def broken(*_: object) -> None:
        raise RuntimeError("boom")

    store.subscribe(broken)
    store.subscribe(lambda etype, kind, obj: got.append(etype))
    store.create(pod("a"))
    assert got == ["ADDED"]


def test_history_resumes_and_expires(store: ApiStore) -> None:
    store.create(pod("a"))
    store.create(pod("b"))
    events, rv = store.events_after(1, timeout=0)
    assert [(e.rv, e.type) for e in events] == [(2, "ADDED")] and rv == 2
    store.compact()
    with pytest.raises(ApiError) as err:
        store.events_after(1, timeout=0)
    assert (err.value.code, err.value.reason) == (410, "Expired")
    assert store.events_after(2, timeout=0) == ([], 2)


def test_compact_up_to_a_point_keeps_the_later_history(store: ApiStore) -> None:
    for name in "abcd":
        store.create(pod(name))
    assert store.revision == 4
    store.compact(upto=2)
    with pytest.raises(ApiError) as err:
        store.events_after(1, timeout=0)
    assert err.value.code == 410
    events, rv = store.events_after(2, timeout=0)  # a watch behind by less still resumes
    assert [e.rv for e in events] == [3, 4] and rv == 4
    store.compact(upto=1)  # never back below an earlier compaction
    with pytest.raises(ApiError):
        store.events_after(1, timeout=0)


def test_history_overflow_expires_old_versions() -> None:
    small = ApiStore(history=10)
    for i in range(25):
        small.create(pod(f"p{i}"))
    assert len(small.events_after(15, timeout=0)[0]) == 10
    with pytest.raises(ApiError) as err:
        small.events_after(14, timeout=0)
    assert err.value.code == 410
