"""The cluster's own controllers, as the lab plays them: Node objects, Service address and
node-port allocation (admission), the ``default/kubernetes`` Service, Deployments into Pods,
and the EndpointSlice controller.

The top half is pure functions of API objects (unit-tested); ``ClusterControllers`` at the
bottom drives them from the store's events in one worker thread.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import queue
import random
import threading
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from typing import Any

from kube_router_lab.api.errors import ApiError
from kube_router_lab.spec import ClusterSpec

NODE_PORT_RANGE = (30000, 32767)
#: Kubernetes' alphabet for generated names: no vowels, no look-alike digits.
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "endpointslice-controller.k8s.io"
TEMPLATE_HASH_LABEL = "pod-template-hash"

Obj = dict[str, Any]


def _invalid(message: str) -> Exception:
    return ApiError(422, "Invalid", message)


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def key_of(obj: Mapping[str, Any]) -> str:
    m = meta(obj)
    return f"{m.get('namespace') or ''}/{m.get('name') or ''}".lstrip("/")


# -- nodes ---------------------------------------------------------------------------------


def node_object(spec: ClusterSpec, i: int) -> Obj:
    name, cidr = spec.node_name(i), spec.pod_cidr(i)
    stamp = now_rfc3339()
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name,
                                              "kubernetes.io/os": "linux",
                                              "kubernetes.io/arch": "amd64"}},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {
            "addresses": [{"type": "InternalIP", "address": spec.node_ip(i)},
                          {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "lab kubelet is posting ready status",
                            "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}],
            "nodeInfo": {"kubeletVersion": "v1.30.0-lab", "operatingSystem": "linux",
                         "architecture": "amd64"},
        },
    }


def kubernetes_service(spec: ClusterSpec) -> tuple[Obj, Obj]:
    """``default/kubernetes`` and its EndpointSlice, pointing at the lab's API server."""
    svc = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": spec.kubernetes_service_ip(),
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP",
                            "targetPort": 6443}]},
    }
    eps = {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {SERVICE_NAME_LABEL: "kubernetes",
                                MANAGED_BY_LABEL: "endpointslicemirroring-controller.k8s.io"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [spec.apiserver_ip()],
                       "conditions": {"ready": True, "serving": True, "terminating": False}}],
        "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
    }
    return svc, eps


# -- Service allocation (admission) ----------------------------------------------------------


