"""Desired IPVS state of a Service: pure logic, no kernel."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from kube_router.kube.records import decode_endpointslice
from kube_router.kube.records import decode_service
from kube_router_proxy_ipvs import ipvs_netlink as nl
from kube_router_proxy_ipvs.api import DEFAULT
from kube_router_proxy_ipvs.api import IPVSScheduler
from kube_router_proxy_ipvs.desired import Settings
from kube_router_proxy_ipvs.desired import owns
from kube_router_proxy_ipvs.desired import service_state

NODE_IP = "192.168.10.100"
S = Settings(node_name="node-0", service_cidrs=(ipaddress.ip_network("10.96.0.0/16"),),
             external_ranges=(ipaddress.ip_network("203.0.113.0/24"),))


def svc(**spec):
    meta = spec.pop("meta", {})
    base = {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "nodePort": 30080}]}
    base.update(spec)
    return decode_service({"metadata": {"namespace": "default", "name": "web", **meta},
                           "spec": base})


def eps(*items, name="web-a", port=8080, port_name="http"):
    """items: (ip, node, ready, serving, terminating)"""
    return decode_endpointslice({
        "metadata": {"namespace": "default", "name": name,
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "nodeName": node,
                       "conditions": {"ready": r, "serving": s, "terminating": t}}
                      for ip, node, r, s, t in items],
        "ports": [{"name": port_name, "protocol": "TCP", "port": port}],
    })


def key(addr, port, proto="TCP"):
    return nl.service_key(socket.AF_INET, proto, addr, port)


def by_key(st):
    """A state's virtual servers by key, each key once."""
    found = {vs.key: vs for vs in st.servers}
    assert len(found) == len(st.servers)
    return found


SLICE = eps(("10.2.0.5", "node-0", True, True, False),
            ("10.2.1.5", "node-1", True, True, False),
            ("10.2.1.6", "node-1", False, True, True),   # terminating, still serving
            ("10.2.1.7", "node-1", False, False, True))  # no longer serving


# -- which endpoints take new connections (KEP-1669, as kube-proxy) -------------------------

LB = Settings(**{**S.__dict__, "lb_ranges": (ipaddress.ip_network("198.51.100.0/24"),)})


def every_kind(**spec):
    """A Service with a cluster IP, a NodePort, an external IP and a load-balancer IP."""
    s = svc(type="LoadBalancer", externalIPs=["203.0.113.7"], **spec)
    s.load_balancer_ips = ("198.51.100.9",)
    return s


ALL_KEYS = [key("10.96.0.10", 80), key(NODE_IP, 30080), key("203.0.113.7", 80),
            key("198.51.100.9", 80)]


def weights(st, k):
    return dict(by_key(st)[k].dests)


def test_new_connections_go_to_ready_endpoints_only():
    """Ready endpoints at weight 1; one serving while terminating stays at weight 0 (what
    it holds goes on, nothing new comes); one no longer serving is not there at all. The
    same for the cluster IP, the NodePort, external and load-balancer IPs."""
    st = service_state(every_kind(), [SLICE], LB, DEFAULT, [NODE_IP])
    assert sorted(by_key(st)) == sorted(ALL_KEYS)
    for k in ALL_KEYS:
        assert weights(st, k) == {("10.2.0.5", 8080): 1, ("10.2.1.5", 8080): 1,
                                  ("10.2.1.6", 8080): 0}, k


def test_serving_terminating_endpoints_serve_when_none_is_ready():
    draining = eps(("10.2.1.6", "node-1", False, True, True),
                   ("10.2.1.7", "node-1", False, False, True),
                   ("10.2.1.8", "node-1", False, False, False))  # starting, not ready
    st = service_state(every_kind(), [draining], LB, DEFAULT, [NODE_IP])
    for k in ALL_KEYS:
        assert weights(st, k) == {("10.2.1.6", 8080): 1}, k


def test_no_serving_endpoint_no_real_server():
    gone = eps(("10.2.1.7", "node-1", False, False, True),
               ("10.2.1.8", "node-1", False, False, False))
    st = service_state(every_kind(), [gone], LB, DEFAULT, [NODE_IP])
    for k in ALL_KEYS:
        assert weights(st, k) == {}, k


