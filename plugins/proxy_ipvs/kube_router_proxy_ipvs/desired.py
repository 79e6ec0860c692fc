"""A Service and its EndpointSlices turned into the IPVS virtual servers a node should have.

Pure functions of the records and the proxy's settings: no kernel, no I/O, so they are unit
tested on their own.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Container
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

from kube_router.kube.kinds import SERVICE
from kube_router.kube.records import EndpointSlice
from kube_router.kube.records import Service
from kube_router.kube.records import ServicePort
from kube_router.objwarn import ObjectWarnings
from kube_router_proxy_ipvs import ipvs_netlink as nl
from kube_router_proxy_ipvs.api import DEFAULT as _DEFAULT
from kube_router_proxy_ipvs.api import IPVSScheduler

log = logging.getLogger(__name__)

PROXY_NAME_LABEL = "service.kubernetes.io/service-proxy-name"
HEADLESS_LABEL = "service.kubernetes.io/headless"
LOCAL_ANNOTATION = "kube-router.io/service.local"
HAIRPIN_ANNOTATION = "kube-router.io/service.hairpin"
HAIRPIN_EXTERNAL_ANNOTATION = "kube-router.io/service.hairpin.externalips"
SKIP_LB_ANNOTATION = "kube-router.io/service.skiplbips"
OUR_PROXY_NAME = "kube-router"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Settings:
    """The proxy's view of its flags and of this node."""

    node_name: str
    service_cidrs: tuple[Network, ...]
    external_ranges: tuple[Network, ...] = ()
    lb_ranges: tuple[Network, ...] = ()
    excluded: tuple[Network, ...] = ()
    strict_external: bool = True
    ipv4: bool = True
    ipv6: bool = False
    nodeport_range: tuple[int, int] = (30000, 32767)
    hairpin_all: bool = False


class VirtualServer(NamedTuple):
    """The desired state of one IPVS service."""

    key: nl.ServiceKey
    attrs: nl.ServiceAttrs
    dests: Mapping[tuple[str, int], int]  # (ip, port) -> weight


#: The one empty hairpin set (``frozenset()`` is a new object at every call).
NO_PAIRS: frozenset[tuple[str, str, int, str]] = frozenset()


@dataclass(slots=True)
class ServiceState:
    """Everything one Service asks of this node."""

    # Each key once. A tuple, not a dict by key: at thousands of Services a dict each would
    # be a third of the memory a cold sync fills (and fresh memory is slow to touch).
    servers: tuple[VirtualServer, ...] = ()
    vips: tuple[str, ...] = ()  # addresses for kube-dummy-if, each once
    # (vip, proto, port, endpoint ip) for local endpoints of hairpin-enabled services
    # (a shared empty frozenset until the first pair: most Services have none)
    hairpin: AbstractSet[tuple[str, str, int, str]] = NO_PAIRS
    # (healthCheckNodePort, local ready endpoints) for externalTrafficPolicy Local
    health_check: tuple[int, int] | None = None


def _in(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, nets: Iterable[Network]) -> bool:
    return any(addr.version == n.version and addr in n for n in nets)


def skip_reason(svc: Service) -> str | None:
    """Why the proxy leaves this Service alone, or None."""
    proxy = svc.meta.labels.get(PROXY_NAME_LABEL)
    if proxy is not None and proxy != OUR_PROXY_NAME:
        return f"service-proxy-name={proxy}"
    if svc.type == "ExternalName":
        return "ExternalName"
    if svc.headless or not svc.cluster_ips or HEADLESS_LABEL in svc.meta.labels:
        return "headless"
    return None


#: Up to this many real servers a lookup scans the tuple (as fast as a set at this size).
SCAN_LIMIT = 16


