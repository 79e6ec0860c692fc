"""What this node should advertise and whom it should peer with, from the Node records.

Pure functions of records and flags: no gobgpd, no kernel. Bad input (an invalid CIDR, a
garbled annotation) is logged once per object and skipped.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kube_router.kube.kinds import NODE
from kube_router.kube.records import Node
from kube_router.objwarn import ObjectWarnings
from kube_router_routing_bgp.gobgpd import PeerConfig

if TYPE_CHECKING:
    from kube_router_routing_bgp.settings import RouterSettings

log = logging.getLogger(__name__)

ANN_POD_CIDR = "kube-router.io/pod-cidr"  # deprecated, still wins when set (as in the original)
ANN_POD_CIDRS = "kube-router.io/pod-cidrs"
ANN_NODE_ASN = "kube-router.io/node.asn"
ANN_RR_SERVER = "kube-router.io/rr.server"
ANN_RR_CLIENT = "kube-router.io/rr.client"

DEFAULT_ASN = 64512

# A Node is re-read on every sync; say what is wrong with it once, not every time.
_warnings = ObjectWarnings(log, kind=NODE)


def _warn_once(node: str, what: str, msg: str) -> None:
    _warnings.warn(node, f"{what} {msg}", "%s node=%s %s", what, node, msg)


def node_ip(node: Node) -> str:
    """The node's primary address: its first InternalIP, else its first ExternalIP."""
    for ip in (*node.internal_ips, *node.external_ips):
        try:
            return str(ipaddress.ip_address(ip))
        except ValueError:
            _warn_once(node.meta.name, "invalid node address", f"address={ip!r}")
    return ""


def pod_cidrs(node: Node) -> list[str]:
    """The node's pod CIDRs, validated and normalized; annotation over spec.podCIDRs."""
    ann = node.meta.annotations
    raw: Iterable[str]
    if ann.get(ANN_POD_CIDR):
        raw = [ann[ANN_POD_CIDR]]
    elif ann.get(ANN_POD_CIDRS):
        raw = ann[ANN_POD_CIDRS].split(",")
    else:
        raw = node.pod_cidrs
    out: list[str] = []
    for c in raw:
        c = c.strip()
        if not c:
            continue
        try:
            net = ipaddress.ip_network(c, strict=True)
        except ValueError:
            _warn_once(node.meta.name, "invalid pod CIDR skipped", f"cidr={c!r}")
            continue
        if str(net) not in out:
            out.append(str(net))
    return out


def node_asn(node: Node) -> int | None:
    value = node.meta.annotations.get(ANN_NODE_ASN)
    if value is None:
        return None
    try:
        asn = int(value)
        if not 1 <= asn <= 4294967295:
            raise ValueError
        return asn
    except ValueError:
        _warn_once(node.meta.name, "invalid node ASN annotation", f"value={value!r}")
        return None


def parse_cluster_id(value: str) -> str:
    """A route-reflector cluster id: an IPv4 address or a uint32, as a dotted quad."""
    try:
        return str(ipaddress.IPv4Address(int(value)))
    except ValueError:
        return str(ipaddress.IPv4Address(value))


@dataclass(frozen=True)
class LocalBgp:
    asn: int
    router_id: str
    address: str


def local_bgp(node: Node, config: RouterSettings) -> LocalBgp | None:
    """This node's ASN, router id and address; None when it cannot peer at all yet."""
    address = node_ip(node)
    if not address:
        return None
    asn = config.cluster_asn or DEFAULT_ASN
    if not config.nodes_full_mesh:
        own = node_asn(node)
        if own is None:
            _warn_once(node.meta.name, "no usable node ASN with --nodes-full-mesh=false",
                       f"annotation={ANN_NODE_ASN}")
            return None
        asn = own
    router_id = config.router_id or address
    if ipaddress.ip_address(router_id).version != 4:
        _warn_once(node.meta.name, "router id must be IPv4", f"router_id={router_id}")
        return None
    return LocalBgp(asn=asn, router_id=router_id, address=address)


def ibgp_peers(me: Node, local: LocalBgp, nodes: Iterable[Node],
               config: RouterSettings) -> dict[str, PeerConfig]:
    """The other nodes to peer with, by address."""
    if not config.enable_ibgp:
        return {}
    my_rr_server = me.meta.annotations.get(ANN_RR_SERVER)
    my_rr_client = me.meta.annotations.get(ANN_RR_CLIENT)
    peers: dict[str, PeerConfig] = {}
    for node in nodes:
        if node.meta.name == me.meta.name:
            continue
        ip = node_ip(node)
        if not ip or ip == local.address:
            continue
        asn = local.asn
        if not config.nodes_full_mesh:
            theirs = node_asn(node)
            if theirs != local.asn:
                continue
        cluster_id = ""
        their_server = node.meta.annotations.get(ANN_RR_SERVER)
        their_client = node.meta.annotations.get(ANN_RR_CLIENT)
        if my_rr_client is not None and my_rr_server is None and their_server is None:
            continue  # a client peers only with reflectors
        if my_rr_server is not None and their_client is not None:
            try:
                cluster_id = parse_cluster_id(my_rr_server)
            except ValueError:
                _warn_once(me.meta.name, "invalid route reflector cluster id",
                           f"value={my_rr_server!r}")
        peers[ip] = PeerConfig(
            address=ip, asn=asn, port=config.bgp_port, local_address=local.address,
            rr_client_cluster_id=cluster_id, graceful_restart=config.bgp_graceful_restart,
            graceful_restart_time=config.bgp_graceful_restart_time,
            hold_time=config.bgp_holdtime,
        )
    return peers