def test_missing_conditions_follow_the_api_defaults():
    """No ready means ready; no serving follows ready."""
    sl = decode_endpointslice({
        "metadata": {"namespace": "default", "name": "web-a",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.2.0.5"]},
                      {"addresses": ["10.2.0.6"], "conditions": {"terminating": True}},
                      {"addresses": ["10.2.0.7"],
                       "conditions": {"ready": False, "terminating": True}},
                      {"addresses": ["10.2.0.8"],
                       "conditions": {"serving": True, "terminating": True}}],
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
    })
    st = service_state(svc(), [sl], S, DEFAULT, [])
    # 10.2.0.6 and .8 have no ready condition: ready (kube-proxy reads ready alone)
    assert weights(st, key("10.96.0.10", 80)) == {("10.2.0.5", 8080): 1,
                                                  ("10.2.0.6", 8080): 1,
                                                  ("10.2.0.8", 8080): 1}
    only = decode_endpointslice({**{"metadata": {"namespace": "default", "name": "web-a"},
                                   "addressType": "IPv4"},
                                 "endpoints": [{"addresses": ["10.2.0.7"], "conditions": {
                                     "ready": False, "terminating": True}}],
                                 "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]})
    assert weights(service_state(svc(), [only], S, DEFAULT, []), key("10.96.0.10", 80)) == {}


def test_local_policies_fall_back_within_this_node():
    """With a Local policy the scope is this node: its serving-terminating endpoints take
    new connections when it has no ready one, even while other nodes have some; the
    Cluster scopes of the same Service keep to the ready ones."""
    sl = eps(("10.2.0.5", "node-0", True, True, False),
             ("10.2.1.6", "node-1", False, True, True),
             ("10.2.1.7", "node-1", False, False, True))
    on1 = Settings(**{**LB.__dict__, "node_name": "node-1"})
    st = service_state(every_kind(externalTrafficPolicy="Local"), [sl], on1, DEFAULT,
                       [NODE_IP])
    assert weights(st, key("10.96.0.10", 80)) == {("10.2.0.5", 8080): 1,
                                                  ("10.2.1.6", 8080): 0}
    for k in ALL_KEYS[1:]:
        assert weights(st, k) == {("10.2.1.6", 8080): 1}, k
    # node-0 has a ready one: the other node's terminating endpoint is not in its scope
    st = service_state(every_kind(externalTrafficPolicy="Local"), [sl], LB, DEFAULT,
                       [NODE_IP])
    for k in ALL_KEYS[1:]:
        assert weights(st, k) == {("10.2.0.5", 8080): 1}, k
    # internalTrafficPolicy Local: the cluster IP's scope is the node, the rest the cluster
    st = service_state(every_kind(internalTrafficPolicy="Local"), [sl], on1, DEFAULT,
                       [NODE_IP])
    assert weights(st, key("10.96.0.10", 80)) == {("10.2.1.6", 8080): 1}
    for k in ALL_KEYS[1:]:
        assert weights(st, k) == {("10.2.0.5", 8080): 1, ("10.2.1.6", 8080): 0}, k
    # a node with neither: no virtual server for the Local scopes
    on2 = Settings(**{**LB.__dict__, "node_name": "node-2"})
    st = service_state(every_kind(externalTrafficPolicy="Local",
                                  internalTrafficPolicy="Local"), [sl], on2, DEFAULT, [NODE_IP])
    assert st.servers == ()


def test_the_scope_spans_every_slice_of_the_family():
    """A ready endpoint in one slice keeps another slice's terminating ones at weight 0;
    with none ready anywhere, the terminating ones of every slice serve."""
    ready = eps(("10.2.0.5", "node-0", True, True, False), name="web-a")
    term = eps(("10.2.1.6", "node-1", False, True, True), name="web-b", port=9090)
    term2 = eps(("10.2.2.6", "node-2", False, True, True), name="web-c")
    st = service_state(svc(), [ready, term], S, DEFAULT, [])
    assert weights(st, key("10.96.0.10", 80)) == {("10.2.0.5", 8080): 1,
                                                  ("10.2.1.6", 9090): 0}
    st = service_state(svc(), [term, term2], S, DEFAULT, [])
    assert weights(st, key("10.96.0.10", 80)) == {("10.2.1.6", 9090): 1,
                                                  ("10.2.2.6", 8080): 1}


def test_ipv6_terminating_addresses_in_canonical_form():
    v6 = Settings(**{**S.__dict__, "ipv4": False, "ipv6": True,
                     "service_cidrs": (ipaddress.ip_network("fd00:96::/112"),)})
    sl = decode_endpointslice({
        "metadata": {"namespace": "default", "name": "web-6"}, "addressType": "IPv6",
        "endpoints": [{"addresses": ["fd00:2:0:0::5"]},
                      {"addresses": ["fd00:2:0:0::6"],
                       "conditions": {"ready": False, "serving": True, "terminating": True}}],
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]})
    s = svc(clusterIP="fd00:96::10", clusterIPs=["fd00:96::10"])
    vs = service_state(s, [sl], v6, DEFAULT, []).servers[0]
    assert dict(vs.dests) == {("fd00:2::5", 8080): 1, ("fd00:2::6", 8080): 0}


def test_nodeport_and_session_affinity_and_scheduler_flags():
    s = svc(type="NodePort", sessionAffinity="ClientIP",
            sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}})
    st = service_state(s, [SLICE], S, IPVSScheduler("mh", ("flag-1", "flag-2")), [NODE_IP])
    assert set(by_key(st)) == {key("10.96.0.10", 80), key(NODE_IP, 30080)}
    attrs = by_key(st)[key(NODE_IP, 30080)].attrs
    assert attrs == nl.ServiceAttrs("mh", nl.SVC_F_PERSISTENT | 0x8 | 0x10, 60)
    assert st.vips == ("10.96.0.10",)  # the node IP is not put on kube-dummy-if


