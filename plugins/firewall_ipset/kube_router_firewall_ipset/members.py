"""Which pods a set holds: selectors evaluated against the Pod and Namespace stores."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from kube_router.kube.records import Namespace
from kube_router.kube.records import Pod
from kube_router.kube.store import Store
from kube_router_firewall_ipset.render import NamedPorts
from kube_router_firewall_ipset.render import NamedPortSet
from kube_router_firewall_ipset.render import NetSet
from kube_router_firewall_ipset.render import PodSet
from kube_router_firewall_ipset.render import SetSpec
from kube_router_firewall_ipset.selectors import Selector

_NO_LABELS: Mapping[str, str] = {}
#: hash:net refuses a /0; two halves cover the same addresses.
_HALVES = {4: ("0.0.0.0/1", "128.0.0.0/1"), 6: ("::/1", "8000::/1")}


def eligible(pod: Pod) -> bool:
    """A pod the firewall knows: it has an address, is not on the host's network, and runs."""
    return bool(pod.pod_ips) and not pod.host_network and pod.phase not in ("Succeeded",
                                                                              "Failed")


def ips(pod: Pod, family: int) -> list[str]:
    return [ip for ip in pod.pod_ips if (":" in ip) == (family == 6)]


def net_member(cidr: str) -> str:
    """As ipset saves a hash:net member: a host prefix is printed as the bare address."""
    net = ipaddress.ip_network(cidr, strict=False)
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def net_members(spec: NetSet) -> frozenset[str]:
    net = ipaddress.ip_network(spec.cidr)
    base = _HALVES[net.version] if net.prefixlen == 0 else (spec.cidr,)
    return frozenset([*(net_member(c) for c in base),
                      *(f"{net_member(e)} nomatch" for e in spec.excepts)])


class Cluster:
    """The pods and namespaces as the informers hold them, with a per-namespace index."""

    def __init__(self, pods: Store, namespaces: Store) -> None:
        self.pods = pods
        self.namespaces = namespaces
        pods.add_index("namespace", lambda rec: (rec.meta.namespace,))
        self._namespaces_of: dict[Selector, list[str]] = {}
        self._pods_of: dict[tuple[str, Selector], list[Pod]] = {}

    def begin(self) -> None:
        """Forget the selections remembered since the last call: the stores have moved.
        Within one sync, policies sharing a selector share its evaluation."""
        self._namespaces_of.clear()
        self._pods_of.clear()

    def namespaces_of(self, sel: Selector) -> list[str]:
        found = self._namespaces_of.get(sel)
        if found is None:
            found = self._namespaces_of[sel] = [
                n.meta.name for n in self.namespaces if sel.matches(n.meta.labels)]
        return found

    def pods_of(self, namespace: str, sel: Selector) -> list[Pod]:
        found = self._pods_of.get((namespace, sel))
        if found is None:
            found = self._pods_of[(namespace, sel)] = [
                p for p in self.pods_in(namespace) if eligible(p) and sel.matches(p.meta.labels)]
        return found

    def ns_labels(self, namespace: str) -> Mapping[str, str]:
        ns = self.namespaces.get(namespace)
        return ns.meta.labels if isinstance(ns, Namespace) else _NO_LABELS

    def pods_in(self, namespace: str) -> list[Pod]:
        return self.pods.by_index("namespace", namespace)  # type: ignore[return-value]

    def in_podset(self, spec: PodSet, pod: Pod) -> bool:
        ns = pod.meta.namespace
        for peer in spec.peers:
            if peer.namespaces is None:
                if ns != spec.namespace:
                    continue
            elif not peer.namespaces.matches(self.ns_labels(ns)):
                continue
            if peer.pods.matches(pod.meta.labels):
                return True
        return False

    def podset_pods(self, spec: PodSet) -> list[Pod]:
        if len(spec.peers) == 1:
            peer = spec.peers[0]
            names = ([spec.namespace] if peer.namespaces is None
                     else self.namespaces_of(peer.namespaces))
            if len(names) == 1:
                return self.pods_of(names[0], peer.pods)
        found: dict[str, Pod] = {}
        for peer in spec.peers:
            names = ([spec.namespace] if peer.namespaces is None
                     else self.namespaces_of(peer.namespaces))
            for n in names:
                for p in self.pods_of(n, peer.pods):
                    found[p.meta.key] = p
        return list(found.values())

    def named_ports(self, population: PodSet) -> NamedPorts:
        out: NamedPorts = {}
        for pod in self.podset_pods(population):
            for cp in pod.ports:
                if cp.name:
                    out.setdefault((cp.name, cp.protocol), set()).add(cp.port)
        return out

    def holds(self, spec: SetSpec, pod: Pod) -> bool:
        """Whether the set of ``spec`` holds this pod's addresses."""
        if isinstance(spec, PodSet):
            return eligible(pod) and self.in_podset(spec, pod)
        if isinstance(spec, NamedPortSet):
            return (eligible(pod) and self.in_podset(spec.population, pod)
                    and has_port(pod, spec))
        return False

    def members(self, spec: SetSpec, family: int) -> frozenset[str]:
        if isinstance(spec, NetSet):
            return net_members(spec)
        if isinstance(spec, PodSet):
            return frozenset(ip for p in self.podset_pods(spec) for ip in ips(p, family))
        return frozenset(ip for p in self.podset_pods(spec.population) if has_port(p, spec)
                         for ip in ips(p, family))


def has_port(pod: Pod, spec: NamedPortSet) -> bool:
    return any(cp.name == spec.name and cp.protocol == spec.protocol and cp.port == spec.number
               for cp in pod.ports)
