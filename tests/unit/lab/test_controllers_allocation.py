"""Service admission: cluster IPs and node ports, requested or allocated, kept on update."""

from __future__ import annotations

import pytest

from kube_router_lab.apiserver import ApiError
from kube_router_lab.apiserver import ApiStore
from kube_router_lab.controllers import Allocator


def svc(name: str, ns: str = "default", **spec) -> dict:
    spec.setdefault("ports", [{"port": 80}])
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


@pytest.fixture
def alloc() -> Allocator:
    return Allocator("10.1.0.0/16", port_range=(30000, 30004))


def test_allocates_sequential_cluster_ips_and_defaults(alloc: Allocator) -> None:
    a = alloc.admit(svc("a"), None)["spec"]
    b = alloc.admit(svc("b"), None)["spec"]
    assert a["clusterIP"] == "10.1.0.1" and a["clusterIPs"] == ["10.1.0.1"]
    assert b["clusterIP"] == "10.1.0.2"
    assert a["ipFamilies"] == ["IPv4"] and a["ipFamilyPolicy"] == "SingleStack"
    assert a["type"] == "ClusterIP" and a["sessionAffinity"] == "None"
    assert a["ports"] == [{"port": 80, "protocol": "TCP", "targetPort": 80}]
    assert "nodePort" not in a["ports"][0]


def test_requested_ip_honoured_and_conflict_rejected(alloc: Allocator) -> None:
    assert alloc.admit(svc("a", clusterIP="10.1.3.4"), None)["spec"]["clusterIP"] == "10.1.3.4"
    with pytest.raises(ApiError) as err:
        alloc.admit(svc("b", clusterIP="10.1.3.4"), None)
    assert err.value.code == 422 and "already allocated" in str(err.value)
    with pytest.raises(ApiError, match="not in the service CIDR"):
        alloc.admit(svc("c", clusterIP="10.9.0.1"), None)
    with pytest.raises(ApiError, match="not an IP"):
        alloc.admit(svc("d", clusterIP="banana"), None)
    # A failed admission holds nothing: the next free address is still the first.
    assert alloc.admit(svc("e"), None)["spec"]["clusterIP"] == "10.1.0.1"


def test_update_keeps_ip_and_ports_and_ip_is_immutable(alloc: Allocator) -> None:
    first = alloc.admit(svc("a", type="NodePort"), None)
    again = alloc.admit(svc("a", type="NodePort"), first)
    assert again["spec"]["clusterIP"] == first["spec"]["clusterIP"]
    assert again["spec"]["ports"][0]["nodePort"] == first["spec"]["ports"][0]["nodePort"]
    with pytest.raises(ApiError, match="immutable"):
        alloc.admit(svc("a", clusterIP="10.1.9.9"), first)


def test_release_frees_addresses(alloc: Allocator) -> None:
    alloc.admit(svc("a"), None)
    alloc.release("default/a")
    assert alloc.admit(svc("b"), None)["spec"]["clusterIP"] == "10.1.0.1"


def test_headless_and_external_name(alloc: Allocator) -> None:
    h = alloc.admit(svc("h", clusterIP="None"), None)["spec"]
    assert h["clusterIP"] == "None" and h["clusterIPs"] == ["None"]
    e = alloc.admit(svc("e", type="ExternalName", externalName="x.example"), None)["spec"]
    assert "clusterIP" not in e
    assert alloc.admit(svc("n"), None)["spec"]["clusterIP"] == "10.1.0.1"


def test_node_ports_requested_allocated_and_exhausted(alloc: Allocator) -> None:
    s = alloc.admit(svc("a", type="NodePort",
                        ports=[{"port": 80, "nodePort": 30000}, {"port": 81}]), None)["spec"]
    assert [p["nodePort"] for p in s["ports"]] == [30000, 30001]
    assert s["externalTrafficPolicy"] == "Cluster" and "healthCheckNodePort" not in s
    with pytest.raises(ApiError, match="already allocated"):
        alloc.admit(svc("b", type="NodePort", ports=[{"port": 80, "nodePort": 30001}]), None)
    with pytest.raises(ApiError, match="not in 30000-30004"):
        alloc.admit(svc("b", type="NodePort", ports=[{"port": 80, "nodePort": 80}]), None)
    alloc.admit(svc("c", type="NodePort", ports=[{"port": 1}, {"port": 2}, {"port": 3}]), None)
    with pytest.raises(ApiError, match="no free node port"):
        alloc.admit(svc("d", type="NodePort"), None)


def test_changing_to_cluster_ip_drops_node_ports(alloc: Allocator) -> None:
    first = alloc.admit(svc("a", type="NodePort"), None)
    s = alloc.admit(svc("a", type="ClusterIP", ports=[{"port": 80, "nodePort": 30000}]),
                    first)["spec"]
    assert "nodePort" not in s["ports"][0]
    assert alloc.admit(svc("b", type="NodePort"), None)["spec"]["ports"][0]["nodePort"] == 30000


@pytest.mark.parametrize("stype", ["NodePort", "LoadBalancer"])
def test_health_check_node_port_for_local_policy(alloc: Allocator, stype: str) -> None:
    s = alloc.admit(svc("a", type=stype, externalTrafficPolicy="Local"), None)
    assert s["spec"]["healthCheckNodePort"] == 30001
    kept = alloc.admit(svc("a", type=stype, externalTrafficPolicy="Local"), s)
    assert kept["spec"]["healthCheckNodePort"] == 30001
    req = alloc.admit(svc("b", type=stype, externalTrafficPolicy="Local",
                          healthCheckNodePort=30004), None)
    assert req["spec"]["healthCheckNodePort"] == 30004
    back = alloc.admit(svc("a", type=stype), kept)["spec"]
    assert "healthCheckNodePort" not in back and back["externalTrafficPolicy"] == "Cluster"


def test_bad_ports_rejected(alloc: Allocator) -> None:
    with pytest.raises(ApiError, match="numeric port"):
        alloc.admit(svc("a", ports=[{"port": "http"}]), None)
    with pytest.raises(ApiError, match=r"spec\.type"):
        alloc.admit(svc("a", type="Weird"), None)


def test_through_the_store_apply_keeps_allocations() -> None:
    store = ApiStore()
    alloc = Allocator("10.1.0.0/16")
    store.add_admission("Service", alloc.admit)
    store.subscribe(lambda t, k, o: t == "DELETED" and k == "Service"
                    and alloc.release(f"{o['metadata']['namespace']}/{o['metadata']['name']}"))
    one = store.apply(svc("a", type="NodePort"))
    two = store.apply(svc("a", type="NodePort", ports=[{"port": 80}, {"port": 90}]))
    assert two["spec"]["clusterIP"] == one["spec"]["clusterIP"]
    assert two["spec"]["ports"][0]["nodePort"] == one["spec"]["ports"][0]["nodePort"]
    assert two["spec"]["ports"][1]["nodePort"] != two["spec"]["ports"][0]["nodePort"]
    store.delete("Service", "default", "a")
    assert store.create(svc("b"))["spec"]["clusterIP"] == one["spec"]["clusterIP"]
