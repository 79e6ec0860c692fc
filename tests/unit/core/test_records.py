"""Decoding API objects (as plain dicts, the way the server sends them) into slim records."""

from __future__ import annotations

import orjson
import pytest

from kube_router.kube import records
from kube_router.kube.kinds import KINDS


def _svc(spec: dict, *, status: dict | None = None, **meta: object) -> dict:
    md = {"name": "web", "namespace": "default", "uid": "u1", "resourceVersion": "5", **meta}
    obj = {"apiVersion": "v1", "kind": "Service", "metadata": md, "spec": spec}
    if status is not None:
        obj["status"] = status
    return obj


def test_service_cluster_ip_with_ports_and_defaults() -> None:
    svc = records.decode_service(_svc({
        "clusterIP": "10.1.0.10",
        "clusterIPs": ["10.1.0.10", "fd00::10"],
        "selector": {"app": "web"},
        "ports": [
            {"name": "http", "port": 80, "targetPort": 8080},
            {"name": "dns", "port": 53, "protocol": "udp", "targetPort": "dns"},
            {"port": 443},
        ],
    }))
    assert svc.key == "default/web"
    assert svc.type == "ClusterIP"
    assert svc.cluster_ips == ("10.1.0.10", "fd00::10")
    assert not svc.headless
    assert svc.selector == {"app": "web"}
    http, dns, tls = svc.ports
    assert (http.name, http.protocol, http.port, http.target_port) == ("http", "TCP", 80, 8080)
    assert (dns.protocol, dns.target_port) == ("UDP", "dns")
    assert tls.target_port == 443  # targetPort defaults to port
    assert tls.node_port is None
    assert svc.session_affinity == "None"
    assert svc.affinity_timeout == records.DEFAULT_AFFINITY_TIMEOUT == 10800
    assert svc.external_traffic_policy == "Cluster"
    assert svc.internal_traffic_policy == "Cluster"


def test_service_cluster_ip_alone_fills_cluster_ips() -> None:
    svc = records.decode_service(_svc({"clusterIP": "10.1.0.11", "ports": [{"port": 80}]}))
    assert svc.cluster_ips == ("10.1.0.11",)


def test_service_headless_has_no_cluster_ips() -> None:
    svc = records.decode_service(_svc({"clusterIP": "None", "clusterIPs": ["None"],
                                       "ports": [{"port": 80}]}))
    assert svc.headless
    assert svc.cluster_ips == ()


def test_service_external_name_has_no_cluster_ips() -> None:
    svc = records.decode_service(_svc({"type": "ExternalName", "externalName": "example.org",
                                       "clusterIP": "10.1.0.12"}))
    assert svc.type == "ExternalName"
    assert svc.cluster_ips == ()
    assert svc.ports == ()


def test_service_client_ip_affinity_timeout_and_nodeport_fields() -> None:
    svc = records.decode_service(_svc(
        {
            "type": "LoadBalancer",
            "clusterIP": "10.1.0.13",
            "ports": [{"port": 80, "nodePort": 30080, "targetPort": 80}],
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
            "externalIPs": ["192.0.2.1"],
            "externalTrafficPolicy": "Local",
            "healthCheckNodePort": 31000,
        },
        status={"loadBalancer": {"ingress": [
            {"ip": "198.51.100.1"}, {"ip": "198.51.100.2", "ipMode": "Proxy"},
            {"hostname": "lb.example.org"},
        ]}},
    ))
    assert svc.session_affinity == "ClientIP"
    assert svc.affinity_timeout == 60
    assert svc.ports[0].node_port == 30080
    assert svc.external_ips == ("192.0.2.1",)
    assert svc.load_balancer_ips == ("198.51.100.1",)
    assert svc.external_traffic_policy == "Local"
    assert svc.health_check_node_port == 31000


def test_service_client_ip_without_config_uses_default_timeout() -> None:
    svc = records.decode_service(_svc({"clusterIP": "10.1.0.14", "sessionAffinity": "ClientIP"}))
    assert svc.affinity_timeout == 10800


def test_service_bad_port_error_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"spec\.ports\[1\]\.port"):
        records.decode_service(_svc({"ports": [{"port": 80}, {"port": "http"}]}))


def test_missing_name_error_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"metadata\.name"):
        records.decode_service({"metadata": {"namespace": "default"}, "spec": {}})


def test_records_compare_without_resource_version() -> None:
    a = records.decode_service(_svc({"clusterIP": "10.1.0.15"}, resourceVersion="1"))
    b = records.decode_service(_svc({"clusterIP": "10.1.0.15"}, resourceVersion="2"))
    c = records.decode_service(_svc({"clusterIP": "10.1.0.16"}, resourceVersion="2"))
    assert a == b
    assert a != c
    assert b.meta.resource_version == "2"


