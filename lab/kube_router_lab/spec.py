"""The ``cluster:`` section of a scenario file, parsed and checked."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Any

DEFAULT_ENABLE = ("proxy", "router", "firewall")


class SpecError(ValueError):
    """The scenario's cluster section is invalid; the message names the field."""


@dataclass(frozen=True)
class PeerSpec:
    name: str
    software: str  # bird | gobgp
    asn: int


@dataclass(frozen=True)
class ClusterSpec:
    nodes: int = 3
    enable: tuple[str, ...] = DEFAULT_ENABLE
    cluster_cidr: str = "10.2.0.0/16"
    service_cidr: str = "10.1.0.0/16"
    underlay: str = "192.168.10.0/24"
    agent_args: tuple[str, ...] = ()
    peers: tuple[PeerSpec, ...] = field(default_factory=tuple)

    # -- derived addresses ------------------------------------------------------------

    def node_name(self, i: int) -> str:
        return f"node-{i}"

    def node_names(self) -> list[str]:
        return [self.node_name(i) for i in range(self.nodes)]

    def node_ip(self, i: int) -> str:
        return str(ipaddress.ip_network(self.underlay)[100 + i])

    def apiserver_ip(self) -> str:
        return str(ipaddress.ip_network(self.underlay)[1])

    def peer_ip(self, i: int) -> str:
        """External peer i sits at .(50+i) on the underlay."""
        return str(ipaddress.ip_network(self.underlay)[50 + i])

    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.underlay).prefixlen

    def pod_cidr(self, i: int) -> str:
        """Node i gets the /24 number i of the cluster CIDR."""
        net = ipaddress.ip_network(self.cluster_cidr)
        return str(list(net.subnets(new_prefix=24))[i]) if net.prefixlen < 24 else str(net)

    def kubernetes_service_ip(self) -> str:
        return str(ipaddress.ip_network(self.service_cidr)[1])


def parse_cluster(raw: Mapping[str, Any] | None) -> ClusterSpec:
    raw = dict(raw or {})
    known = {"nodes", "enable", "cluster-cidr", "service-cidr", "underlay", "agent-args", "peers"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SpecError(f"cluster: unknown key {unknown[0]!r}")
    nodes = raw.get("nodes", 3)
    if not isinstance(nodes, int) or not 1 <= nodes <= 50:
        raise SpecError(f"cluster.nodes: expected a number from 1 to 50, got {nodes!r}")
    enable = raw.get("enable", list(DEFAULT_ENABLE))
    if isinstance(enable, str):
        enable = [e.strip() for e in enable.split(",") if e.strip()]
    if not isinstance(enable, list) or not all(isinstance(e, str) for e in enable):
        raise SpecError(f"cluster.enable: expected a list of plugin names, got {enable!r}")
    cidrs = {}
    for key, default in (("cluster-cidr", "10.2.0.0/16"), ("service-cidr", "10.1.0.0/16"),
                         ("underlay", "192.168.10.0/24")):
        value = raw.get(key, default)
        try:
            ipaddress.ip_network(value)
        except (TypeError, ValueError):
            raise SpecError(f"cluster.{key}: {value!r} is not a CIDR") from None
        cidrs[key] = value
    args = raw.get("agent-args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise SpecError(f"cluster.agent-args: expected a list of strings, got {args!r}")
    peers = []
    for i, p in enumerate(raw.get("peers") or []):
        if not isinstance(p, Mapping) or not p.get("name"):
            raise SpecError(f"cluster.peers[{i}]: needs at least name, software and asn")
        software = p.get("software", "bird")
        if software not in ("bird", "gobgp"):
            raise SpecError(f"cluster.peers[{i}].software: {software!r} is not bird or gobgp")
        try:
            asn = int(p.get("asn"))
        except (TypeError, ValueError):
            raise SpecError(f"cluster.peers[{i}].asn: {p.get('asn')!r} is not a number") from None
        peers.append(PeerSpec(name=str(p["name"]), software=software, asn=asn))
    return ClusterSpec(
        nodes=nodes,
        enable=tuple(enable),
        cluster_cidr=cidrs["cluster-cidr"],
        service_cidr=cidrs["service-cidr"],
        underlay=cidrs["underlay"],
        agent_args=tuple(args),
        peers=tuple(peers),
    )
