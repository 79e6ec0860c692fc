"""The ``cluster:`` section of a scenario file, parsed and checked."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Any

DEFAULT_ENABLE = ("proxy", "router", "firewall")
#: What runs on each node: this project's agent, or the original kube-router (built by
#: `make kube-router-original`, a behavioural reference only).
AGENTS = ("kube-router-py", "kube-router")


CONTROL_PLANES = ("embedded", "real")


class SpecError(ValueError):
    """The scenario's cluster section is invalid; the message names the field."""


#: TCP MD5 keys are at most 80 bytes (TCP_MD5SIG_MAXKEYLEN); quotes and backslashes are
#: refused so the password can sit between quotes in BIRD's and GoBGP's files as it is.
PASSWORD_RE = re.compile(r'^[!#-\[\]-~ ]{1,80}$')


@dataclass(frozen=True)
class PeerSpec:
    name: str
    software: str  # bird | gobgp
    asn: int
    # TCP MD5 password of the sessions with every node ("" none); kept out of reprs so
    # it never reaches a log line.
    password: str = field(default="", repr=False)


@dataclass(frozen=True)
class PodTermination:
    """How the lab's kubelet ends a deleted pod (``cluster.pod-termination``)."""

    # seconds from the deletion to the pod's end, unless the pod sets
    # terminationGracePeriodSeconds
    grace: float = 2.0
    # seconds of preStop before SIGTERM, unless a container sets lifecycle.preStop.sleep
    pre_stop: float = 0.0
    # seconds the server keeps answering after SIGTERM; None: until the grace period ends
    serve_after_term: float | None = None


@dataclass(frozen=True)
class ClusterSpec:
    nodes: int = 3
    enable: tuple[str, ...] = DEFAULT_ENABLE
    cluster_cidr: str = "10.2.0.0/16"
    service_cidr: str = "10.1.0.0/16"
    underlay: str = "192.168.10.0/24"
    # More than one: node i sits in underlays[i % len] (its address still .(100+i)), and the
    # lab's own namespace routes between them. Empty: only ``underlay``.
    underlays: tuple[str, ...] = ()
    agent_args: tuple[str, ...] = ()
    agent: str = AGENTS[0]
    peers: tuple[PeerSpec, ...] = field(default_factory=tuple)
    termination: PodTermination = PodTermination()
    #: "embedded": the lab's own API server and controllers; "real": kube-apiserver,
    #: kube-controller-manager, kube-scheduler and etcd built from their Go modules.
    control_plane: str = "embedded"
    #: Seconds between the embedded server's bookmarks on each watch that asks for them
    #: (a real kube-apiserver sends one about every minute).
    bookmark_interval: float = 60.0

    # -- derived addresses ------------------------------------------------------------

    def node_name(self, i: int) -> str:
        return f"node-{i}"

    def node_names(self) -> list[str]:
        return [self.node_name(i) for i in range(self.nodes)]

    def all_underlays(self) -> tuple[str, ...]:
        """Every underlay subnet, the API server's first."""
        return self.underlays or (self.underlay,)

    def node_underlay(self, i: int) -> int:
        """Index in :meth:`all_underlays` of node i's subnet."""
        return i % len(self.all_underlays())

    def node_ip(self, i: int) -> str:
        return str(ipaddress.ip_network(self.all_underlays()[self.node_underlay(i)])[100 + i])

    def gateway_ip(self, underlay: int) -> str:
        """The lab's own address on an underlay (.1): the API server, and the router
        between underlays."""
        return str(ipaddress.ip_network(self.all_underlays()[underlay])[1])

    def apiserver_ip(self) -> str:
        return self.gateway_ip(0)

    def peer_ip(self, i: int) -> str:
        """External peer i sits at .(50+i) on the underlay."""
        return str(ipaddress.ip_network(self.underlay)[50 + i])

    def prefixlen(self, underlay: int = 0) -> int:
        return ipaddress.ip_network(self.all_underlays()[underlay]).prefixlen

    def pod_cidr(self, i: int) -> str:
        """Node i gets the /24 number i of the cluster CIDR."""
        net = ipaddress.ip_network(self.cluster_cidr)
        return str(list(net.subnets(new_prefix=24))[i]) if net.prefixlen < 24 else str(net)

    def kubernetes_service_ip(self) -> str:
        return str(ipaddress.ip_network(self.service_cidr)[1])


