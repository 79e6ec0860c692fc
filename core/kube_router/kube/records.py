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

from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from types import MappingProxyType
from typing import Any

_EMPTY: Mapping[str, str] = MappingProxyType({})

# Sharing what recurs. A big list decodes into one fresh string per field of every object,
# though most are the same few values over and over (namespaces, node names, protocols,
# label values), and into one map per object, though many objects carry the same labels.
# Each decoded value goes through a dict of the ones already seen and the record keeps the
# one in it. Our own dicts rather than sys.intern: on Python 3.12 interned strings are
# never freed. Each is emptied when it passes its cap, so values that come and go cannot
# grow it without bound; records already made keep theirs, later ones share anew. (Maps
# cannot be held weakly: a mappingproxy takes no weak reference.) The informers decode in
# threads of their own; a race between them can only make a second copy of a value.
# Unique values (uid, resourceVersion, names, addresses) are left out: nothing to share.
_STRINGS: dict[str, str] = {}
_STRINGS_CAP = 1 << 16
# Keyed by the map's items in order, the cheapest key to build.
_MAPS: dict[tuple[tuple[str, str], ...], Mapping[str, str]] = {}
_MAPS_CAP = 1 << 12  # the objects that share labels mostly come in a row (a Deployment's Pods)
# Ports: the same few (http/80, metrics/9090...) on thousands of objects. Keyed by the
# fields of each port in order; the value is the tuple of records.
_PORTS: dict[tuple[object, ...], tuple[Any, ...]] = {}
_PORTS_CAP = 1 << 12
# Label values may not be longer; annotation values this short are flags and enums.
_SHORT = 63

#: kubectl apply's copy of the whole manifest: kilobytes, and no controller reads it.
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


_str = _STRINGS.setdefault  # the shared copy of a string: _str(s, s)


def _shared(value: str) -> str:
    return _str(value, value)


