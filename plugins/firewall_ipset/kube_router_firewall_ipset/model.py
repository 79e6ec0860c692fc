"""A NetworkPolicy's spec read once into typed, comparable parts.

Defaulting follows the API server's: without ``policyTypes`` a policy is an Ingress policy,
and an Egress one too when it has egress rules. A peer with a namespaceSelector (even an
empty one) reaches into the namespaces it selects; a peer with only a podSelector stays in
the policy's namespace. An empty ``from``/``to`` means everyone; empty ``ports`` every port.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kube_router.kube.records import NetworkPolicy
from kube_router_firewall_ipset import selectors
from kube_router_firewall_ipset.selectors import Selector

PROTOCOLS = ("TCP", "UDP", "SCTP")


@dataclass(frozen=True, slots=True)
class PodPeer:
    """Pods matching ``pods`` in the namespaces matching ``namespaces`` (None: the
    policy's own namespace). Both must hold: one peer's selectors are ANDed."""

    namespaces: Selector | None
    pods: Selector


@dataclass(frozen=True, slots=True)
class BlockPeer:
    cidr: str  # normalised network, e.g. "10.0.0.0/8"
    excepts: tuple[str, ...]
    family: int  # 4 or 6


Peer = PodPeer | BlockPeer


@dataclass(frozen=True, slots=True)
class Port:
    protocol: str  # TCP, UDP or SCTP
    port: int | str | None  # a number, a container port's name, or None for all ports
    end_port: int | None = None  # last port of a range starting at ``port``


@dataclass(frozen=True, slots=True)
class Rule:
    peers: tuple[Peer, ...]  # empty: from/to everyone
    ports: tuple[Port, ...]  # empty: every port and protocol


@dataclass(frozen=True, slots=True)
class Policy:
    namespace: str
    name: str
    pods: Selector  # the pods of ``namespace`` the policy applies to
    ingress: tuple[Rule, ...] | None  # None: the policy does not govern ingress
    egress: tuple[Rule, ...] | None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def _net(value: Any, where: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        raise ValueError(f"{where} {value!r} is not a CIDR") from None


def _peer(obj: Any, where: str) -> Peer:
    if not isinstance(obj, Mapping):
        raise ValueError(f"{where} is not an object")
    block = obj.get("ipBlock")
    has_sel = "podSelector" in obj or "namespaceSelector" in obj
    if block is not None:
        if not isinstance(block, Mapping):
            raise ValueError(f"{where}.ipBlock is not an object")
        if has_sel:
            raise ValueError(f"{where} has both ipBlock and a selector")
        net = _net(block.get("cidr"), f"{where}.ipBlock.cidr")
        excepts = []
        for i, e in enumerate(block.get("except") or ()):
            ex = _net(e, f"{where}.ipBlock.except[{i}]")
            if ex.version != net.version or not ex.subnet_of(net):  # type: ignore[arg-type]
                raise ValueError(f"{where}.ipBlock.except[{i}] {e} is not inside {net}")
            excepts.append(str(ex))
        return BlockPeer(str(net), tuple(sorted(set(excepts))), net.version)
    if not has_sel:
        raise ValueError(f"{where} names no podSelector, namespaceSelector or ipBlock")
    ns = obj.get("namespaceSelector")
    return PodPeer(
        selectors.parse(ns, f"{where}.namespaceSelector") if "namespaceSelector" in obj
        else None,
        selectors.parse(obj.get("podSelector"), f"{where}.podSelector"),
    )


def _number(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{where} {value!r} is not a port number")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{where} {value!r} is not a port number") from None


def _port(obj: Any, where: str) -> Port:
    if not isinstance(obj, Mapping):
        raise ValueError(f"{where} is not an object")
    proto = str(obj.get("protocol") or "TCP").upper()
    if proto not in PROTOCOLS:
        raise ValueError(f"{where}.protocol {proto!r} is not TCP, UDP or SCTP")
    port = obj.get("port")
    end = obj.get("endPort")
    if port is None:
        if end is not None:
            raise ValueError(f"{where}.endPort needs a port")
        return Port(proto, None)
    if isinstance(port, str) and not port.isdigit():
        if end is not None:
            raise ValueError(f"{where}.endPort needs a numeric port")
        return Port(proto, port)
    number = _number(port, f"{where}.port")
    if not 1 <= number <= 65535:
        raise ValueError(f"{where}.port {port} is out of range")
    if end is not None:
        end = _number(end, f"{where}.endPort")
        if not number <= end <= 65535:
            raise ValueError(f"{where}.endPort {end} is below port {number} or out of range")
        if end == number:
            end = None
    return Port(proto, number, end)


def _rules(objs: Any, field: str, peer_field: str) -> tuple[Rule, ...]:
    rules = []
    for i, r in enumerate(objs or ()):
        where = f"spec.{field}[{i}]"
        if not isinstance(r, Mapping):
            raise ValueError(f"{where} is not an object")
        peers = tuple(_peer(p, f"{where}.{peer_field}[{j}]")
                      for j, p in enumerate(r.get(peer_field) or ()))
        ports = tuple(_port(p, f"{where}.ports[{j}]") for j, p in enumerate(r.get("ports") or ()))
        rules.append(Rule(peers, ports))
    return tuple(rules)


def compile_policy(rec: NetworkPolicy) -> Policy:
    """The typed policy; ValueError naming the field on anything it cannot honour."""
    spec = rec.spec
    types = spec.get("policyTypes")
    if types is None:
        types = ["Ingress"] + (["Egress"] if spec.get("egress") else [])
    bad = [t for t in types if t not in ("Ingress", "Egress")]
    if bad:
        raise ValueError(f"spec.policyTypes has {bad[0]!r}")
    ingress = _rules(spec.get("ingress"), "ingress", "from")
    egress = _rules(spec.get("egress"), "egress", "to")
    return Policy(
        namespace=rec.meta.namespace,
        name=rec.meta.name,
        pods=selectors.parse(spec.get("podSelector"), "spec.podSelector"),
        ingress=ingress if "Ingress" in types else None,
        egress=egress if "Egress" in types else None,
    )