def _slice(endpoints: list[dict], ports: list[dict] | None = None) -> dict:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "web-abcde", "namespace": "default", "resourceVersion": "7",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports if ports is not None else [{"name": "http", "port": 8080}],
    }


def test_endpointslice_condition_defaults() -> None:
    es = records.decode_endpointslice(_slice([
        {"addresses": ["10.2.0.5"]},  # no conditions at all
        {"addresses": ["10.2.0.6"], "conditions": {"ready": None}},
        {"addresses": ["10.2.0.7"], "conditions": {"ready": False}},
        {"addresses": ["10.2.0.8"],
         "conditions": {"ready": False, "serving": True, "terminating": True}},
    ]))
    nil, explicit_nil, not_ready, terminating = es.endpoints
    assert (nil.ready, nil.serving, nil.terminating) == (True, True, False)
    assert (explicit_nil.ready, explicit_nil.serving) == (True, True)
    assert (not_ready.ready, not_ready.serving) == (False, False)
    assert (terminating.ready, terminating.serving, terminating.terminating) == (
        False, True, True)


def test_endpointslice_ready_and_terminating_addresses() -> None:
    """Ready ones; apart, those serving while terminating; not serving in neither. Each
    address once, in the slice's order, and a ready address never among the fallbacks."""
    es = records.decode_endpointslice(_slice([
        {"addresses": ["10.2.0.9"]},
        {"addresses": ["10.2.0.5"], "conditions": {"ready": False}},
        {"addresses": ["10.2.0.6", "10.2.0.7"],
         "conditions": {"ready": False, "serving": True, "terminating": True}},
        {"addresses": ["10.2.0.8"],
         "conditions": {"ready": False, "serving": False, "terminating": True}},
        {"addresses": ["10.2.0.9"], "conditions": {"ready": True}},  # listed twice
        {"addresses": ["10.2.0.6"], "conditions": {"ready": False, "terminating": True}},
        {"addresses": ["10.2.0.4"],  # serving missing: it follows ready (false)
         "conditions": {"ready": False, "terminating": True}},
        {"addresses": ["10.2.0.9"],  # ready in another entry: ready wins
         "conditions": {"ready": False, "serving": True, "terminating": True}},
    ]))
    assert es.ready_addresses == ("10.2.0.9",)
    assert es.terminating_addresses == ("10.2.0.6", "10.2.0.7")
    empty = records.decode_endpointslice(_slice([]))
    assert empty.ready_addresses == () and empty.terminating_addresses == ()


def test_endpointslice_service_ports_and_target_ref() -> None:
    es = records.decode_endpointslice(_slice(
        [{"addresses": ["10.2.0.5"], "nodeName": "node-1",
          "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "default"}},
         {"addresses": ["10.2.0.9"], "targetRef": {"kind": "Node", "name": "node-2"}}],
        ports=[{"name": "http", "port": 8080, "protocol": "TCP"},
               {"name": "dns", "port": 53, "protocol": "UDP"},
               {"name": "unset"}],
    ))
    assert es.key == "default/web-abcde"
    assert es.service_name == "web"
    assert es.service_key == "default/web"
    assert es.address_type == "IPv4"
    assert es.endpoints[0].node_name == "node-1"
    assert es.endpoints[0].pod_name == "web-1"
    assert es.endpoints[1].pod_name == ""
    assert [(p.name, p.protocol, p.port) for p in es.ports] == [
        ("http", "TCP", 8080), ("dns", "UDP", 53)]


def test_endpointslice_without_service_label() -> None:
    obj = _slice([])
    del obj["metadata"]["labels"]
    es = records.decode_endpointslice(obj)
    assert es.service_name == ""
    assert es.service_key == ""


def test_pod_fields_and_defaults() -> None:
    pod = records.decode_pod({
        "metadata": {"name": "web-1", "namespace": "default", "uid": "p1",
                     "labels": {"app": "web"}},
        "spec": {"nodeName": "node-1",
                 "containers": [{"name": "c", "ports": [{"containerPort": 8080, "name": "http"},
                                                        {"containerPort": 53,
                                                         "protocol": "UDP"}]}]},
        "status": {"phase": "Running", "podIP": "10.2.0.5",
                   "podIPs": [{"ip": "10.2.0.5"}, {"ip": "fd00:2::5"}]},
    })
    assert pod.key == "default/web-1"
    assert pod.node_name == "node-1"
    assert pod.pod_ips == ("10.2.0.5", "fd00:2::5")
    assert pod.phase == "Running"
    assert not pod.host_network
    assert [(p.name, p.protocol, p.port) for p in pod.ports] == [
        ("http", "TCP", 8080), ("", "UDP", 53)]
    assert pod.termination_grace_seconds == 30
    assert pod.meta.labels == {"app": "web"}


def test_pod_pending_without_ip() -> None:
    pod = records.decode_pod({"metadata": {"name": "p", "namespace": "ns"},
                              "spec": {"hostNetwork": True,
                                       "terminationGracePeriodSeconds": 0},
                              "status": {"phase": "Pending"}})
    assert pod.pod_ips == ()
    assert pod.host_network
    assert pod.termination_grace_seconds == 0


def test_node_addresses_and_pod_cidrs() -> None:
    node = records.decode_node({
        "metadata": {"name": "node-1"},
        "spec": {"podCIDR": "10.2.1.0/24", "podCIDRs": ["10.2.1.0/24", "fd00:2:1::/64"]},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.10.101"},
                                 {"type": "Hostname", "address": "node-1"},
                                 {"type": "ExternalIP", "address": "203.0.113.1"}]},
    })
    assert node.key == "node-1"  # cluster-scoped: no namespace in the key
    assert node.internal_ips == ("192.168.10.101",)
    assert node.external_ips == ("203.0.113.1",)
    assert node.pod_cidrs == ("10.2.1.0/24", "fd00:2:1::/64")


