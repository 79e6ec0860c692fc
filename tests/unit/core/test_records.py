"""Decoding API objects (as plain dicts, the way the server sends them) into slim records."""

from __future__ import annotations

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
