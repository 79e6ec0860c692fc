"""Peers and prefixes computed from Node records and flags."""

from __future__ import annotations

import base64
import logging

import pytest

from kube_router.kube.records import decode_node
from kube_router.settings import CoreSettings
from kube_router.settings import parse
from kube_router_routing_bgp import desired
from kube_router_routing_bgp.settings import RouterSettings
from kube_router_routing_bgp.settings import add_options


def config(*args: str) -> RouterSettings:
    """The router's settings, built from flags as start-up builds them."""
    flags = parse(args, add_options)
    return RouterSettings.from_flags(flags, CoreSettings.from_flags(flags))


def node(name: str, ip: str | None, cidrs: list[str] | None = None,
         annotations: dict[str, str] | None = None) -> object:
    obj = {"metadata": {"name": name, "annotations": annotations or {}},
           "spec": {"podCIDRs": cidrs or []},
           "status": {"addresses": [{"type": "InternalIP", "address": ip}] if ip else []}}
    return decode_node(obj)


def test_pod_cidrs_from_spec_and_annotations() -> None:
    assert desired.pod_cidrs(node("a", "192.168.10.100", ["10.2.0.0/24"])) == ["10.2.0.0/24"]
    n = node("b", "192.168.10.101", ["10.2.1.0/24"],
             {"kube-router.io/pod-cidrs": "10.9.0.0/24, 10.9.1.0/24"})
    assert desired.pod_cidrs(n) == ["10.9.0.0/24", "10.9.1.0/24"]
    # the deprecated singular annotation still wins, as in the original
    n = node("c", "192.168.10.102", ["10.2.2.0/24"],
             {"kube-router.io/pod-cidr": "10.8.0.0/24", "kube-router.io/pod-cidrs": "10.9.0.0/24"})
    assert desired.pod_cidrs(n) == ["10.8.0.0/24"]


def test_invalid_pod_cidrs_are_skipped_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    n = node("bad-cidr-node", "192.168.10.100", None,
             {"kube-router.io/pod-cidrs": "10.256.0.0/24,10.2.0.1/24,10.2.5.0/24,garbage"})
    with caplog.at_level(logging.WARNING):
        assert desired.pod_cidrs(n) == ["10.2.5.0/24"]
        desired.pod_cidrs(n)
    warnings = [r.getMessage() for r in caplog.records]
    # host bits set or out of range: rejected (gobgpd would advertise 0.0.0.0/24)
    assert sum("10.256.0.0/24" in w for w in warnings) == 1
    assert any("10.2.0.1/24" in w for w in warnings)
    assert all("bad-cidr-node" in w for w in warnings)


def test_full_mesh_peers_every_other_node() -> None:
    cfg = config()
    me = node("node-0", "192.168.10.100", ["10.2.0.0/24"])
    nodes = [me, node("node-1", "192.168.10.101"), node("node-2", "192.168.10.102"),
             node("no-address", None)]
    local = desired.local_bgp(me, cfg)
    assert local == desired.LocalBgp(asn=64512, router_id="192.168.10.100",
                                     address="192.168.10.100")
    peers = desired.ibgp_peers(me, local, nodes, cfg)
    assert sorted(peers) == ["192.168.10.101", "192.168.10.102"]
    p = peers["192.168.10.101"]
    assert (p.asn, p.local_address, p.external, p.port) == (64512, "192.168.10.100", False, 179)
    assert desired.ibgp_peers(me, local, nodes, config("--enable-ibgp=false")) == {}


def test_router_id_flag_and_cluster_asn() -> None:
    me = node("node-0", "192.168.10.100")
    local = desired.local_bgp(me, config("--router-id", "1.2.3.4", "--cluster-asn", "65001"))
    assert local is not None and (local.router_id, local.asn) == ("1.2.3.4", 65001)


def test_no_full_mesh_peers_only_same_asn() -> None:
    cfg = config("--nodes-full-mesh=false")
    asn = "kube-router.io/node.asn"
    me = node("node-0", "192.168.10.100", annotations={asn: "65000"})
    nodes = [me, node("node-1", "192.168.10.101", annotations={asn: "65000"}),
             node("node-2", "192.168.10.102", annotations={asn: "65010"}),
             node("node-3", "192.168.10.103", annotations={asn: "not-a-number"})]
    local = desired.local_bgp(me, cfg)
    assert local is not None and local.asn == 65000
    assert sorted(desired.ibgp_peers(me, local, nodes, cfg)) == ["192.168.10.101"]
    assert desired.local_bgp(node("x", "192.168.10.9"), cfg) is None