def test_node_single_pod_cidr() -> None:
    node = records.decode_node({"metadata": {"name": "n"}, "spec": {"podCIDR": "10.2.3.0/24"}})
    assert node.pod_cidrs == ("10.2.3.0/24",)
    assert node.internal_ips == ()


def test_namespace_and_networkpolicy() -> None:
    ns = records.decode_namespace({"metadata": {"name": "prod", "labels": {"team": "a"}}})
    assert ns.key == "prod"
    assert ns.meta.labels == {"team": "a"}
    spec = {"podSelector": {}, "policyTypes": ["Ingress"]}
    pol = records.decode_networkpolicy({"metadata": {"name": "deny", "namespace": "prod"},
                                        "spec": spec})
    assert pol.key == "prod/deny"
    assert pol.spec == spec


def test_every_kind_has_a_path_and_a_decoder() -> None:
    for name, kind in KINDS.items():
        assert kind.name == name
        assert kind.path.startswith("/api")
        assert callable(kind.decode)


# --- sharing what recurs -----------------------------------------------------------------
# Decoded from JSON as the informer does: literals in a test are shared already.


def _parsed(obj: dict) -> dict:
    return orjson.loads(orjson.dumps(obj))


def _served_svc(name: str, labels: dict, annotations: dict | None = None) -> dict:
    return _parsed(_svc({"clusterIP": "10.1.0.20", "selector": {"app": "web"},
                         "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
                         "sessionAffinity": "None", "type": "ClusterIP"},
                        name=name, uid=f"uid-{name}", labels=labels,
                        annotations=annotations or {}))


def test_last_applied_configuration_is_dropped_and_the_rest_kept() -> None:
    applied = '{"apiVersion":"v1","kind":"Service","metadata":{}}' + " " * 2000
    svc = records.decode_service(_served_svc("a", {}, {
        records.LAST_APPLIED: applied, "kube-router.io/service.scheduler": "sh"}))
    assert svc.meta.annotations == {"kube-router.io/service.scheduler": "sh"}
    only = records.decode_service(_served_svc("b", {}, {records.LAST_APPLIED: applied}))
    assert only.meta.annotations == {}


def test_equal_label_maps_are_one_object() -> None:
    a = records.decode_service(_served_svc("a", {"app": "web"}))
    b = records.decode_service(_served_svc("b", {"app": "web"}))
    c = records.decode_service(_served_svc("c", {"app": "db"}))
    assert a.meta.labels is b.meta.labels
    assert a.meta.labels is a.selector  # same content as the Service's own selector
    assert c.meta.labels is not a.meta.labels
    assert c.meta.labels == {"app": "db"}
    long_value = {"note": "x" * 500}  # too long to share as a string; the map still is
    d = records.decode_service(_served_svc("d", {}, long_value))
    e = records.decode_service(_served_svc("e", {}, long_value))
    assert d.meta.annotations is e.meta.annotations
    assert d.meta.annotations["note"] == "x" * 500


def test_shared_map_is_read_only() -> None:
    labels = records.decode_service(_served_svc("a", {"app": "web"})).meta.labels
    with pytest.raises(TypeError):
        labels["app"] = "db"  # type: ignore[index]


def test_map_values_that_are_not_strings_are_not_confused() -> None:
    one = records.decode_service(_served_svc("a", {"v": 1}))
    true = records.decode_service(_served_svc("b", {"v": True}))  # True == 1, hash(True) == 1
    assert one.meta.labels == {"v": "1"}
    assert true.meta.labels == {"v": "True"}
    listed = records.decode_service(_served_svc("c", {"v": ["x"]}))  # not hashable
    assert listed.meta.labels == {"v": "['x']"}