def test_external_traffic_policy_local():
    s = svc(type="NodePort", externalTrafficPolicy="Local", externalIPs=["203.0.113.7"])
    st = service_state(s, [SLICE], S, DEFAULT, [NODE_IP])
    assert dict(by_key(st)[key(NODE_IP, 30080)].dests) == {("10.2.0.5", 8080): 1}
    assert dict(by_key(st)[key("203.0.113.7", 80)].dests) == {("10.2.0.5", 8080): 1}
    # the cluster IP keeps every node's (the terminating one at weight 0)
    assert dict(by_key(st)[key("10.96.0.10", 80)].dests) == {
        ("10.2.0.5", 8080): 1, ("10.2.1.5", 8080): 1, ("10.2.1.6", 8080): 0}
    # no local endpoint: no NodePort entry at all on this node
    other = Settings(**{**S.__dict__, "node_name": "node-9"})
    st = service_state(s, [SLICE], other, DEFAULT, [NODE_IP])
    assert set(by_key(st)) == {key("10.96.0.10", 80)}


def test_an_address_listed_twice_is_one_real_server():
    twice = eps(("10.2.0.5", "node-0", True, True, False),
                ("10.2.0.6", "node-1", True, True, False),
                ("10.2.0.5", "node-0", True, True, False))
    st = service_state(svc(type="NodePort", externalTrafficPolicy="Local"), [twice], S,
                       DEFAULT, [NODE_IP])
    assert list(by_key(st)[key("10.96.0.10", 80)].dests) == [("10.2.0.5", 8080),
                                                              ("10.2.0.6", 8080)]
    assert list(by_key(st)[key(NODE_IP, 30080)].dests) == [("10.2.0.5", 8080)]


def test_local_annotation_and_internal_policy():
    s = svc(type="NodePort", meta={"annotations": {"kube-router.io/service.local": "true"}})
    st = service_state(s, [SLICE], S, DEFAULT, [NODE_IP])
    assert len(by_key(st)[key(NODE_IP, 30080)].dests) == 1
    s = svc(internalTrafficPolicy="Local")
    other = Settings(**{**S.__dict__, "node_name": "node-9"})
    assert service_state(s, [SLICE], other, DEFAULT, []).servers == ()