class Dests(Mapping[tuple[str, int], int]):
    """Real servers sharing one port and one weight, the common case, as the mapping
    (ip, port) -> weight without a tuple and a dict entry per endpoint: a cold sync of
    thousands of Services keeps a tenth of the memory (and fresh memory is slow to touch)."""

    __slots__ = ("_set", "ips", "port", "weight")

    def __init__(self, ips: tuple[str, ...], port: int, weight: int = 1) -> None:
        self.ips = ips
        self.port = port
        self.weight = weight
        self._set: frozenset[str] | None = None

    def _has(self, ip: object) -> bool:
        ips = self.ips
        if len(ips) <= SCAN_LIMIT:
            return ip in ips
        # Only long lists keep a set for lookups: one per Service of ten endpoints, kept
        # for the life of its state, was megabytes at ten thousand Services.
        found = self._set
        if found is None:
            found = self._set = frozenset(ips)
        return ip in found

    def __getitem__(self, key: tuple[str, int]) -> int:
        if key[1] == self.port and self._has(key[0]):
            return self.weight
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return (isinstance(key, tuple) and len(key) == 2 and key[1] == self.port
                and self._has(key[0]))

    def __iter__(self) -> Iterator[tuple[str, int]]:
        port = self.port
        return ((ip, port) for ip in self.ips)

    def __len__(self) -> int:
        return len(self.ips)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Dests):
            # (ips are unique, so equal lengths and each found is the same set; the sets
            # for a different order are built for this comparison only)
            return (self.port == other.port and self.weight == other.weight
                    and len(self.ips) == len(other.ips)
                    and (self.ips == other.ips or frozenset(self.ips) == frozenset(other.ips)))
        return Mapping.__eq__(self, other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Dests({dict(self.items())!r})"


def _endpoints(
    port: ServicePort, slices: Iterable[EndpointSlice], family: int, node_name: str,
    local_only: bool,
) -> Mapping[tuple[str, int], int]:
    """Real servers of one Service port in one scope (the cluster, or this node for a Local
    traffic policy), chosen as kube-proxy does (KEP-1669): new connections go to the ready
    endpoints; only when the scope has none, to those serving while terminating. Beside
    ready ones, a serving-terminating endpoint stays at weight 0, so the connections it
    holds go on until it stops serving (deleting a real server cuts them). An endpoint not
    serving is never one. IPv6 addresses in their canonical form, as IPVS reports them."""
    want = "IPv6" if family == socket.AF_INET6 else "IPv4"
    groups: list[tuple[int, Sequence[str]]] = []
    draining: list[tuple[int, Sequence[str]]] = []  # serving-terminating, by target port
    for sl in slices:
        if sl.address_type != want:
            continue
        target = None
        for p in sl.ports:
            # The slice's port carries the Service port's name ("" when unnamed).
            if p.name == port.name and p.protocol == port.protocol:
                target = p.port
                break
        if target is None:
            continue
        ips: Sequence[str] = sl.ready_addresses
        term: Sequence[str] = sl.terminating_addresses
        if local_only:
            mine = [ep for ep in sl.endpoints if ep.node_name == node_name]
            ips = [a for ep in mine if ep.ready for a in ep.addresses]
            term = [a for ep in mine if not ep.ready and ep.serving and ep.terminating
                    for a in ep.addresses]
        if want == "IPv6":
            ips = [str(ipaddress.ip_address(ip)) for ip in ips]
            term = [str(ipaddress.ip_address(ip)) for ip in term]
        groups.append((target, ips))
        if term:
            draining.append((target, term))
    if draining:  # rare: only while pods of this Service shut down
        if not any(ips for _, ips in groups):
            groups = draining  # nothing ready in the scope: the terminating ones serve
        else:
            dests = {(ip, t): 1 for t, ips in groups for ip in ips}
            for t, ips in draining:
                for ip in ips:
                    dests.setdefault((ip, t), 0)
            return dests
    if len(groups) == 1:  # the usual case: one slice per family
        target, ips = groups[0]
        if type(ips) is tuple:  # the slice's own: already each once
            return Dests(ips, target)
        unique = tuple(ips)
        if len(set(unique)) != len(unique):
            unique = tuple(dict.fromkeys(unique))
        return Dests(unique, target)
    if not groups:
        return Dests((), port.port)
    first = groups[0][0]
    if all(t == first for t, _ in groups):
        return Dests(tuple(dict.fromkeys(ip for _, ips in groups for ip in ips)), first)
    # slices disagree on the target port (pods of one Service listening differently)
    return {(ip, t): 1 for t, ips in groups for ip in ips}


# Built without the named tuples' keyword-handling constructors (hot in a cold sync).
_service_key = partial(tuple.__new__, nl.ServiceKey)
_virtual_server = partial(tuple.__new__, VirtualServer)
_AF_INET = socket.AF_INET
_FAMILIES = {(True, True): (socket.AF_INET, socket.AF_INET6), (True, False): (socket.AF_INET,),
             (False, True): (socket.AF_INET6,), (False, False): ()}
_ATTRS: dict[tuple[str, tuple[str, ...], int, int], nl.ServiceAttrs] = {}


def _service_attrs(scheduler: IPVSScheduler, persistent: int, timeout: int) -> nl.ServiceAttrs:
    """One shared value per distinct (scheduler, persistence, timeout): a cold sync of
    thousands of Services then allocates none. (Keyed by the scheduler's fields: a frozen
    dataclass hashes in Python, several times slower.)"""
    key = (scheduler.name, scheduler.flags, persistent, timeout)
    attrs = _ATTRS.get(key)
    if attrs is None:
        attrs = _ATTRS[key] = nl.ServiceAttrs(scheduler.name,
                                              persistent | scheduler.flag_bits(), timeout)
    return attrs


def _protocol(svc: Service, port: ServicePort) -> int | None:
    """The IPVS protocol number of a Service port; None (and a warning) if IPVS has none."""
    proto = nl.PROTOCOLS.get(port.protocol)
    if proto is None:
        warnings.warn(svc.key, f"protocol {port.port}/{port.protocol}",
                      "unsupported protocol service=%s port=%s protocol=%s",
                      svc.key, port.port, port.protocol)
    return proto


def _persistence(svc: Service) -> tuple[int, int]:
    if svc.session_affinity == "ClientIP":
        return nl.SVC_F_PERSISTENT, svc.affinity_timeout
    return 0, 0


def service_state(
    svc: Service,
    slices: Iterable[EndpointSlice],
    settings: Settings,
    scheduler: IPVSScheduler,
    node_ips: Iterable[str],
) -> ServiceState:
    """The virtual servers, dummy-interface addresses and hairpin pairs for one Service."""
    if skip_reason(svc):
        return ServiceState()
    slices = list(slices)
    if (scheduler is _DEFAULT and svc.type == "ClusterIP" and len(svc.cluster_ips) == 1
            and svc.session_affinity != "ClientIP" and svc.internal_traffic_policy != "Local"
            and not settings.hairpin_all and HAIRPIN_ANNOTATION not in svc.meta.annotations
            and not svc.external_ips and not svc.load_balancer_ips
            and settings.ipv4 and not settings.ipv6 and ":" not in svc.cluster_ips[0]):
        return _plain_state(svc, slices, settings)
    attrs = _service_attrs(scheduler, *_persistence(svc))
    annotations = svc.meta.annotations
    ext_local = (svc.external_traffic_policy == "Local"
                 or annotations.get(LOCAL_ANNOTATION, "").lower() == "true")
    int_local = svc.internal_traffic_policy == "Local"
    hairpin = settings.hairpin_all or HAIRPIN_ANNOTATION in annotations
    hairpin_ext = hairpin and HAIRPIN_EXTERNAL_ANNOTATION in annotations
    any_local = int_local or ext_local or hairpin
    health = None
    if ext_local and svc.health_check_node_port:
        health = (svc.health_check_node_port,
                  local_ready_endpoints(slices, settings.node_name))
    external = (_external_addresses(svc, settings)
                if svc.external_ips or svc.load_balancer_ips else ())
    node_ips = tuple(node_ips) if svc.type in ("NodePort", "LoadBalancer") else ()
    servers: dict[nl.ServiceKey, VirtualServer] = {}
    vips: dict[str, None] = {}  # an ordered set
    pairs: set[tuple[str, str, int, str]] = set()
    for port in svc.ports:
        proto = _protocol(svc, port)
        if proto is None:
            continue
        for family in _FAMILIES[(settings.ipv4, settings.ipv6)]:
            v6 = family == socket.AF_INET6
            all_eps = _endpoints(port, slices, family, settings.node_name, False)
            if any_local:
                local_eps = _endpoints(port, slices, family, settings.node_name, True)
                local_ips = {ip for ip, _ in local_eps}
            else:  # the common case: only the full set is needed
                local_eps, local_ips = all_eps, set()
            # (addresses, virtual port, real servers, with hairpin, bound as a VIP), of
            # both families: each address below is taken only in this loop's family
            targets: list[tuple[Sequence[str], int, Mapping[tuple[str, int], int], bool,
                                bool]] = []
            # ClusterIP; with internalTrafficPolicy Local and no local endpoint, nothing.
            # (the policy is tested first: an empty test of the real servers costs a call)
            eps = local_eps if int_local else all_eps
            if not int_local or eps:
                targets.append((svc.cluster_ips, port.port, eps, hairpin, True))
            eps = local_eps if ext_local else all_eps
            # with traffic policy Local and nothing local, no external entry at all
            if not ext_local or eps:
                if port.node_port and node_ips:
                    targets.append((node_ips, port.node_port, eps, hairpin, False))
                if external:
                    targets.append((external, port.port, eps, hairpin_ext, True))
            for addrs, vport, dests, with_hairpin, is_vip in targets:
                for addr in addrs:
                    if (":" in addr) != v6:
                        continue
                    if v6:
                        addr = str(ipaddress.ip_address(addr))
                    key = _service_key((family, proto, addr, vport))
                    servers[key] = _virtual_server((key, attrs, dests))
                    if is_vip:
                        vips[addr] = None
                    if with_hairpin and local_ips:
                        pairs.update((addr, port.protocol, vport, ip) for ip, _ in dests
                                     if ip in local_ips)
    bound = tuple(vips)
    if bound == svc.cluster_ips:
        bound = svc.cluster_ips  # the record's own tuple: one object fewer per Service
    return ServiceState(tuple(servers.values()), bound, pairs or NO_PAIRS, health)


def _plain_state(svc: Service, slices: list[EndpointSlice], settings: Settings
                 ) -> ServiceState:
    """:func:`service_state` of the most common Service, in fewer steps: type ClusterIP
    with one IPv4 cluster IP, in an IPv4 cluster; the default scheduler, no affinity, no
    external address, no hairpin, internalTrafficPolicy Cluster (externalTrafficPolicy
    and the local annotation concern only external addresses and node ports)."""
    vip = svc.cluster_ips[0]
    attrs = _service_attrs(_DEFAULT, 0, 0)
    servers: list[VirtualServer] = []
    for port in svc.ports:
        proto = _protocol(svc, port)
        if proto is None:
            continue
        key = _service_key((_AF_INET, proto, vip, port.port))
        servers.append(_virtual_server((key, attrs, _endpoints(
            port, slices, _AF_INET, settings.node_name, False))))
    if not servers:
        return ServiceState()
    if len(servers) > 1:  # two ports of one protocol and number: the last one wins
        servers = list({vs.key: vs for vs in servers}.values())
    return ServiceState(tuple(servers), svc.cluster_ips)


def local_ready_endpoints(slices: Iterable[EndpointSlice], node_name: str) -> int:
    """Ready, not terminating endpoints on this node (what a health check probe counts);
    an endpoint listed in two slices (one per family) counts once."""
    seen: set[tuple[str, ...]] = set()
    for sl in slices:
        for ep in sl.endpoints:
            if ep.ready and not ep.terminating and ep.node_name == node_name:
                seen.add(("pod", ep.pod_name) if ep.pod_name else ep.addresses)
    return len(seen)


#: Every sync looks at a Service again: each problem is reported once, never in a flood.
warnings = ObjectWarnings(log, kind=SERVICE)


def _warn_once(svc: Service, what: str) -> None:
    warnings.warn(svc.key, what, "ignoring address service=%s reason=%s", svc.key, what)


def _external_addresses(svc: Service, settings: Settings) -> list[str]:
    """externalIPs and LoadBalancer ingress IPs that pass kube-router's validation."""
    out: list[str] = []
    candidates = [(ip, settings.external_ranges, "externalIP") for ip in svc.external_ips]
    if SKIP_LB_ANNOTATION not in svc.meta.annotations:
        candidates += [(ip, settings.lb_ranges, "loadBalancer") for ip in svc.load_balancer_ips]
    for raw, ranges, what in candidates:
        try:
            addr = ipaddress.ip_address(raw)
        except ValueError:
            _warn_once(svc, f"{what} {raw!r} is not an IP address")
            continue
        if _in(addr, settings.service_cidrs):
            _warn_once(svc, f"{what} {raw} is inside the service cluster IP range")
            continue
        if settings.strict_external and not _in(addr, ranges):
            _warn_once(svc, f"{what} {raw} is outside the configured ranges")
            continue
        out.append(str(addr))
    return out


def owns(key: nl.ServiceKey, settings: Settings, node_ips: Iterable[str],
         dummy_addrs: Container[str]) -> bool:
    """Whether an IPVS service found in the kernel is in this proxy's ranges.

    Only these are ever deleted; anything else (another tool's services, --excluded-cidrs)
    is left exactly as it is.
    """
    addr = ipaddress.ip_address(key.addr)
    if _in(addr, settings.excluded):
        return False
    if _in(addr, settings.service_cidrs) or _in(addr, settings.external_ranges):
        return True
    if _in(addr, settings.lb_ranges) or key.addr in dummy_addrs:
        return True
    lo, hi = settings.nodeport_range
    return key.addr in set(node_ips) and lo <= key.port <= hi