def _ports(cls: Callable[..., Any], fields: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    """The records ``cls(*f)`` of ``fields``, one tuple of them for every object whose ports
    are the same. A port is read-only like the rest of its record."""
    if not fields:
        return ()
    key = (cls, *fields)
    shared = _PORTS.get(key)
    if shared is None:
        shared = _PORTS[key] = tuple(
            cls(*(_str(f, f) if type(f) is str else f for f in one)) for one in fields
        )
    return shared


#: Labels whose value names one object (a slice's Service, a StatefulSet's pod): a map
#: holding one belongs to that object alone, so neither it nor that value is kept for
#: sharing. Kept, the maps and names of deleted objects would stay in the caches until
#: their next emptying: under churn, up to their caps of dead entries, which is growth.
_NAMING_LABELS = frozenset({"kubernetes.io/service-name",
                            "statefulset.kubernetes.io/pod-name"})


def _frozen_map(value: Any) -> Mapping[str, str]:
    if not value:
        return _EMPTY
    own = not _NAMING_LABELS.isdisjoint(value)
    try:
        shared = None if own else _MAPS.get(tuple(value.items()))
    except TypeError:  # a value that is not hashable: not a map of strings
        shared = None
    if shared is not None:
        return shared
    items = {}
    for k, v in value.items():
        if type(k) is not str or type(v) is not str:
            # Not from a valid object. Made of strings, and not kept: {"a": 1} must not
            # come back for {"a": True}.
            return MappingProxyType({str(k): str(v) for k, v in value.items()})
        unshared = len(v) > _SHORT or (own and k in _NAMING_LABELS)
        items[_str(k, k)] = v if unshared else _str(v, v)
    shared = MappingProxyType(items)
    if not own:
        # Keyed by the shared strings: the parsed ones would otherwise be kept alive.
        _MAPS[tuple(items.items())] = shared
    return shared


def _annotations(value: Any) -> Mapping[str, str]:
    if value and LAST_APPLIED in value:
        value = {k: v for k, v in value.items() if k != LAST_APPLIED}
    return _frozen_map(value)


@dataclass(slots=True)
class Meta:
    namespace: str
    name: str
    uid: str
    # Excluded from equality so an update that changes nothing else compares equal.
    resource_version: str = field(compare=False)
    # A factory: dataclasses refuse an unhashable default such as a mappingproxy.
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    # Without LAST_APPLIED.
    annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


def _meta(obj: Mapping[str, Any]) -> Meta:
    md = obj.get("metadata") or {}
    name = md.get("name")
    if not name:
        raise ValueError("metadata.name is missing")
    # Checked once per object rather than per value: a cap passed by a few is no matter.
    if len(_STRINGS) > _STRINGS_CAP:
        _STRINGS.clear()
    if len(_MAPS) > _MAPS_CAP:
        _MAPS.clear()
    if len(_PORTS) > _PORTS_CAP:
        _PORTS.clear()
    namespace = md.get("namespace") or ""
    return Meta(  # positional: a keyword call costs more, for every object decoded
        _str(namespace, namespace),  # namespace
        name,
        md.get("uid") or "",  # uid
        md.get("resourceVersion") or "",  # resource_version
        _frozen_map(md.get("labels")),  # labels
        _annotations(md.get("annotations")),  # annotations
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
        ports.append((  # ServicePort's fields, in order
            p.get("name") or "",
            (p.get("protocol") or "TCP").upper(),
            port,
            p.get("targetPort") or port,
            int(node_port) if node_port else None,
        ))
    affinity = spec.get("sessionAffinity") or "None"
    timeout = (
        ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get("timeoutSeconds")
    )
    ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or ()
    hc_port = spec.get("healthCheckNodePort")
    return Service(
        meta=meta,
        type=_shared(stype),
        cluster_ips=tuple(ip for ip in ips if ip and ip != "None"),
        ports=_ports(ServicePort, ports),
        selector=_frozen_map(spec.get("selector")),
        external_ips=tuple(spec.get("externalIPs") or ()),
        load_balancer_ips=tuple(
            i["ip"] for i in ingress if i.get("ip") and i.get("ipMode") != "Proxy"
        ),
        session_affinity=_shared(affinity),
        affinity_timeout=int(timeout) if timeout else DEFAULT_AFFINITY_TIMEOUT,
        external_traffic_policy=_shared(spec.get("externalTrafficPolicy") or "Cluster"),
        internal_traffic_policy=_shared(spec.get("internalTrafficPolicy") or "Cluster"),
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
    shared = _str
    for ep in obj.get("endpoints") or ():
        cond = ep.get("conditions") or {}
        # API semantics: a nil ready means ready; serving defaults to ready.
        ready = cond.get("ready") is not False
        serving = cond.get("serving")
        ref = ep.get("targetRef") or {}
        node = ep.get("nodeName") or ""
        endpoints.append(Endpoint(  # positional: a keyword call costs more, per endpoint
            tuple(ep.get("addresses") or ()),  # addresses
            ready,
            ready if serving is None else bool(serving),  # serving
            bool(cond.get("terminating")),  # terminating
            shared(node, node),  # node_name
            ref.get("name", "") if ref.get("kind") == "Pod" else "",  # pod_name
        ))
    ports = [
        (p.get("name") or "", (p.get("protocol") or "TCP").upper(), int(p["port"]))
        for p in obj.get("ports") or ()
        if p.get("port") is not None
    ]
    return EndpointSlice(
        meta=meta,
        service_name=meta.labels.get(SERVICE_NAME_LABEL, ""),  # shared with the labels
        address_type=_shared(obj.get("addressType") or "IPv4"),
        endpoints=tuple(endpoints),
        ports=_ports(EndpointPort, ports),
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
    ports = [
        (p.get("name") or "", (p.get("protocol") or "TCP").upper(), int(p["containerPort"]))
        for c in spec.get("containers") or ()
        for p in c.get("ports") or ()
        if p.get("containerPort") is not None
    ]
    grace = spec.get("terminationGracePeriodSeconds")
    return Pod(
        meta=meta,
        node_name=_shared(spec.get("nodeName") or ""),
        pod_ips=tuple(ip for ip in ips if ip),
        phase=_shared(status.get("phase") or ""),
        host_network=bool(spec.get("hostNetwork")),
        ports=_ports(ContainerPort, ports),
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