def parse_cluster(raw: Mapping[str, Any] | None) -> ClusterSpec:
    raw = dict(raw or {})
    known = {"nodes", "enable", "cluster-cidr", "service-cidr", "underlay", "underlays",
             "agent-args", "agent", "peers", "pod-termination", "control-plane",
             "bookmark-interval"}
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
    underlays = _parse_underlays(raw, cidrs, nodes)
    args = raw.get("agent-args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise SpecError(f"cluster.agent-args: expected a list of strings, got {args!r}")
    agent = raw.get("agent", AGENTS[0])
    if agent not in AGENTS:
        raise SpecError(f"cluster.agent: expected one of {', '.join(AGENTS)}, got {agent!r}")
    peers = []
    for i, p in enumerate(raw.get("peers") or []):
        if not isinstance(p, Mapping) or not p.get("name"):
            raise SpecError(f"cluster.peers[{i}]: needs at least name, software and asn")
        software = p.get("software", "bird")
        if software not in ("bird", "gobgp"):
            raise SpecError(f"cluster.peers[{i}].software: {software!r} is not bird or gobgp")
        try:
            asn = int(p.get("asn", ""))
        except (TypeError, ValueError):
            raise SpecError(f"cluster.peers[{i}].asn: {p.get('asn')!r} is not a number") from None
        password = p.get("password") or ""
        if not isinstance(password, str) or (password and not PASSWORD_RE.match(password)):
            # never echo the value: it is a secret even when malformed
            raise SpecError(f"cluster.peers[{i}].password: expected 1 to 80 printable ASCII "
                            "characters without quotes or backslashes")
        peers.append(PeerSpec(name=str(p["name"]), software=software, asn=asn,
                              password=password))
    control_plane = raw.get("control-plane", "embedded")
    if control_plane not in CONTROL_PLANES:
        raise SpecError(f"cluster.control-plane: expected one of {', '.join(CONTROL_PLANES)}, "
                        f"got {control_plane!r}")
    bookmarks = raw.get("bookmark-interval", 60.0)
    if isinstance(bookmarks, bool) or not isinstance(bookmarks, int | float) or \
            not 0.1 <= bookmarks <= 3600:
        raise SpecError(f"cluster.bookmark-interval: expected seconds from 0.1 to 3600, "
                        f"got {bookmarks!r}")
    return ClusterSpec(
        control_plane=control_plane,
        bookmark_interval=float(bookmarks),
        nodes=nodes,
        enable=tuple(enable),
        cluster_cidr=cidrs["cluster-cidr"],
        service_cidr=cidrs["service-cidr"],
        underlay=underlays[0] if underlays else cidrs["underlay"],
        underlays=underlays,
        agent_args=tuple(args),
        agent=agent,
        peers=tuple(peers),
        termination=_parse_termination(raw.get("pod-termination")),
    )


def _parse_termination(value: Any) -> PodTermination:
    """``pod-termination: {grace: S, pre-stop: S, serve-after-term: S}``, all optional."""
    if value is None:
        return PodTermination()
    if not isinstance(value, Mapping):
        raise SpecError("cluster.pod-termination: expected a mapping of grace, pre-stop and "
                        f"serve-after-term (seconds), got {value!r}")
    names = {"grace": "grace", "pre-stop": "pre_stop", "serve-after-term": "serve_after_term"}
    unknown = sorted(str(k) for k in value if k not in names)
    if unknown:
        raise SpecError(f"cluster.pod-termination: unknown key {unknown[0]!r}")
    seconds = {}
    for key, attr in names.items():
        v = value.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 600:
            raise SpecError(f"cluster.pod-termination.{key}: expected seconds from 0 to 600, "
                            f"got {v!r}")
        seconds[attr] = float(v)
    return PodTermination(**seconds)


def _parse_underlays(raw: Mapping[str, Any], cidrs: dict[str, str],
                     nodes: int) -> tuple[str, ...]:
    """``underlays:``, a list of disjoint IPv4 subnets; () when absent."""
    value = raw.get("underlays")
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        raise SpecError(f"cluster.underlays: expected a list of CIDRs, got {value!r}")
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for j, v in enumerate(value):
        try:
            net = ipaddress.ip_network(v)
        except (TypeError, ValueError):
            raise SpecError(f"cluster.underlays[{j}]: {v!r} is not a CIDR") from None
        if net.version != 4 or net.num_addresses < 100 + nodes + 1:
            raise SpecError(f"cluster.underlays[{j}]: {v} must be IPv4 with room for "
                            f".{100 + nodes - 1}")
        for k, other in enumerate(nets):
            if net.overlaps(other):
                raise SpecError(f"cluster.underlays[{j}]: {v} overlaps underlays[{k}]")
        nets.append(net)
    if "underlay" in raw and ipaddress.ip_network(cidrs["underlay"]) != nets[0]:
        raise SpecError("cluster.underlay: must be the first of cluster.underlays when both "
                        "are given")
    return tuple(str(n) for n in nets)