class PeerFlagsError(ValueError):
    """The --peer-router-* flags do not line up."""


def _split(values: Iterable[str] | None) -> list[str]:
    out: list[str] = []
    for v in values or ():
        out.extend(x.strip() for x in v.split(","))
    return [x for x in out if x]


def read_passwords(config: RouterSettings) -> list[str]:
    """Base64 passwords from the flag, else the file; decoded. Never logged."""
    # Positional, as kube-router: an empty entry is a peer without a password.
    raw = [x.strip() for v in config.peer_router_passwords or () for x in v.split(",")]
    if not any(raw):
        raw = []
    if not raw and config.peer_router_passwords_file:
        with open(config.peer_router_passwords_file, encoding="utf-8") as fh:
            text = fh.read().strip().replace("\n", ",")
        raw = [x.strip() for x in text.split(",")] if text else []
    out = []
    for i, p in enumerate(raw):
        try:
            out.append(base64.b64decode(p, validate=True).decode() if p else "")
        except (ValueError, UnicodeDecodeError):
            raise PeerFlagsError(f"peer router password {i} is not valid base64") from None
    return out


def external_peers(config: RouterSettings, local_address: str) -> dict[str, PeerConfig]:
    """Peers from --peer-router-ips/asns/ports/passwords; raises PeerFlagsError."""
    ips = _split(config.peer_router_ips)
    asns = _split(config.peer_router_asns)
    ports = _split(config.peer_router_ports)
    if not ips:
        return {}
    if len(asns) != len(ips):
        raise PeerFlagsError(
            f"--peer-router-asns has {len(asns)} values for {len(ips)} --peer-router-ips")
    if ports and len(ports) != len(ips):
        raise PeerFlagsError(
            f"--peer-router-ports has {len(ports)} values for {len(ips)} --peer-router-ips")
    passwords = read_passwords(config)
    if passwords and len(passwords) != len(ips):
        raise PeerFlagsError(
            f"{len(passwords)} peer router passwords for {len(ips)} --peer-router-ips")
    peers: dict[str, PeerConfig] = {}
    for i, ip in enumerate(ips):
        try:
            addr = str(ipaddress.ip_address(ip))
            asn = int(asns[i])
            port = int(ports[i]) if ports else config.bgp_port
        except ValueError as exc:
            raise PeerFlagsError(f"peer router {ip!r}: {exc}") from None
        peers[addr] = PeerConfig(
            address=addr, asn=asn, port=port, local_address=local_address,
            password=passwords[i] if passwords else "",
            multihop_ttl=config.peer_router_multihop_ttl, external=True,
            graceful_restart=config.bgp_graceful_restart,
            graceful_restart_time=config.bgp_graceful_restart_time,
            hold_time=config.bgp_holdtime,
        )
    return peers


ANN_PEERS = "kube-router.io/peers"


def annotation_peers(me: Node, local_address: str,
                     config: RouterSettings) -> dict[str, PeerConfig]:
    """External peers from the node's ``kube-router.io/peers`` YAML list (remoteip,
    remoteasn, and optionally localip, password (base64), port). Entries that do not parse
    are skipped with a warning naming the node."""
    raw = me.meta.annotations.get(ANN_PEERS)
    if not raw:
        return {}
    import yaml

    try:
        entries = yaml.safe_load(raw)
    except yaml.YAMLError:
        _warn_once(me.meta.name, "invalid peers annotation skipped", f"annotation={ANN_PEERS}")
        return {}
    if not isinstance(entries, list):
        _warn_once(me.meta.name, "peers annotation is not a list", f"annotation={ANN_PEERS}")
        return {}
    peers: dict[str, PeerConfig] = {}
    for i, e in enumerate(entries):
        try:
            if not isinstance(e, dict):
                raise ValueError("not a mapping")
            addr = str(ipaddress.ip_address(str(e["remoteip"])))
            asn = int(e["remoteasn"])
            password = ""
            if e.get("password"):
                password = base64.b64decode(str(e["password"]), validate=True).decode()
            peers[addr] = PeerConfig(
                address=addr, asn=asn, port=int(e.get("port") or config.bgp_port),
                local_address=str(e.get("localip") or local_address), password=password,
                multihop_ttl=config.peer_router_multihop_ttl, external=True,
                graceful_restart=config.bgp_graceful_restart,
                graceful_restart_time=config.bgp_graceful_restart_time,
                hold_time=config.bgp_holdtime)
        except (KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
            # The entry may hold a password: name the field problem, never the entry.
            what = "password" if isinstance(exc, UnicodeDecodeError) else str(exc)
            _warn_once(me.meta.name, "peers annotation entry skipped",
                       f"index={i} error={type(exc).__name__}:{what}")
    return peers


def cluster_pod_cidrs(nodes: Iterable[Node]) -> set[str]:
    out: set[str] = set()
    for n in nodes:
        out.update(pod_cidrs(n))
    return out