class Allocator:
    """Cluster IPs and node ports, each remembered with the Service that holds it.

    Holdings are keyed by the owner ("ns/name"), so admitting the same Service again (an
    update, or a create that then lost a race) replaces its holdings rather than leaking.
    """

    def __init__(self, service_cidr: str, *, port_range: tuple[int, int] = NODE_PORT_RANGE) -> None:
        self.net = ipaddress.ip_network(service_cidr)
        self.port_range = port_range
        self._ips: dict[str, str] = {}  # ip -> owner
        self._ports: dict[int, str] = {}  # node port -> owner
        self._lock = threading.Lock()

    def release(self, owner: str) -> None:
        with self._lock:
            self._drop(owner)

    def _drop(self, owner: str) -> None:
        for table in (self._ips, self._ports):
            for k in [k for k, o in table.items() if o == owner]:
                del table[k]

    def _free_ip(self, owner: str) -> str:
        for addr in self.net.hosts():
            ip = str(addr)
            if self._ips.get(ip, owner) == owner and ip not in self._pending_ips:
                return ip
        raise _invalid(f"service {owner}: the service CIDR {self.net} is full")

    def _free_port(self, owner: str) -> int:
        lo, hi = self.port_range
        for port in range(lo, hi + 1):
            if self._ports.get(port, owner) == owner and port not in self._pending_ports:
                return port
        raise _invalid(f"service {owner}: no free node port in {lo}-{hi}")

    def admit(self, new: Obj, old: Obj | None) -> Obj:
        """Admission for Services: fill in defaults, cluster IP(s) and node ports."""
        svc = copy.deepcopy(new)
        owner = key_of(svc)
        spec = svc.setdefault("spec", {})
        old_spec = (old or {}).get("spec") or {}
        stype = spec.setdefault("type", "ClusterIP")
        if stype not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
            raise _invalid(f"service {owner}: spec.type {stype!r} is not supported")
        spec.setdefault("sessionAffinity", "None")
        ports = spec.get("ports") or []
        if not isinstance(ports, list):
            raise _invalid(f"service {owner}: spec.ports must be a list")
        for p in ports:
            if not isinstance(p, dict) or not isinstance(p.get("port"), int):
                raise _invalid(f"service {owner}: every spec.ports entry needs a numeric port")
            p.setdefault("protocol", "TCP")
            p.setdefault("targetPort", p["port"])
        with self._lock:
            self._pending_ips: set[str] = set()
            self._pending_ports: set[int] = set()
            ip = self._cluster_ip(owner, spec, old_spec)
            node_ports = self._node_ports(owner, stype, spec, old_spec)
            # Everything checked: commit this Service's holdings in one go.
            self._drop(owner)
            if ip:
                self._ips[ip] = owner
            for port in node_ports:
                self._ports[port] = owner
        return svc

    def _cluster_ip(self, owner: str, spec: Obj, old_spec: Mapping[str, Any]) -> str | None:
        if spec["type"] == "ExternalName":
            spec.pop("clusterIP", None)
            spec.pop("clusterIPs", None)
            return None
        wanted = spec.get("clusterIP") or (spec.get("clusterIPs") or [None])[0]
        had = old_spec.get("clusterIP")
        if wanted in (None, "") and had:
            wanted = had  # an apply without clusterIP keeps the one assigned
        if had and wanted != had:
            raise _invalid(f"service {owner}: spec.clusterIP: field is immutable "
                           f"({had} -> {wanted})")
        if wanted == "None":
            ip = None
            spec["clusterIP"], spec["clusterIPs"] = "None", ["None"]
        elif wanted:
            try:
                addr = ipaddress.ip_address(wanted)
            except ValueError:
                raise _invalid(f"service {owner}: spec.clusterIP {wanted!r} is not an IP "
                               "address") from None
            if addr not in self.net or addr in (self.net.network_address,
                                                self.net.broadcast_address):
                raise _invalid(f"service {owner}: spec.clusterIP {wanted} is not in the "
                               f"service CIDR {self.net}")
            ip = str(addr)
            holder = self._ips.get(ip)
            if holder not in (None, owner):
                raise _invalid(f"service {owner}: spec.clusterIP {ip} is already allocated "
                               f"to {holder}")
        else:
            ip = self._free_ip(owner)
        if ip:
            spec["clusterIP"], spec["clusterIPs"] = ip, [ip]
            self._pending_ips.add(ip)
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
        return ip

    def _take_port(self, owner: str, wanted: Any, what: str) -> int:
        lo, hi = self.port_range
        if not isinstance(wanted, int) or not lo <= wanted <= hi:
            raise _invalid(f"service {owner}: {what} {wanted!r} is not in {lo}-{hi}")
        holder = self._ports.get(wanted)
        if holder not in (None, owner):
            raise _invalid(f"service {owner}: {what} {wanted} is already allocated to {holder}")
        return wanted

    def _node_ports(self, owner: str, stype: str, spec: Obj,
                    old_spec: Mapping[str, Any]) -> list[int]:
        ports = spec.get("ports") or []
        if stype not in ("NodePort", "LoadBalancer"):
            for p in ports:
                p.pop("nodePort", None)
            spec.pop("healthCheckNodePort", None)
            spec.pop("externalTrafficPolicy", None)
            return []
        old_ports = old_spec.get("ports") or []

        def previous(p: Mapping[str, Any]) -> int | None:
            for q in old_ports:
                if (q.get("name") or "") == (p.get("name") or "") and q.get("port") == p["port"] \
                        and q.get("protocol", "TCP") == p["protocol"]:
                    return q.get("nodePort")
            return None

        taken: dict[int, set[str]] = {}  # node port -> protocols in this Service
        # Requested ports first, so an allocated one never steals a requested number.
        for p in ports:
            if p.get("nodePort"):
                port = self._take_port(owner, p["nodePort"], f"port {p['port']} nodePort")
                if p["protocol"] in taken.get(port, set()):
                    raise _invalid(f"service {owner}: nodePort {port} is used twice")
                taken.setdefault(port, set()).add(p["protocol"])
                self._pending_ports.add(port)
        for p in ports:
            if p.get("nodePort"):
                continue
            prev = previous(p)
            if prev and self._ports.get(prev, owner) == owner and prev not in taken:
                port = prev
            else:
                port = self._free_port(owner)
            p["nodePort"] = port
            taken.setdefault(port, set()).add(p["protocol"])
            self._pending_ports.add(port)
        policy = spec.setdefault("externalTrafficPolicy", "Cluster")
        if policy not in ("Cluster", "Local"):
            raise _invalid(f"service {owner}: spec.externalTrafficPolicy {policy!r} is not "
                           "Cluster or Local")
        if policy == "Local":
            wanted = spec.get("healthCheckNodePort") or old_spec.get("healthCheckNodePort")
            if wanted and self._ports.get(wanted, owner) == owner and wanted not in taken:
                port = self._take_port(owner, wanted, "healthCheckNodePort")
            elif spec.get("healthCheckNodePort"):
                port = self._take_port(owner, spec["healthCheckNodePort"],
                                       "healthCheckNodePort")
            else:
                port = self._free_port(owner)
            spec["healthCheckNodePort"] = port
            taken.setdefault(port, set()).add("health")
            self._pending_ports.add(port)
        else:
            spec.pop("healthCheckNodePort", None)
        return sorted(taken)