@pytest.mark.parametrize("spec, meta", [
    ({"clusterIP": "None", "clusterIPs": ["None"]}, {}),
    ({"type": "ExternalName", "externalName": "x.example"}, {}),
    ({}, {"labels": {"service.kubernetes.io/service-proxy-name": "other"}}),
])
def test_skipped_services(spec, meta):
    assert service_state(svc(meta=meta, **spec), [SLICE], S, DEFAULT, []).servers == ()


def test_external_ip_validation(caplog):
    s = svc(externalIPs=["203.0.113.9", "198.51.100.1", "10.96.5.5", "not-an-ip"])
    st = service_state(s, [SLICE], S, DEFAULT, [])
    assert key("203.0.113.9", 80) in by_key(st)
    assert not any(k.addr in ("198.51.100.1", "10.96.5.5") for k in by_key(st))
    assert "not-an-ip" in caplog.text and "outside the configured ranges" in caplog.text


def test_an_address_listed_twice_gives_one_virtual_server_and_one_vip():
    st = service_state(svc(externalIPs=["203.0.113.9", "203.0.113.9"]), [SLICE], S, DEFAULT, [])
    assert sorted(k.addr for k in by_key(st)) == ["10.96.0.10", "203.0.113.9"]
    assert st.vips == ("10.96.0.10", "203.0.113.9")


def test_port_resolved_by_name_and_unknown_name_gives_no_dests():
    other_port = eps(("10.2.0.9", "node-0", True, True, False), name="web-b", port=9090,
                     port_name="metrics")
    st = service_state(svc(), [SLICE, other_port], S, DEFAULT, [])
    assert ("10.2.0.9", 9090) not in by_key(st)[key("10.96.0.10", 80)].dests


def test_hairpin_pairs_for_local_endpoints():
    s = svc(meta={"annotations": {"kube-router.io/service.hairpin": ""}})
    st = service_state(s, [SLICE], S, DEFAULT, [])
    assert st.hairpin == {("10.96.0.10", "TCP", 80, "10.2.0.5")}


def test_ownership():
    dummy = {"198.51.100.7"}
    ex = Settings(**{**S.__dict__, "excluded": (ipaddress.ip_network("10.96.200.0/24"),)})
    assert owns(key("10.96.0.10", 80), ex, [NODE_IP], dummy)
    assert not owns(key("10.96.200.1", 80), ex, [NODE_IP], dummy)
    assert not owns(key("172.16.0.1", 80), ex, [NODE_IP], dummy)
    assert owns(key(NODE_IP, 30080), ex, [NODE_IP], dummy)
    assert not owns(key(NODE_IP, 22), ex, [NODE_IP], dummy)  # outside the NodePort range
    assert owns(key("198.51.100.7", 80), ex, [NODE_IP], dummy)


def test_shared_port_dests_behave_like_a_dict() -> None:
    from kube_router_proxy_ipvs.desired import Dests

    d = Dests(("10.2.0.5", "10.2.0.6"), 8080)
    plain = {("10.2.0.5", 8080): 1, ("10.2.0.6", 8080): 1}
    assert d == plain and plain == d and dict(d) == plain
    assert d == Dests(("10.2.0.6", "10.2.0.5"), 8080)  # order does not matter
    assert d != Dests(("10.2.0.5", "10.2.0.6"), 8081)
    assert d != Dests(("10.2.0.5",), 8080) and d != {("10.2.0.5", 8080): 1}
    assert ("10.2.0.5", 8080) in d and ("10.2.0.5", 9090) not in d and "x" not in d
    assert d.get(("10.2.0.6", 8080)) == 1 and d.get(("10.2.0.7", 8080)) is None
    assert len(d) == 2 and list(d.items()) == list(plain.items())


def test_slices_with_different_target_ports_keep_each_pair() -> None:
    a = eps(("10.2.0.5", "node-0", True, True, False), name="web-a", port=8080)
    b = eps(("10.2.0.6", "node-1", True, True, False), name="web-b", port=9090)
    dup = eps(("10.2.0.5", "node-0", True, True, False), name="web-c", port=8080)
    st = service_state(svc(), [a, b], S, DEFAULT, [NODE_IP])
    assert by_key(st)[key("10.96.0.10", 80)].dests == {("10.2.0.5", 8080): 1,
                                                      ("10.2.0.6", 9090): 1}
    st = service_state(svc(), [a, dup], S, DEFAULT, [NODE_IP])
    assert by_key(st)[key("10.96.0.10", 80)].dests == {("10.2.0.5", 8080): 1}


