"""The cluster section's MD5 peer passwords and second underlay subnets: parsed, checked,
and turned into the peers' configuration, the agents' flags and the lab's routes."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from kube_router_lab.cluster import Lab
from kube_router_lab.peers import bird_config
from kube_router_lab.peers import gobgp_config
from kube_router_lab.spec import ClusterSpec
from kube_router_lab.spec import SpecError
from kube_router_lab.spec import parse_cluster
from kube_router_lab.topology import Topology
from kube_router_lab.topology import bridge_name


def test_defaults_unchanged() -> None:
    spec = parse_cluster({})
    assert spec.underlays == () and spec.all_underlays() == ("192.168.10.0/24",)
    assert [spec.node_ip(i) for i in range(3)] == [
        "192.168.10.100", "192.168.10.101", "192.168.10.102"]
    assert spec.apiserver_ip() == "192.168.10.1"
    assert spec.prefixlen() == 24
    assert bridge_name(0) == "lab-underlay"


def test_peer_password_parsed_and_kept_out_of_repr() -> None:
    spec = parse_cluster({"peers": [{"name": "tor", "software": "bird", "asn": 64513,
                                     "password": "Lab-s3cret-key"},
                                    {"name": "gw", "software": "gobgp", "asn": 64514}]})
    tor, gw = spec.peers
    assert tor.password == "Lab-s3cret-key" and gw.password == ""
    assert "Lab-s3cret-key" not in repr(spec)


@pytest.mark.parametrize("bad", ['with"quote', "back\\slash", "x" * 81, "tab\there", 42,
                                 "caf\u00e9"])
def test_bad_password_refused_without_echo(bad: object) -> None:
    with pytest.raises(SpecError) as info:
        parse_cluster({"peers": [{"name": "tor", "asn": 64513, "password": bad}]})
    msg = str(info.value)
    assert msg.startswith("cluster.peers[0].password:")
    assert str(bad) not in msg


def test_peer_configs_carry_the_password() -> None:
    bird = bird_config(ip="192.168.10.50", asn=64513, node_ips=["192.168.10.100"],
                       cluster_asn=64512, log_file=Path("/x/bird.log"), password="pw-1")
    assert 'neighbor 192.168.10.100 as 64512; ' in bird and 'password "pw-1";' in bird
    assert "password" not in bird_config(ip="192.168.10.50", asn=64513,
                                         node_ips=["192.168.10.100"], cluster_asn=64512,
                                         log_file=Path("/x/bird.log"))
    gob = gobgp_config(ip="192.168.10.50", asn=64513,
                       node_ips=["192.168.10.100", "192.168.10.101"], cluster_asn=64512,
                       password="pw-1")
    assert gob.count('auth-password = "pw-1"') == 2
    assert "auth-password" not in gobgp_config(ip="192.168.10.50", asn=64513,
                                               node_ips=["192.168.10.100"], cluster_asn=64512)


def _lab(spec: ClusterSpec, tmp_path: Path) -> Lab:
    lab = Lab(spec, workdir=tmp_path, log=lambda _m: None)
    lab.router = True  # whether or not the plugin is installed here
    return lab


def test_agents_get_positional_base64_passwords(tmp_path: Path) -> None:
    spec = parse_cluster({"peers": [{"name": "a", "asn": 64513},
                                    {"name": "b", "asn": 64514, "password": "Lab-s3cret-key"}]})
    args = _lab(spec, tmp_path)._agent_extra_args()
    assert args[args.index("--peer-router-ips") + 1] == "192.168.10.50,192.168.10.51"
    pw = args[args.index("--peer-router-passwords") + 1]
    assert pw == "," + base64.b64encode(b"Lab-s3cret-key").decode()
    # and the router plugin reads it back positionally
    from kube_router_routing_bgp import desired
    from kube_router_routing_bgp.settings import _positional
    cfg = type("Cfg", (), {"peer_router_passwords": _positional(pw),
                           "peer_router_passwords_file": ""})()
    assert desired.read_passwords(cfg) == ["", "Lab-s3cret-key"]


def test_agents_without_passwords_get_no_flag(tmp_path: Path) -> None:
    spec = parse_cluster({"peers": [{"name": "a", "asn": 64513}]})
    assert "--peer-router-passwords" not in _lab(spec, tmp_path)._agent_extra_args()


def test_underlays_spread_nodes_round_robin() -> None:
    spec = parse_cluster({"nodes": 4, "underlays": ["192.168.10.0/24", "192.168.20.0/24"]})
    assert spec.underlay == "192.168.10.0/24"
    assert [spec.node_ip(i) for i in range(4)] == [
        "192.168.10.100", "192.168.20.101", "192.168.10.102", "192.168.20.103"]
    assert spec.apiserver_ip() == "192.168.10.1"
    assert spec.gateway_ip(1) == "192.168.20.1"
    assert spec.peer_ip(0) == "192.168.10.50"


@pytest.mark.parametrize(("raw", "needle"), [
    ({"underlays": "192.168.10.0/24"}, "cluster.underlays: expected a list"),
    ({"underlays": ["192.168.10.0/24", "nope"]}, "cluster.underlays[1]: 'nope' is not a CIDR"),
    ({"underlays": ["192.168.10.0/24", "192.168.10.128/25"]}, "overlaps underlays[0]"),
    ({"underlays": ["192.168.10.0/24", "192.168.20.0/28"]}, "cluster.underlays[1]"),
    ({"underlay": "192.168.30.0/24", "underlays": ["192.168.10.0/24"]},
     "cluster.underlay: must be the first"),
])
def test_bad_underlays(raw: dict, needle: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_cluster(raw)
    assert needle in str(info.value)


def test_topology_routes_between_underlays() -> None:
    spec = parse_cluster({"nodes": 3, "underlays": ["192.168.10.0/24", "192.168.20.0/24"],
                          "peers": [{"name": "tor", "asn": 64513}]})
    topo = Topology(spec, log=lambda _m: None)
    n0, n1, n2 = topo.nodes
    assert (n0.underlay, n1.underlay, n2.underlay) == (0, 1, 0)
    assert topo.underlay_routes(n0) == ["route replace 192.168.20.0/24 via 192.168.10.1 dev eth0"]
    assert topo.underlay_routes(n1) == ["route replace 192.168.10.0/24 via 192.168.20.1 dev eth0"]
    assert topo.underlay_routes(topo.peers[0]) == [
        "route replace 192.168.20.0/24 via 192.168.10.1 dev eth0"]
    # the lab's own pod routes (no router plugin): same subnet direct, else via the lab
    assert topo.pod_routes(0) == ["route replace 10.2.1.0/24 via 192.168.10.1 dev eth0",
                                  "route replace 10.2.2.0/24 via 192.168.10.102 dev eth0"]


def test_one_underlay_has_no_extra_routes() -> None:
    topo = Topology(parse_cluster({}), log=lambda _m: None)
    assert all(topo.underlay_routes(h) == [] for h in topo.hosts)
    assert topo.pod_routes(1) == ["route replace 10.2.0.0/24 via 192.168.10.100 dev eth0",
                                  "route replace 10.2.2.0/24 via 192.168.10.102 dev eth0"]