# -- Deployments into Pods -------------------------------------------------------------------


def template_hash(template: Mapping[str, Any]) -> str:
    """A stable 10-character name part for one pod template, like a ReplicaSet's."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()
    return "".join(SAFE_ALPHABET[b % len(SAFE_ALPHABET)] for b in digest[:10])


def random_suffix(n: int = 5, rng: random.Random | None = None) -> str:
    r = rng or random
    return "".join(r.choice(SAFE_ALPHABET) for _ in range(n))


def is_terminating(obj: Mapping[str, Any]) -> bool:
    return bool(meta(obj).get("deletionTimestamp"))


def owned_by(pod: Mapping[str, Any], owner: Mapping[str, Any]) -> bool:
    uid = meta(owner).get("uid")
    for ref in meta(pod).get("ownerReferences") or []:
        if ref.get("kind") == owner.get("kind") and (ref.get("uid") == uid if uid
                                                      else ref.get("name") == meta(owner)["name"]):
            return True
    return False


def _scaled(value: Any, replicas: int, *, round_up: bool) -> int:
    """A rolling update's maxSurge or maxUnavailable: a number, or a percentage of the
    replicas (surge rounded up, unavailability down, as Kubernetes rounds them)."""
    if isinstance(value, str) and value.endswith("%") and value[:-1].isdigit():
        share = int(value[:-1]) * replicas
        return -(-share // 100) if round_up else share // 100
    if isinstance(value, int) and value >= 0:
        return value
    raise ValueError(f"{value!r} is not a number or a percentage")


def rolling_limits(spec: Mapping[str, Any], replicas: int) -> tuple[int, int] | None:
    """(maxSurge, maxUnavailable) of a RollingUpdate Deployment; None for Recreate."""
    strategy = spec.get("strategy") or {}
    if strategy.get("type") == "Recreate":
        return None
    rolling = strategy.get("rollingUpdate") or {}
    surge = _scaled(rolling.get("maxSurge", "25%"), replicas, round_up=True)
    unavailable = _scaled(rolling.get("maxUnavailable", "25%"), replicas, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1  # the API refuses both zero; never stall the rollout
    return surge, unavailable


def plan_deployment(deploy: Mapping[str, Any], pods: Iterable[Mapping[str, Any]],
                    node_names: list[str], *, rng: random.Random | None = None,
                    ) -> tuple[list[Obj], list[str]]:
    """(pods to create, names of pods to delete) bringing ``deploy`` to its replicas.

    ``pods`` are all the Pods of the Deployment's namespace. New pods go to the nodes with
    the fewest pods of this Deployment (then the fewest pods overall); scaling down takes
    pods from the nodes with the most. A changed template rolls out as a Deployment's
    RollingUpdate does: at most maxSurge pods above the replicas, and an older pod goes
    only while at least replicas - maxUnavailable pods stay ready (each call is one step;
    the next comes with the pods' next change). Strategy Recreate replaces them all at once.
    """
    m = meta(deploy)
    name, namespace = m["name"], m.get("namespace") or "default"
    spec = deploy.get("spec") or {}
    replicas = spec.get("replicas", 1)
    if not isinstance(replicas, int) or replicas < 0:
        raise ValueError(f"deployment {namespace}/{name}: spec.replicas {replicas!r} is invalid")
    try:
        limits = rolling_limits(spec, replicas)
    except ValueError as exc:
        raise ValueError(f"deployment {namespace}/{name}: spec.strategy: {exc}") from None
    template = spec.get("template") or {}
    h = template_hash(template)
    pods = list(pods)
    everyone: dict[str, int] = {n: 0 for n in node_names}
    mine: dict[str, list[Mapping[str, Any]]] = {n: [] for n in node_names}
    older: list[Mapping[str, Any]] = []  # of an earlier template
    delete: list[str] = []
    names = {meta(p)["name"] for p in pods}
    for p in pods:
        node = (p.get("spec") or {}).get("nodeName")
        if node in everyone and not is_terminating(p):
            everyone[node] += 1
        if not owned_by(p, deploy) or is_terminating(p):
            continue
        if node not in mine:
            delete.append(meta(p)["name"])
        elif (meta(p).get("labels") or {}).get(TEMPLATE_HASH_LABEL) != h:
            older.append(p)
        else:
            mine[node].append(p)
    current = sum(len(v) for v in mine.values())
    ceiling = replicas
    if older and limits is None:
        delete += [meta(p)["name"] for p in older]
    elif older:
        surge, unavailable = limits
        ready_new = sum(1 for pods_on in mine.values() for p in pods_on if pod_ready(p))
        # not ready ones first: they serve nobody
        older.sort(key=lambda p: (pod_ready(p), meta(p).get("creationTimestamp") or ""))
        spare = sum(1 for p in older if pod_ready(p)) + ready_new - (replicas - unavailable)
        while older and (not pod_ready(older[0]) or spare > 0):
            victim = older.pop(0)
            spare -= pod_ready(victim)
            delete.append(meta(victim)["name"])
        ceiling = min(replicas, replicas + surge - len(older))
    order = {n: i for i, n in enumerate(node_names)}
    create: list[Obj] = []
    while current < ceiling and node_names:
        node = min(node_names, key=lambda n: (len(mine[n]), everyone[n], order[n]))
        while True:
            pod_name = f"{name}-{h}-{random_suffix(5, rng)}"
            if pod_name not in names:
                break
        names.add(pod_name)
        pod = pod_object(deploy, template, h, pod_name, node)
        mine[node].append(pod)
        everyone[node] += 1
        create.append(pod)
        current += 1
    while current > replicas:
        node = max(node_names, key=lambda n: (len(mine[n]), -order[n]))
        # The newest pod goes first, as a ReplicaSet prefers.
        victim = max(mine[node], key=lambda p: (meta(p).get("creationTimestamp") or "",
                                                meta(p)["name"]))
        mine[node].remove(victim)
        delete.append(meta(victim)["name"])
        current -= 1
    return create, delete


def pod_object(deploy: Mapping[str, Any], template: Mapping[str, Any], h: str, name: str,
               node: str) -> Obj:
    m = meta(deploy)
    tmeta = template.get("metadata") or {}
    pod_spec = copy.deepcopy(template.get("spec") or {})
    pod_spec["nodeName"] = node
    ref = {"apiVersion": deploy.get("apiVersion", "apps/v1"), "kind": "Deployment",
           "name": m["name"], "controller": True, "blockOwnerDeletion": True}
    if m.get("uid"):
        ref["uid"] = m["uid"]
    pod_meta: Obj = {"name": name, "namespace": m.get("namespace") or "default",
                     "labels": {**(tmeta.get("labels") or {}), TEMPLATE_HASH_LABEL: h},
                     "ownerReferences": [ref]}
    if tmeta.get("annotations"):
        pod_meta["annotations"] = dict(tmeta["annotations"])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": pod_spec,
            "status": {"phase": "Pending"}}


# -- EndpointSlices ----------------------------------------------------------------------


def selects(selector: Mapping[str, str] | None, labels: Mapping[str, str] | None) -> bool:
    if not selector:
        return False
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


def pod_ready(pod: Mapping[str, Any]) -> bool:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def resolve_target_port(pod: Mapping[str, Any], target: Any, protocol: str) -> int | None:
    """A Service port's targetPort on one pod: a number, or a container port's name."""
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    for c in (pod.get("spec") or {}).get("containers") or []:
        for cp in c.get("ports") or []:
            if cp.get("name") == target and cp.get("protocol", "TCP") == protocol:
                return cp.get("containerPort")
    return None


def _slice_name(namespace: str, service: str, index: int) -> str:
    # Stable across endpoint changes, so a slice is updated in place, not replaced.
    digest = hashlib.sha256(f"{namespace}/{service}/{index}".encode()).digest()
    return f"{service}-{''.join(SAFE_ALPHABET[b % len(SAFE_ALPHABET)] for b in digest[:5])}"


def build_endpointslices(service: Mapping[str, Any],
                         pods: Iterable[Mapping[str, Any]]) -> list[Obj] | None:
    """The EndpointSlices the controller wants for ``service``; None for a Service it does
    not manage (no selector: its slices are the user's).

    Pods whose named targetPorts resolve to different numbers land in different slices,
    one slice per distinct port list, as in Kubernetes.
    """
    m = meta(service)
    spec = service.get("spec") or {}
    selector = spec.get("selector")
    if not selector or spec.get("type") == "ExternalName":
        return None
    name, namespace = m["name"], m.get("namespace") or "default"
    publish_not_ready = bool(spec.get("publishNotReadyAddresses"))
    sports = spec.get("ports") or []
    groups: dict[tuple[tuple[str, int, str], ...], list[Obj]] = {}
    for pod in sorted(pods, key=lambda p: meta(p).get("name", "")):
        pm = meta(pod)
        status = pod.get("status") or {}
        if (pm.get("namespace") or "default") != namespace or not selects(selector,
                                                                          pm.get("labels")):
            continue
        if not status.get("podIP") or status.get("phase") in ("Succeeded", "Failed"):
            continue
        resolved = []
        for sp in sports:
            proto = sp.get("protocol", "TCP")
            port = resolve_target_port(pod, sp.get("targetPort", sp.get("port")), proto)
            if port is not None:
                resolved.append((sp.get("name") or "", port, proto))
        terminating = is_terminating(pod)
        ready = pod_ready(pod) or publish_not_ready
        endpoint: Obj = {
            "addresses": [status["podIP"]],
            "conditions": {"ready": ready and not terminating, "serving": ready,
                           "terminating": terminating},
            "targetRef": {"kind": "Pod", "namespace": namespace, "name": pm["name"],
                          **({"uid": pm["uid"]} if pm.get("uid") else {})},
        }
        if (pod.get("spec") or {}).get("nodeName"):
            endpoint["nodeName"] = pod["spec"]["nodeName"]
        groups.setdefault(tuple(resolved), []).append(endpoint)
    if not groups:
        # An empty slice still publishes the ports that need no pod to resolve.
        groups[tuple((sp.get("name") or "", sp["targetPort"], sp.get("protocol", "TCP"))
                     for sp in sports if isinstance(sp.get("targetPort"), int))] = []
    owner = {"apiVersion": "v1", "kind": "Service", "name": name, "controller": True,
             "blockOwnerDeletion": True, **({"uid": m["uid"]} if m.get("uid") else {})}
    slices = []
    # The largest group first: it keeps the first name as pods come and go.
    ordered = sorted(groups.items(), key=lambda g: (-len(g[1]), g[0]))
    for index, (ports, endpoints) in enumerate(ordered):
        slices.append({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": _slice_name(namespace, name, index), "namespace": namespace,
                         "labels": {SERVICE_NAME_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY},
                         "ownerReferences": [owner]},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports],
        })
    return slices


def slice_differs(want: Mapping[str, Any], have: Mapping[str, Any]) -> bool:
    return any(want.get(f) != have.get(f) for f in ("addressType", "endpoints", "ports")) or \
        meta(want).get("labels") != meta(have).get("labels")


# -- the controllers at run time ---------------------------------------------------------


class ClusterControllers:
    """Deployments and EndpointSlices, reconciled from the store's events in one thread.

    Store callbacks only queue the event (they run in the writer's thread, inside its
    request); the worker drains the queue and reconciles each dirty object once.
    """

    def __init__(self, store: Any, spec: ClusterSpec, *, log: Callable[[str], None] = print,
                 grace: float | None = None,
                 nodes_with_kubelet: Callable[[], set[str]] | None = None) -> None:
        self.store = store
        self.spec = spec
        self.log = log
        # for pods that do not set terminationGracePeriodSeconds
        self.grace = spec.termination.grace if grace is None else grace
        self.allocator = Allocator(spec.service_cidr)
        self._kubelet_nodes = nodes_with_kubelet or (lambda: set(spec.node_names()))
        self._events: queue.Queue[tuple[str, str, Obj] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._idle = threading.Event()

    # The admission hook is installed before anything is created, so even
    # default/kubernetes goes through it and its address is held.
    def install_admission(self) -> None:
        self.store.add_admission("Service", self.allocator.admit)

    def start(self) -> None:
        self._unsubscribe = self.store.subscribe(self._on_event)
        self._thread = threading.Thread(target=self._run, name="lab-controllers", daemon=True)
        self._thread.start()
        # Objects that existed before we subscribed (an API restart keeps the store).
        for kind in ("Deployment", "Service"):
            items, _ = self.store.list(kind)
            for obj in items:
                self._events.put(("ADDED", kind, obj))

    def stop(self) -> None:
        if self._unsubscribe:
            self._unsubscribe()
            self._unsubscribe = None
        if self._thread:
            self._events.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """True once every queued event has been handled (tests and the lab's startup)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._events.empty() and self._idle.is_set():
                return True
            time.sleep(0.02)
        return False

    def _on_event(self, event_type: str, kind: str, obj: Obj) -> None:
        if kind in ("Pod", "Service", "Deployment", "EndpointSlice"):
            self._idle.clear()
            self._events.put((event_type, kind, obj))

    def _run(self) -> None:
        while True:
            self._idle.set()
            item = self._events.get()
            self._idle.clear()
            batch = [item]
            # Coalesce a burst: one reconcile per object, however many events it had.
            while True:
                try:
                    batch.append(self._events.get_nowait())
                except queue.Empty:
                    break
            if any(b is None for b in batch):
                return
            services: set[tuple[str, str]] = set()
            namespaces: set[str] = set()
            deployments: set[tuple[str, str]] = set()
            for event_type, kind, obj in batch:  # type: ignore[misc]
                m = meta(obj)
                ns, name = m.get("namespace") or "default", m.get("name", "")
                if kind == "Service":
                    services.add((ns, name))
                    if event_type == "DELETED":
                        self.allocator.release(f"{ns}/{name}")
                elif kind == "Pod":
                    namespaces.add(ns)
                    for ref in m.get("ownerReferences") or []:
                        if ref.get("kind") == "Deployment":
                            deployments.add((ns, ref.get("name", "")))
                elif kind == "Deployment":
                    deployments.add((ns, name))
                elif kind == "EndpointSlice" and event_type == "DELETED":
                    svc = (m.get("labels") or {}).get(SERVICE_NAME_LABEL)
                    if svc:
                        services.add((ns, svc))
            for ns, name in sorted(deployments):
                self._guard("Deployment", ns, name, self.reconcile_deployment)
            for ns in sorted(namespaces):
                items, _ = self.store.list("Service", ns)
                services.update((ns, meta(s)["name"]) for s in items)
            for ns, name in sorted(services):
                self._guard("Service", ns, name, self.reconcile_endpointslices)

    def _guard(self, kind: str, ns: str, name: str, fn: Callable[[str, str], None]) -> None:
        try:
            fn(ns, name)
        except Exception as exc:  # one bad object must not stop the controllers
            self.log(f"event=reconcile_failed kind={kind} object={ns}/{name} "
                     f"error={type(exc).__name__}: {exc}")

    def reconcile_deployment(self, ns: str, name: str) -> None:
        deploy = self.store.get("Deployment", ns, name)
        pods, _ = self.store.list("Pod", ns)
        if deploy is None:
            # Garbage collection: the Deployment is gone, so are its pods.
            for p in pods:
                for ref in meta(p).get("ownerReferences") or []:
                    if ref.get("kind") == "Deployment" and ref.get("name") == name:
                        self.delete_pod(ns, meta(p)["name"])
            return
        try:
            create, delete = plan_deployment(deploy, pods, self.spec.node_names())
        except ValueError as exc:
            self.log(f"event=deployment_invalid object={ns}/{name} error={exc}")
            return
        for pod in create:
            self.store.create(pod)
            self.log(f"event=pod_created object={ns}/{meta(pod)['name']} "
                     f"node={pod['spec']['nodeName']} deployment={name}")
        for pod_name in delete:
            self.delete_pod(ns, pod_name)
        owned = [p for p in pods if owned_by(p, deploy) and not is_terminating(p)]
        owned = [p for p in owned if meta(p)["name"] not in delete]
        ready = sum(1 for p in owned if pod_ready(p))
        status = {"replicas": len(owned) + len(create), "readyReplicas": ready,
                  "availableReplicas": ready, "updatedReplicas": len(owned) + len(create),
                  "observedGeneration": meta(deploy).get("generation", 1)}
        if (deploy.get("status") or {}) != status:
            self.store.patch("Deployment", ns, name, {"status": status})

    def delete_pod(self, ns: str, name: str) -> None:
        """Graceful deletion: a pod on a node with a kubelet is marked terminating and the
        kubelet ends it within its grace period (its terminationGracePeriodSeconds, else the
        lab's); any other pod goes at once."""
        pod = self.store.get("Pod", ns, name)
        if pod is None or is_terminating(pod):
            return
        node = (pod.get("spec") or {}).get("nodeName")
        grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds")
        if not isinstance(grace, int) or isinstance(grace, bool) or grace < 0:
            grace = self.grace
        if node in self._kubelet_nodes() and grace > 0:
            self.store.patch("Pod", ns, name, {"metadata": {
                "deletionTimestamp": now_rfc3339(),
                "deletionGracePeriodSeconds": max(1, round(grace))}})
            self.log(f"event=pod_terminating object={ns}/{name} node={node}")
        else:
            self.store.delete("Pod", ns, name)
            self.log(f"event=pod_deleted object={ns}/{name}")

    def reconcile_endpointslices(self, ns: str, name: str) -> None:
        svc = self.store.get("Service", ns, name)
        slices, _ = self.store.list("EndpointSlice", ns)
        have = {meta(s)["name"]: s for s in slices
                if (meta(s).get("labels") or {}).get(SERVICE_NAME_LABEL) == name
                and (meta(s).get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY}
        if svc is None:
            want: dict[str, Obj] = {}
        else:
            pods, _ = self.store.list("Pod", ns)
            built = build_endpointslices(svc, pods)
            want = {} if built is None else {meta(s)["name"]: s for s in built}
        for sname, s in want.items():
            old = have.get(sname)
            if old is None:
                self.store.create(s)
            elif slice_differs(s, old):
                s["metadata"]["resourceVersion"] = meta(old).get("resourceVersion")
                try:
                    self.store.update(s)
                except Exception as exc:
                    if getattr(exc, "reason", "") != "Conflict":
                        raise
                    # Someone wrote it meanwhile; the event that caused brings us back.
                    continue
            else:
                continue
            self.log(f"event=endpointslice_synced object={ns}/{sname} service={name} "
                     f"endpoints={len(s['endpoints'])}")
        for sname in set(have) - set(want):
            try:
                self.store.delete("EndpointSlice", ns, sname)
            except Exception as exc:
                if getattr(exc, "code", 0) != 404:
                    raise