def test_route_reflector_roles() -> None:
    cfg = config()
    server = node("rr", "192.168.10.100", annotations={"kube-router.io/rr.server": "42"})
    client1 = node("c1", "192.168.10.101", annotations={"kube-router.io/rr.client": "42"})
    client2 = node("c2", "192.168.10.102", annotations={"kube-router.io/rr.client": "42"})
    nodes = [server, client1, client2]
    peers = desired.ibgp_peers(server, desired.local_bgp(server, cfg), nodes, cfg)
    assert {a: p.rr_client_cluster_id for a, p in peers.items()} == {
        "192.168.10.101": "0.0.0.42", "192.168.10.102": "0.0.0.42"}
    # a client peers with the reflector only
    peers = desired.ibgp_peers(client1, desired.local_bgp(client1, cfg), nodes, cfg)
    assert sorted(peers) == ["192.168.10.100"]


def test_external_peers_from_flags() -> None:
    pw = base64.b64encode(b"s3cret").decode()
    cfg = config("--peer-router-ips", "192.168.10.50,192.168.10.51",
                 "--peer-router-asns", "64513,64514", "--peer-router-ports", "179,1179",
                 "--peer-router-passwords", f"{pw},{pw}", "--peer-router-multihop-ttl", "3")
    peers = desired.external_peers(cfg, "192.168.10.100")
    assert sorted(peers) == ["192.168.10.50", "192.168.10.51"]
    p = peers["192.168.10.51"]
    assert (p.asn, p.port, p.password, p.multihop_ttl, p.external) == (
        64514, 1179, "s3cret", 3, True)
    assert "s3cret" not in repr(p)  # passwords never reach a log line


@pytest.mark.parametrize("args,message", [
    (["--peer-router-ips", "192.168.10.50"], "--peer-router-asns has 0 values"),
    (["--peer-router-ips", "192.168.10.50", "--peer-router-asns", "x"], "192.168.10.50"),
    (["--peer-router-ips", "1.2.3.999", "--peer-router-asns", "1"], "1.2.3.999"),
    (["--peer-router-ips", "1.2.3.4", "--peer-router-asns", "1",
      "--peer-router-passwords", "%%%"], "not valid base64"),
])
def test_external_peer_flag_errors(args: list[str], message: str) -> None:
    with pytest.raises(desired.PeerFlagsError, match=message):
        desired.external_peers(config(*args), "192.168.10.100")


def test_passwords_are_positional() -> None:
    # as kube-router: an empty entry is a peer without a password, not a shift of the list
    pw = base64.b64encode(b"s3cret").decode()
    cfg = config("--peer-router-ips", "192.168.10.50,192.168.10.51,192.168.10.52",
                 "--peer-router-asns", "64513,64514,64515",
                 "--peer-router-passwords", f",{pw},")
    peers = desired.external_peers(cfg, "192.168.10.100")
    assert [peers[a].password for a in sorted(peers)] == ["", "s3cret", ""]
    # a list of empty entries is no list at all
    cfg = config("--peer-router-ips", "192.168.10.50", "--peer-router-asns", "64513",
                 "--peer-router-passwords", "")
    assert desired.external_peers(cfg, "192.168.10.100")["192.168.10.50"].password == ""
    with pytest.raises(desired.PeerFlagsError, match="2 peer router passwords for 3"):
        desired.external_peers(config("--peer-router-ips", "1.1.1.1,1.1.1.2,1.1.1.3",
                                      "--peer-router-asns", "1,1,1",
                                      "--peer-router-passwords", f"{pw},"), "1.1.1.9")


def test_passwords_file(tmp_path) -> None:
    f = tmp_path / "pw"
    f.write_text(base64.b64encode(b"abc").decode() + "\n")
    cfg = config("--peer-router-ips", "192.168.10.50", "--peer-router-asns", "64513",
                 "--peer-router-passwords-file", str(f))
    assert desired.external_peers(cfg, "192.168.10.100")["192.168.10.50"].password == "abc"


def test_peers_annotation(caplog: pytest.LogCaptureFixture) -> None:
    pw = base64.b64encode(b"hunter2").decode()
    ann = {"kube-router.io/peers": (
        f"- remoteip: 192.168.10.60\n  remoteasn: 64600\n  password: {pw}\n  port: 1179\n"
        "- remoteip: not-an-ip\n  remoteasn: 1\n"
        "- remoteasn: 5\n")}
    me = node("peers-node", "192.168.10.100", annotations=ann)
    with caplog.at_level(logging.WARNING):
        peers = desired.annotation_peers(me, "192.168.10.100", config())
    assert list(peers) == ["192.168.10.60"]
    p = peers["192.168.10.60"]
    assert (p.asn, p.port, p.password, p.external, p.local_address) == (
        64600, 1179, "hunter2", True, "192.168.10.100")
    assert "hunter2" not in caplog.text and pw not in caplog.text
    assert caplog.text.count("peers-node") == 2
    garbled = node("garbled", "192.168.10.101", annotations={"kube-router.io/peers": "[: x"})
    assert desired.annotation_peers(garbled, "192.168.10.101", config()) == {}