def test_recurring_strings_are_one_object() -> None:
    def sl(i: int) -> records.EndpointSlice:
        obj = _slice([{"addresses": [f"10.2.0.{i}"], "nodeName": "node-1",
                       "targetRef": {"kind": "Pod", "name": f"web-{i}"}}],
                     ports=[{"name": "http", "port": 8080, "protocol": "tcp"}])
        obj["metadata"]["uid"] = "slice-uid"
        obj["metadata"]["resourceVersion"] = "slice-rv"
        return records.decode_endpointslice(_parsed(obj))

    a, b = sl(1), sl(2)
    assert a.meta.namespace is b.meta.namespace
    assert a.endpoints[0].node_name is b.endpoints[0].node_name
    assert a.address_type is b.address_type
    assert a.service_name is a.meta.labels["kubernetes.io/service-name"]
    assert a.ports is b.ports  # equal ports: one tuple of records
    assert a.ports[0].protocol == "TCP"
    pod = records.decode_pod(_parsed({
        "metadata": {"name": "web-1", "namespace": "default", "uid": "pod-uid"},
        "spec": {"nodeName": "node-1",
                 "containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running"}}))
    assert pod.node_name is a.endpoints[0].node_name
    assert pod.meta.namespace is a.meta.namespace
    assert pod.ports[0].name is a.ports[0].name
    assert pod.ports[0].protocol is a.ports[0].protocol
    # Values unique to one object are not gathered.
    assert "slice-uid" not in records._STRINGS
    assert "pod-uid" not in records._STRINGS
    assert "slice-rv" not in records._STRINGS
    assert "10.2.0.1" not in records._STRINGS


def test_ready_addresses_are_the_endpoints_own_strings() -> None:
    es = records.decode_endpointslice(_parsed(_slice([
        {"addresses": ["10.2.0.5"]}, {"addresses": ["10.2.0.6", "10.2.0.7"]}])))
    kept = [a for ep in es.endpoints for a in ep.addresses]
    assert all(x is y for x, y in zip(es.ready_addresses, kept, strict=True))


def test_sharing_leaves_equality_as_it_was() -> None:
    obj = _served_svc("a", {"app": "web", "tier": "front"},
                      {records.LAST_APPLIED: "{}", "note": "n"})
    shared = records.decode_service(obj)
    records._STRINGS.clear()
    records._MAPS.clear()
    records._PORTS.clear()
    fresh = records.decode_service(_parsed(obj))
    assert fresh.meta.labels is not shared.meta.labels
    assert fresh == shared
    assert fresh.meta == shared.meta
    assert list(fresh.meta.labels.items()) == [("app", "web"), ("tier", "front")]
    changed = _parsed(obj)
    changed["metadata"]["labels"]["tier"] = "back"
    assert records.decode_service(changed) != shared


def test_caches_are_emptied_past_their_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records, "_STRINGS_CAP", 8)
    monkeypatch.setattr(records, "_MAPS_CAP", 4)
    monkeypatch.setattr(records, "_PORTS_CAP", 2)
    decoded = []
    for i in range(50):
        svc = _served_svc(f"s{i}", {"app": f"app-{i}"})
        svc["spec"]["ports"][0]["port"] = 1000 + i
        decoded.append(records.decode_service(svc))
        assert len(records._STRINGS) <= 8 + 16  # what one object adds past the cap
        assert len(records._MAPS) <= 4 + 4
        assert len(records._PORTS) <= 2 + 2
    for i, svc in enumerate(decoded):
        assert svc.meta.labels == {"app": f"app-{i}"}
        assert svc.ports[0].port == 1000 + i


def test_a_map_with_a_label_naming_one_object_is_not_kept_for_sharing() -> None:
    records._STRINGS.clear()
    records._MAPS.clear()
    labels = {"kubernetes.io/service-name": "web-7", "app": "web",
              "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
    objs = [_slice([{"addresses": ["10.2.0.5"]}]) for _ in range(2)]
    for obj in objs:
        obj["metadata"]["labels"] = dict(labels)
    first, second = (records.decode_endpointslice(_parsed(o)) for o in objs)
    assert first.meta.labels == second.meta.labels == labels
    assert first.service_name == "web-7"
    assert first.service_name is first.meta.labels["kubernetes.io/service-name"]
    assert not records._MAPS and first.meta.labels is not second.meta.labels
    # nor is the name: once the Service is gone, nothing would ever ask for it again
    assert "web-7" not in records._STRINGS
    # the other keys and values are still shared
    assert first.meta.labels["app"] is second.meta.labels["app"]
    assert first.meta.labels["endpointslice.kubernetes.io/managed-by"] \
        is second.meta.labels["endpointslice.kubernetes.io/managed-by"]
    pod = records.decode_service(_served_svc("s", {"app": "web"}))
    assert pod.meta.labels["app"] is first.meta.labels["app"] and records._MAPS