_PLAIN_CASES = {
    "one port": {"type": "ClusterIP", "ports": [{"name": "http", "port": 80}]},
    "two ports, one repeated": {"type": "ClusterIP", "ports": [
        {"name": "http", "port": 80}, {"name": "dns", "protocol": "UDP", "port": 53},
        {"name": "other", "port": 80}]},
    "an unsupported protocol": {"type": "ClusterIP", "ports": [
        {"name": "http", "protocol": "ICMP", "port": 80}]},
    "externalTrafficPolicy Local": {"type": "ClusterIP", "externalTrafficPolicy": "Local",
                                    "ports": [{"name": "http", "port": 80}]},
}


@pytest.mark.parametrize("case", sorted(_PLAIN_CASES))
@pytest.mark.parametrize("slices", ["one", "two", "none", "draining"])
def test_the_common_service_s_short_path_gives_the_general_result(case: str,
                                                                 slices: str) -> None:
    """A plain ClusterIP Service takes a shorter path; a scheduler equal to the default but
    not the same object takes the general one: both must agree, servers in order."""
    s = svc(**_PLAIN_CASES[case])
    sl = {"one": [SLICE], "none": [],
          "two": [SLICE, eps(("10.2.2.9", "node-2", True, True, False), name="web-b")],
          "draining": [eps(("10.2.2.9", "node-2", False, True, True), name="web-b")]}[slices]
    short = service_state(s, sl, S, DEFAULT, [NODE_IP])
    general = service_state(s, sl, S, IPVSScheduler(), [NODE_IP])
    assert short == general
    assert [vs.key for vs in short.servers] == [vs.key for vs in general.servers]
    if case != "an unsupported protocol":
        assert short.servers and short.vips == ("10.96.0.10",)


def test_short_dests_keep_no_lookup_set_and_long_ones_still_compare_as_sets() -> None:
    from kube_router_proxy_ipvs.desired import SCAN_LIMIT
    from kube_router_proxy_ipvs.desired import Dests

    short = Dests(("10.2.0.5", "10.2.0.6"), 8080)
    assert short == Dests(("10.2.0.6", "10.2.0.5"), 8080)
    assert ("10.2.0.6", 8080) in short and short[("10.2.0.5", 8080)] == 1
    assert short._set is None  # a state kept across syncs holds no set per Service
    ips = tuple(f"10.3.0.{i}" for i in range(SCAN_LIMIT + 4))
    long = Dests(ips, 80)
    assert (ips[-1], 80) in long and (ips[0], 81) not in long and ("10.4.0.1", 80) not in long
    assert long == Dests(tuple(reversed(ips)), 80)
    assert long != Dests((*ips[:-1], "10.4.0.1"), 80)
    assert long != Dests(ips[:-1], 80) and Dests(ips[:-1], 80) != long


def test_a_changed_service_leaves_one_key_object_in_the_cache() -> None:
    from kube_router_proxy_ipvs.desired import Dests
    from kube_router_proxy_ipvs.desired import VirtualServer
    from kube_router_proxy_ipvs.ipvs_manager import IPVSManager

    def server(ips: tuple[str, ...]) -> VirtualServer:
        # a new key object each time, as a recomputed Service gives
        k = nl.ServiceKey(socket.AF_INET, socket.IPPROTO_TCP, "10.96.0.10", 80)
        return VirtualServer(k, nl.ServiceAttrs(), Dests(ips, 8080))

    for graceful in (False, True):
        mgr = IPVSManager(lambda k: True, graceful=graceful)
        first = server(("10.2.0.5",))
        mgr._commit({first.key: first}, ())
        second = server(("10.2.0.6",))
        assert second.key == first.key and second.key is not first.key
        mgr._commit({second.key: second}, ())
        (cached,) = mgr.actual
        assert cached is second.key and mgr.actual[cached].key is second.key
        assert dict(mgr.actual[cached].dests) == {("10.2.0.6", 8080): 1}
