"""The lab's wires: an underlay bridge in the lab's own namespace carrying the API server's
address, one namespace per node and per external peer, each joined to the bridge by a veth.

With several underlay subnets there is one bridge per subnet, the lab's namespace holds the
.1 of each and forwards between them (the router of a cluster spread over subnets), and
every node and peer routes the other subnets through its own subnet's .1.

Everything is made with ``ip -batch`` (one process for the lab's namespace, one per node),
because in the guest every process start costs tens of milliseconds.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass

from kube_router_lab import netns as ns
from kube_router_lab.spec import ClusterSpec

BRIDGE = "lab-underlay"


def bridge_name(underlay: int) -> str:
    """The first underlay keeps the historical name; the others are numbered."""
    return BRIDGE if underlay == 0 else f"{BRIDGE}{underlay}"


class TopologyError(RuntimeError):
    pass


@dataclass(frozen=True)
class Host:
    """One namespace on the underlay: a node or an external peer."""

    name: str  # what scenarios call it: node-0, tor
    netns: str
    ip: str
    veth: str  # its end in the lab's namespace
    underlay: int = 0  # index into ClusterSpec.all_underlays()


def _batch(netns: str | None, lines: Sequence[str], *, force: bool = False) -> None:
    argv = ["ip"] + (["-force"] if force else []) + ["-batch", "-"]
    rc, _out, err = ns.run_in(netns, argv, input=("\n".join(lines) + "\n").encode())
    if rc != 0 and not force:
        raise TopologyError(f"ip -batch in netns={netns or 'lab'} failed rc={rc}: {err.strip()}")


class Topology:
    def __init__(self, spec: ClusterSpec, *, log: Callable[[str], None] = print) -> None:
        self.spec = spec
        self.log = log
        self.nodes = [Host(spec.node_name(i), spec.node_name(i), spec.node_ip(i),
                           f"lab-n{i}", spec.node_underlay(i)) for i in range(spec.nodes)]
        self.peers = [Host(p.name, f"peer-{p.name}", spec.peer_ip(i), f"lab-p{i}")
                      for i, p in enumerate(spec.peers)]

    @property
    def hosts(self) -> list[Host]:
        return self.nodes + self.peers

    def up(self, *, pod_routes: bool = True) -> None:
        """Make the wires; ``pod_routes`` adds static routes to every node's pod CIDR
        (the lab's own pod network, for when no router plugin does it)."""
        self.down(quiet=True)  # leftovers of a run that crashed would make every add fail
        underlays = self.spec.all_underlays()
        root = []
        for u in range(len(underlays)):
            root += [f"link add {bridge_name(u)} type bridge",
                     f"addr add {self.spec.gateway_ip(u)}/{self.spec.prefixlen(u)} "
                     f"dev {bridge_name(u)}",
                     f"link set {bridge_name(u)} up"]
        for h in self.hosts:
            root += [f"netns add {h.netns}",
                     f"link add {h.veth} type veth peer name eth0 netns {h.netns}",
                     f"link set {h.veth} master {bridge_name(h.underlay)} up"]
        if pod_routes and len(underlays) > 1:
            # Nodes send other subnets' pod traffic to the lab, which hands it on.
            root += [f"route replace {self.spec.pod_cidr(j)} via {h.ip}"
                     for j, h in enumerate(self.nodes)]
        _batch(None, root)
        if len(underlays) > 1:
            # The lab's namespace is the router between the underlays (a fresh namespace of
            # its own or the guest's: never the machine's).
            ns.write_sysctl(None, "net.ipv4.ip_forward", "1")
        for i, h in enumerate(self.hosts):
            lines = ["link set lo up",
                     f"addr add {h.ip}/{self.spec.prefixlen(h.underlay)} dev eth0",
                     "link set eth0 up"]
            lines += self.underlay_routes(h)
            if i < len(self.nodes) and pod_routes:
                lines += self.pod_routes(i)
            _batch(h.netns, lines)
        for h in self.nodes:
            # Nodes route pod traffic between eth0 and the pod bridge.
            ns.write_sysctl(h.netns, "net.ipv4.ip_forward", "1")
        self.log(f"event=topology_up bridges={','.join(map(bridge_name, range(len(underlays))))} "
                 f"underlays={','.join(underlays)} nodes={len(self.nodes)} "
                 f"peers={len(self.peers)}")

    def underlay_routes(self, h: Host) -> list[str]:
        """Routes from ``h`` to the other underlay subnets, through the lab's namespace."""
        gw = self.spec.gateway_ip(h.underlay)
        return [f"route replace {net} via {gw} dev eth0"
                for u, net in enumerate(self.spec.all_underlays()) if u != h.underlay]

    def pod_routes(self, i: int) -> list[str]:
        """The routes node i needs to reach the other nodes' pods without a router."""
        me = self.nodes[i]
        gw = self.spec.gateway_ip(me.underlay)
        return [f"route replace {self.spec.pod_cidr(j)} via "
                f"{h.ip if h.underlay == me.underlay else gw} dev eth0"
                for j, h in enumerate(self.nodes) if j != i]

    def down(self, *, quiet: bool = False, extra_netns: Sequence[str] = ()) -> None:
        """Delete the lab's namespaces (and ``extra_netns``, e.g. pods') and the bridge."""
        # Deleting a namespace deletes its veth end, and with it the peer in ours.
        names = [*extra_netns, *(h.netns for h in self.hosts)]
        lines = [f"netns delete {n}" for n in names if ns.exists(n)]
        lines += [f"link delete {bridge_name(u)}"
                  for u in range(len(self.spec.all_underlays()))]
        _batch(None, lines, force=True)
        if not quiet:
            self.log(f"event=topology_down bridges="
                     f"{','.join(map(bridge_name, range(len(self.spec.all_underlays()))))}")

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(f"no node or peer named {name!r} (known: "
                       f"{', '.join(h.name for h in self.hosts)})")

    def node_of_ip(self, ip: str) -> Host | None:
        addr = ipaddress.ip_address(ip)
        for h in self.nodes:
            if ipaddress.ip_address(h.ip) == addr:
                return h
        return None
