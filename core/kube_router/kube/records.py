"""Slim, immutable records of the API objects the controllers read.

Watch payloads are decoded with orjson into plain dicts and then into these records, which
hold only the fields some controller uses. The client's model classes are far too slow for
tens of thousands of objects, and a record compares cheaply, so an update that changes
nothing a controller reads (a status heartbeat, say) can be dropped before it costs a sync.

Records are shared by every controller and must be treated as read-only. They are not
declared frozen only because a frozen dataclass costs several times more to build, which
shows at tens of thousands of objects per list.

Each ``decode_*`` takes the object as a dict and returns a record; it raises
:class:`ValueError` (naming the field) on an object it cannot read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from types import MappingProxyType
from typing import Any

_EMPTY: Mapping[str, str] = MappingProxyType({})


def _frozen_map(value: Any) -> Mapping[str, str]:
    if not value:
        return _EMPTY
    return MappingProxyType({str(k): str(v) for k, v in value.items()})


@dataclass(slots=True)
class Meta:
    namespace: str
    name: str
    uid: str
    # Excluded from equality so an update that changes nothing else compares equal.
    resource_version: str = field(compare=False)
    # A factory: dataclasses refuse an unhashable default such as a mappingproxy.
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


def _meta(obj: Mapping[str, Any]) -> Meta:
    md = obj.get("metadata") or {}
    name = md.get("name")
    if not name:
        raise ValueError("metadata.name is missing")
    return Meta(  # positional: a keyword call costs more, for every object decoded
        md.get("namespace") or "",  # namespace
        name,
        md.get("uid") or "",  # uid
        md.get("resourceVersion") or "",  # resource_version
        _frozen_map(md.get("labels")),  # labels
        _frozen_map(md.get("annotations")),  # annotations
    )


# --- Service ---------------------------------------------------------------------------


@dataclass(slots=True)
class ServicePort:
    name: str
    protocol: str  # TCP, UDP or SCTP
    port: int
    target_port: int | str
    node_port: int | None


@dataclass(slots=True)
class Service:
    meta: Meta
    type: str  # ClusterIP, NodePort, LoadBalancer, ExternalName
    cluster_ips: tuple[str, ...]  # empty for headless ("None") and ExternalName
    ports: tuple[ServicePort, ...]
    selector: Mapping[str, str]
    external_ips: tuple[str, ...]
    load_balancer_ips: tuple[str, ...]  # status.loadBalancer.ingress[].ip, ipMode Proxy excluded
    session_affinity: str  # None or ClientIP
    affinity_timeout: int  # seconds; meaningful with ClientIP
    external_traffic_policy: str  # Cluster or Local
    internal_traffic_policy: str  # Cluster or Local
    health_check_node_port: int | None
    headless: bool

    @property
    def key(self) -> str:
        return self.meta.key


DEFAULT_AFFINITY_TIMEOUT = 10800


def decode_service(obj: Mapping[str, Any]) -> Service:
    meta = _meta(obj)
    spec = obj.get("spec") or {}
    stype = spec.get("type") or "ClusterIP"
    cluster_ip = spec.get("clusterIP") or ""
    ips = spec.get("clusterIPs") or ([cluster_ip] if cluster_ip else [])
    headless = cluster_ip == "None"
    if headless or stype == "ExternalName":
        ips = []
    ports = []
    for i, p in enumerate(spec.get("ports") or ()):
        try:
            port = int(p["port"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"spec.ports[{i}].port is missing or not a number") from None
        node_port = p.get("nodePort")
        ports.append(
            ServicePort(
                name=p.get("name") or "",
                protocol=(p.get("protocol") or "TCP").upper(),
                port=port,
                target_port=p.get("targetPort") or port,
                node_port=int(node_port) if node_port else None,
            )
        )
    affinity = spec.get("sessionAffinity") or "None"
    timeout = (
        ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get("timeoutSeconds")
    )
    ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or ()
    hc_port = spec.get("healthCheckNodePort")
    return Service(
        meta=meta,
        type=stype,
        cluster_ips=tuple(ip for ip in ips if ip and ip != "None"),
        ports=tuple(ports),
        selector=_frozen_map(spec.get("selector")),
        external_ips=tuple(spec.get("externalIPs") or ()),
        load_balancer_ips=tuple(
            i["ip"] for i in ingress if i.get("ip") and i.get("ipMode") != "Proxy"
        ),
        session_affinity=affinity,
        affinity_timeout=int(timeout) if timeout else DEFAULT_AFFINITY_TIMEOUT,
        external_traffic_policy=spec.get("externalTrafficPolicy") or "Cluster",
        internal_traffic_policy=spec.get("internalTrafficPolicy") or "Cluster",
        health_check_node_port=int(hc_port) if hc_port else None,
        headless=headless,
    )


# --- EndpointSlice ---------------------------------------------------------------------

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(slots=True)
class EndpointPort:
    name: str
    protocol: str
    port: int


@dataclass(slots=True)
class Endpoint:
    addresses: tuple[str, ...]
    ready: bool
    serving: bool
    terminating: bool
    node_name: str
    pod_name: str  # targetRef name when it is a Pod, else ""


@dataclass(slots=True)
class EndpointSlice:
    meta: Meta
    service_name: str  # from the kubernetes.io/service-name label; "" when absent
    address_type: str  # IPv4, IPv6 or FQDN
    endpoints: tuple[Endpoint, ...]
    ports: tuple[EndpointPort, ...]
    # What a proxy reads of the endpoints, worked out once per version of the slice rather
    # than at every sync that reads it (a full sync reads thousands): the addresses of the
    # ready endpoints, and of those serving while terminating (the fallback when a Service
    # has no ready endpoint, KEP-1669); each address once, in order, and in one list only.
    ready_addresses: tuple[str, ...] = field(init=False)
    terminating_addresses: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        ready: list[str] = []
        fallback: list[str] = []
        for ep in self.endpoints:
            if ep.ready:
                ready += ep.addresses
            elif ep.serving and ep.terminating:
                fallback += ep.addresses
        self.ready_addresses = _each_once(ready)
        if fallback:
            taken = set(self.ready_addresses)
            self.terminating_addresses = _each_once([a for a in fallback if a not in taken])
        else:
            self.terminating_addresses = ()

    @property
    def key(self) -> str:
        return self.meta.key

    @property
    def service_key(self) -> str:
        return f"{self.meta.namespace}/{self.service_name}" if self.service_name else ""


def _each_once(addrs: list[str]) -> tuple[str, ...]:
    unique = tuple(addrs)
    if len(set(unique)) != len(unique):
        unique = tuple(dict.fromkeys(unique))
    return unique


def decode_endpointslice(obj: Mapping[str, Any]) -> EndpointSlice:
    meta = _meta(obj)
    endpoints = []
    for ep in obj.get("endpoints") or ():
        cond = ep.get("conditions") or {}
        # API semantics: a nil ready means ready; serving defaults to ready.
        ready = cond.get("ready") is not False
        serving = cond.get("serving")
        ref = ep.get("targetRef") or {}
        endpoints.append(Endpoint(  # positional: a keyword call costs more, per endpoint
            tuple(ep.get("addresses") or ()),  # addresses
            ready,
            ready if serving is None else bool(serving),  # serving
            bool(cond.get("terminating")),  # terminating
            ep.get("nodeName") or "",  # node_name
            ref.get("name", "") if ref.get("kind") == "Pod" else "",  # pod_name
        ))
    ports = tuple(
        EndpointPort(
            name=p.get("name") or "",
            protocol=(p.get("protocol") or "TCP").upper(),
            port=int(p["port"]),
        )
        for p in obj.get("ports") or ()
        if p.get("port") is not None
    )
    return EndpointSlice(
        meta=meta,
        service_name=meta.labels.get(SERVICE_NAME_LABEL, ""),
        address_type=obj.get("addressType") or "IPv4",
        endpoints=tuple(endpoints),
        ports=ports,
    )



def slice_service(rec: object) -> tuple[str, ...]:
    """Index function for EndpointSlices by Service (``Store.add_index("service", ...)``):
    the key of the Service a slice belongs to. One function, so that every controller that
    reads slices by Service declares the same index."""
    key = rec.service_key if isinstance(rec, EndpointSlice) else ""
    return (key,) if key else ()


# --- Pod -------------------------------------------------------------------------------


@dataclass(slots=True)
class ContainerPort:
    name: str
    protocol: str
    port: int


@dataclass(slots=True)
class Pod:
    meta: Meta
    node_name: str
    pod_ips: tuple[str, ...]
    phase: str
    host_network: bool
    ports: tuple[ContainerPort, ...]
    termination_grace_seconds: int

    @property
    def key(self) -> str:
        return self.meta.key


def decode_pod(obj: Mapping[str, Any]) -> Pod:
    meta = _meta(obj)
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    ips = [p.get("ip") for p in status.get("podIPs") or ()] or [status.get("podIP")]
    ports = tuple(
        ContainerPort(
            name=p.get("name") or "",
            protocol=(p.get("protocol") or "TCP").upper(),
            port=int(p["containerPort"]),
        )
        for c in spec.get("containers") or ()
        for p in c.get("ports") or ()
        if p.get("containerPort") is not None
    )
    grace = spec.get("terminationGracePeriodSeconds")
    return Pod(
        meta=meta,
        node_name=spec.get("nodeName") or "",
        pod_ips=tuple(ip for ip in ips if ip),
        phase=status.get("phase") or "",
        host_network=bool(spec.get("hostNetwork")),
        ports=ports,
        termination_grace_seconds=int(grace) if grace is not None else 30,
    )


# --- Node ------------------------------------------------------------------------------


@dataclass(slots=True)
class Node:
    meta: Meta
    internal_ips: tuple[str, ...]
    external_ips: tuple[str, ...]
    pod_cidrs: tuple[str, ...]

    @property
    def key(self) -> str:
        return self.meta.key


def decode_node(obj: Mapping[str, Any]) -> Node:
    meta = _meta(obj)
    spec = obj.get("spec") or {}
    addresses = (obj.get("status") or {}).get("addresses") or ()
    cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    return Node(
        meta=meta,
        internal_ips=tuple(a["address"] for a in addresses if a.get("type") == "InternalIP"),
        external_ips=tuple(a["address"] for a in addresses if a.get("type") == "ExternalIP"),
        pod_cidrs=tuple(cidrs),
    )


# --- Namespace and NetworkPolicy ------------------------------------------------------


@dataclass(slots=True)
class Namespace:
    meta: Meta

    @property
    def key(self) -> str:
        return self.meta.key


def decode_namespace(obj: Mapping[str, Any]) -> Namespace:
    return Namespace(meta=_meta(obj))


@dataclass(slots=True)
class NetworkPolicy:
    meta: Meta
    spec: Mapping[str, Any]  # kept as the API's dict: the firewall compiles it whole

    @property
    def key(self) -> str:
        return self.meta.key


def decode_networkpolicy(obj: Mapping[str, Any]) -> NetworkPolicy:
    return NetworkPolicy(meta=_meta(obj), spec=obj.get("spec") or {})


Record = Service | EndpointSlice | Pod | Node | Namespace | NetworkPolicy
