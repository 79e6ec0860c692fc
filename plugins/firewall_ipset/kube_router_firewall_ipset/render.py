"""Chain contents as ``iptables-save`` prints them, so a re-read kernel compares equal.

A packet to or from a local pod is judged by that pod's chain (``KUBE-POD-FW-*``): the
ingress part (``-d pod``) and the egress part (``-s pod``) each clear the "allowed" mark,
let every policy chain selecting the pod set it (a union: any rule of any policy), and
reject what is still unmarked. A direction no policy governs is marked allowed at once.
A packet that passed sets the "passed" mark, which the tail accepts; one that touched no
pod chain but comes from or goes to this node's pod CIDR (a pod whose chain is not written
yet) is rejected there, so a new pod is never reachable unfiltered.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass

from kube_router_firewall_ipset import naming as nm
from kube_router_firewall_ipset.model import BlockPeer
from kube_router_firewall_ipset.model import PodPeer
from kube_router_firewall_ipset.model import Policy
from kube_router_firewall_ipset.model import Port
from kube_router_firewall_ipset.model import Rule
from kube_router_firewall_ipset.selectors import EVERYTHING
from kube_router_firewall_ipset.selectors import Selector

ALLOW = f"-j MARK --set-xmark {nm.MARK_ALLOWED}/{nm.MARK_ALLOWED}"
CLEAR = f"-j MARK --set-xmark 0x0/{nm.MARK_ALLOWED}"
IS_ALLOWED = f"-m mark --mark {nm.MARK_ALLOWED}/{nm.MARK_ALLOWED}"
NOT_ALLOWED = f"-m mark ! --mark {nm.MARK_ALLOWED}/{nm.MARK_ALLOWED}"
PASSED = f"-j MARK --set-xmark {nm.MARK_PASSED}/{nm.MARK_PASSED}"
IS_PASSED = f"-m mark --mark {nm.MARK_PASSED}/{nm.MARK_PASSED}"
ESTABLISHED = "-m conntrack --ctstate RELATED,ESTABLISHED"


def reject(family: int) -> str:
    return ("-j REJECT --reject-with icmp6-port-unreachable" if family == 6
            else "-j REJECT --reject-with icmp-port-unreachable")


def host(ip: str) -> str:
    return f"{ip}/128" if ":" in ip else f"{ip}/32"


# -- ipsets a policy uses ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PodSet:
    """The IPs of the pods any of ``peers`` selects, relative to ``namespace``."""

    namespace: str
    peers: tuple[PodPeer, ...]


def pod_set(namespace: str, peers: tuple[PodPeer, ...]) -> PodSet:
    """A PodSet; peers that all name their namespaces do not depend on the policy's, so
    policies of different namespaces with the same peers share one (and its members)."""
    if all(p.namespaces is not None for p in peers):
        namespace = ""
    return PodSet(namespace, peers)


@dataclass(frozen=True, slots=True)
class NetSet:
    """An ipBlock: the CIDR, its exceptions as ``nomatch`` entries (hash:net)."""

    cidr: str
    excepts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NamedPortSet:
    """The pods of ``population`` whose container port ``name`` is ``protocol``/``number``."""

    population: PodSet
    name: str
    protocol: str
    number: int


SetSpec = PodSet | NetSet | NamedPortSet


def _sel_text(sel: Selector | None) -> str:
    if sel is None:
        return "~"
    return ";".join(f"{r.key} {r.operator} {','.join(sorted(r.values))}"
                    for r in sel.requirements)


def spec_text(spec: SetSpec) -> str:
    """What a set holds, spelled out: its name is a hash of this, so policies whose peers
    select the same pods share one set (and one copy of its members)."""
    if isinstance(spec, NetSet):
        return f"net {spec.cidr} except {','.join(spec.excepts)}"
    if isinstance(spec, NamedPortSet):
        return (f"named {spec.name} {spec.protocol} {spec.number} of "
                f"{spec_text(spec.population)}")
    return f"pods {spec.namespace} " + " | ".join(
        f"ns({_sel_text(p.namespaces)}) pods({_sel_text(p.pods)})" for p in spec.peers)


def spec_set_name(prefix: str, family: int, spec: SetSpec) -> str:
    return nm.set_name(prefix, family, spec_text(spec))


def settype(spec: SetSpec) -> str:
    return "hash:net" if isinstance(spec, NetSet) else "hash:ip"


#: Named ports of a population: (name, protocol) -> the numbers its pods give the name.
NamedPorts = dict[tuple[str, str], set[int]]


@dataclass(slots=True)
class PolicyRender:
    """One policy in one family: its chains and the sets they match on."""

    chains: dict[str, tuple[str, ...]]
    sets: dict[str, SetSpec]
    #: The populations its named ports resolve against (re-rendered when their pods change).
    named: tuple[PodSet, ...]


def target_set(policy: Policy) -> PodSet:
    return PodSet(policy.namespace, (PodPeer(None, policy.pods),))


def named_population(policy: Policy, direction: str, rule: Rule) -> PodSet:
    """Ingress: a named port is the destination (target) pod's; egress: the peer's."""
    if direction == "ingress":
        return target_set(policy)
    pods = tuple(p for p in rule.peers if isinstance(p, PodPeer))
    if pods and len(pods) == len(rule.peers):
        return pod_set(policy.namespace, pods)
    return pod_set(policy.namespace, (PodPeer(EVERYTHING, EVERYTHING),))


PortMatch = tuple[str, str, str]  # (-p part, named-port set match, port match)


def _port_matches(port: Port, direction: str, policy: Policy, index: int, family: int,
                  rule: Rule, named: NamedPorts | None,
                  sets: dict[str, SetSpec]) -> list[PortMatch]:
    proto = port.protocol.lower()
    if port.port is None:
        return [(f"-p {proto}", "", "")]
    if isinstance(port.port, int):
        rng = f"{port.port}:{port.end_port}" if port.end_port else str(port.port)
        return [(f"-p {proto}", "", f"-m {proto} --dport {rng}")]
    out = []
    population = named_population(policy, direction, rule)
    for number in sorted((named or {}).get((port.port, port.protocol), ())):
        spec = NamedPortSet(population, port.port, port.protocol, number)
        name = spec_set_name(nm.DST_PREFIX, family, spec)
        sets[name] = spec
        out.append((f"-p {proto}", f"-m set --match-set {name} dst",
                    f"-m {proto} --dport {number}"))
    return out


def _peer_matches(rule: Rule, direction: str, policy: Policy, index: int, family: int,
                  sets: dict[str, SetSpec]) -> list[str] | None:
    """Matches for the rule's peers ([""] for everyone); None when no peer exists in
    this family (an ipBlock of the other family only): the rule then admits nothing."""
    if not rule.peers:
        return [""]
    prefix, side = (nm.SRC_PREFIX, "src") if direction == "ingress" else (nm.DST_PREFIX, "dst")
    out = []
    pods = tuple(p for p in rule.peers if isinstance(p, PodPeer))
    if pods:
        spec: SetSpec = pod_set(policy.namespace, pods)
        name = spec_set_name(prefix, family, spec)
        sets[name] = spec
        out.append(f"-m set --match-set {name} {side}")
    for peer in rule.peers:
        if isinstance(peer, BlockPeer) and peer.family == family:
            spec = NetSet(peer.cidr, peer.excepts)
            name = spec_set_name(prefix, family, spec)
            sets[name] = spec
            out.append(f"-m set --match-set {name} {side}")
    return out or None


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def render_policy(policy: Policy, family: int,
                  named: dict[PodSet, NamedPorts] | None = None) -> PolicyRender:
    """The policy's chains (one per direction it governs) and the sets they match on.

    ``named`` gives, per population, the numbers its pods give each named port; a named
    port becomes one rule per number, matching the pods that use that number.
    """
    chains: dict[str, tuple[str, ...]] = {}
    sets: dict[str, SetSpec] = {}
    populations: list[PodSet] = []
    for direction, rules in (("ingress", policy.ingress), ("egress", policy.egress)):
        if rules is None:
            continue
        lines: list[str] = []
        for i, rule in enumerate(rules):
            peers = _peer_matches(rule, direction, policy, i, family, sets)
            if peers is None:
                continue
            ports: list[PortMatch] = [("", "", "")]
            if rule.ports:
                ports = []
                for port in rule.ports:
                    table = None
                    if isinstance(port.port, str):
                        pop = named_population(policy, direction, rule)
                        populations.append(pop)
                        table = (named or {}).get(pop)
                    ports += _port_matches(port, direction, policy, i, family, rule, table,
                                           sets)
                if not ports:
                    continue  # only named ports no pod defines: nothing to admit
            # iptables-save prints -p first, then the matches in the order given
            lines += [_join(proto, peer, named_match, port_match, ALLOW)
                      for proto, named_match, port_match in ports for peer in peers]
            lines.append(f"{IS_ALLOWED} -j RETURN")
        chains[nm.policy_chain(policy.namespace, policy.name, direction)] = tuple(lines)
    return PolicyRender(chains, sets, tuple(dict.fromkeys(populations)))


# -- per-pod and top-level chains ----------------------------------------------------------


def pod_chain(ip: str, family: int, ingress: Sequence[str] | None,
              egress: Sequence[str] | None) -> tuple[str, ...]:
    """A local pod's chain; ``ingress``/``egress`` are the policy chains selecting it in
    that direction, None when no policy governs the direction (it is open)."""
    h = host(ip)
    lines = [f"{ESTABLISHED} -j ACCEPT",
             f"-d {h} -m addrtype --src-type LOCAL -j ACCEPT",  # the node reaches its pods
             CLEAR]
    if ingress is None:
        lines.append(f"-d {h} {ALLOW}")
    else:
        lines += [f"-d {h} -j {c}" for c in ingress]
    lines += [f"-d {h} {NOT_ALLOWED} {reject(family)}", CLEAR]
    if egress is None:
        lines.append(f"-s {h} {ALLOW}")
    else:
        lines += [f"-s {h} -j {c}" for c in egress]
    lines += [f"-s {h} {NOT_ALLOWED} {reject(family)}", PASSED]
    return tuple(lines)


def top_chains(local: Iterable[tuple[str, str]], family: int, *, service_cidrs: Sequence[str],
               nodeport_range: tuple[int, int],
               pod_cidrs: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """KUBE-ROUTER-INPUT/FORWARD/OUTPUT and the tail, for the local pods' (ip, chain)."""
    jumps: list[str] = []
    for ip, chain in sorted(local):
        h = host(ip)
        jumps += [f"-d {h} -j {chain}", f"-s {h} -j {chain}"]
    egress_only = [j for j in jumps if j.startswith("-s ")]
    lo, hi = nodeport_range
    head = [f"-d {c} -j RETURN" for c in service_cidrs]
    head += [f"-p {p} -m addrtype --dst-type LOCAL -m multiport --dports {lo}:{hi} -j RETURN"
             for p in ("tcp", "udp", "sctp")]
    # Replies and the node's own traffic first; then any address of the pod CIDR that is
    # not a local pod with a chain (one not seen yet) is refused, whatever the other end.
    tail = ["-m addrtype --src-type LOCAL -j RETURN", f"{ESTABLISHED} -j RETURN"]
    known = nm.local_pods(family)
    for c in pod_cidrs:
        tail += [f"-s {c} -m set ! --match-set {known} src {reject(family)}",
                 f"-d {c} -m set ! --match-set {known} dst {reject(family)}"]
    tail.append(f"{IS_PASSED} -j ACCEPT")
    to_tail = f"-j {nm.TAIL}"
    return {
        nm.INPUT: (*head, *egress_only, to_tail),  # pods to the node: their egress
        nm.FORWARD: (*jumps, to_tail),
        nm.OUTPUT: (*jumps, to_tail),
        nm.TAIL: tuple(tail),
    }


def builtin_jump(builtin: str) -> str:
    """The rule at the top of INPUT/FORWARD/OUTPUT sending everything to our chain."""
    return f'-m comment --comment "{nm.COMMENT}" -j {nm.TOP_CHAINS[builtin]}'
