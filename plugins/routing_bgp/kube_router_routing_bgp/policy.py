"""gobgpd's export and import policies, as the original sets them.

Export (default reject): this node's pod CIDRs to the other nodes, and to external peers
when ``--advertise-pod-cidr``; service addresses to external peers only. Import (default
accept): no service addresses and no default route from any peer.

The inputs change (a node joins, a Service gets an address): a new generation of defined
sets and policies is built beside the old one, swapped in with one assignment each way,
and the old generation deleted, so no route is ever evaluated against a half-built policy.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kube_router_routing_bgp.gobgpd import Gobgpd

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PolicyInputs:
    pod_cidrs: frozenset[str]
    service_vips: frozenset[str]  # host prefixes, "10.1.0.10/32"
    node_peers: frozenset[str]
    external_peers: frozenset[str]
    advertise_pod_cidr: bool = True
    override_nexthop: bool = False


def _host_prefix(address: str) -> str:
    ip = ipaddress.ip_address(address)
    return f"{ip}/{ip.max_prefixlen}"


def _v4(prefixes: Iterable[str]) -> list[str]:
    return sorted(p for p in prefixes if ipaddress.ip_network(p).version == 4)


class PolicyManager:
    def __init__(self, gobgpd: Gobgpd) -> None:
        self.gobgpd = gobgpd
        self.applied: PolicyInputs | None = None
        self.generation = 0

    def reset(self) -> None:
        """gobgpd restarted: it holds no policy."""
        self.applied = None

    async def apply(self, inputs: PolicyInputs) -> bool:
        """Bring gobgpd's policies in line; True when they changed."""
        if inputs == self.applied:
            return False
        pb = self.gobgpd.pb
        old_gen = self.generation if self.applied is not None else None
        self.generation += 1
        gen = self.generation
        names = {k: f"{k}{gen}" for k in ("podcidrdefinedset", "servicevipsdefinedset",
                                          "iBGPpeerset", "externalpeerset", "allpeerset",
                                          "defaultroutedefinedset")}
        pod = _v4(inputs.pod_cidrs)
        vips = _v4(inputs.service_vips)
        sets: list[Any] = []

        def prefix_set(name: str, prefixes: list[str]) -> None:
            if prefixes:
                sets.append(pb.DefinedSet(
                    defined_type=pb.PREFIX, name=name,
                    prefixes=[pb.Prefix(ip_prefix=p,
                                        mask_length_min=ipaddress.ip_network(p).prefixlen,
                                        mask_length_max=ipaddress.ip_network(p).prefixlen)
                              for p in prefixes]))

        def neighbor_set(name: str, addresses: Iterable[str]) -> None:
            items = sorted(_host_prefix(a) for a in addresses)
            if items:
                sets.append(pb.DefinedSet(defined_type=pb.NEIGHBOR, name=name, list=items))

        prefix_set(names["podcidrdefinedset"], pod)
        prefix_set(names["servicevipsdefinedset"], vips)
        prefix_set(names["defaultroutedefinedset"], ["0.0.0.0/0"])
        neighbor_set(names["iBGPpeerset"], inputs.node_peers)
        neighbor_set(names["externalpeerset"], inputs.external_peers)
        # gobgpd runs the global import policy on its own paths too: the import rules
        # must name the peers, or they would reject the VIPs this node advertises.
        neighbor_set(names["allpeerset"], inputs.node_peers | inputs.external_peers)
        present = {s.name for s in sets}

        def stmt(name: str, prefixes: str, neighbors: str | None, action: int,
                 nexthop_self: bool = False) -> Any:
            if prefixes not in present or (neighbors is not None and neighbors not in present):
                return None  # an empty set would match nothing anyway
            cond = pb.Conditions(prefix_set=pb.MatchSet(type=pb.MatchSet.ANY, name=prefixes))
            if neighbors is not None:
                cond.neighbor_set.CopyFrom(pb.MatchSet(type=pb.MatchSet.ANY, name=neighbors))
            actions = pb.Actions(route_action=action)
            if nexthop_self:
                actions.nexthop.CopyFrom(pb.NexthopAction(self=True))
            return pb.Statement(name=f"{name}{gen}", conditions=cond, actions=actions)

        export = [s for s in (
            stmt("podcidr-to-nodes", names["podcidrdefinedset"], names["iBGPpeerset"],
                 pb.ACCEPT),
            stmt("podcidr-to-external", names["podcidrdefinedset"], names["externalpeerset"],
                 pb.ACCEPT, inputs.override_nexthop) if inputs.advertise_pod_cidr else None,
            stmt("vips-to-external", names["servicevipsdefinedset"], names["externalpeerset"],
                 pb.ACCEPT, inputs.override_nexthop),
        ) if s is not None]
        imports = [s for s in (
            stmt("reject-vips", names["servicevipsdefinedset"], names["allpeerset"],
                 pb.REJECT),
            stmt("reject-default", names["defaultroutedefinedset"], names["allpeerset"],
                 pb.REJECT),
        ) if s is not None]
        export_policy = pb.Policy(name=f"kube_router_export{gen}", statements=export)
        import_policy = pb.Policy(name=f"kube_router_import{gen}", statements=imports)

        for s in sets:
            await self.gobgpd._call("AddDefinedSet", pb.AddDefinedSetRequest(defined_set=s))
        for p in (export_policy, import_policy):
            await self.gobgpd._call("AddPolicy", pb.AddPolicyRequest(policy=p))
        await self.gobgpd._call("SetPolicyAssignment", pb.SetPolicyAssignmentRequest(
            assignment=pb.PolicyAssignment(name="global", direction=pb.EXPORT,
                                           policies=[pb.Policy(name=export_policy.name)],
                                           default_action=pb.REJECT)))
        await self.gobgpd._call("SetPolicyAssignment", pb.SetPolicyAssignmentRequest(
            assignment=pb.PolicyAssignment(name="global", direction=pb.IMPORT,
                                           policies=[pb.Policy(name=import_policy.name)],
                                           default_action=pb.ACCEPT)))
        if old_gen is not None:
            await self._delete_generation(old_gen)
        self.applied = inputs
        log.info("bgp policies applied generation=%d pod_cidrs=%d vips=%d node_peers=%d "
                 "external_peers=%d", gen, len(pod), len(vips), len(inputs.node_peers),
                 len(inputs.external_peers))
        return True

    async def _delete_generation(self, gen: int) -> None:
        pb = self.gobgpd.pb
        from kube_router_routing_bgp.gobgpd import GobgpError

        for name in (f"kube_router_export{gen}", f"kube_router_import{gen}"):
            try:
                await self.gobgpd._call("DeletePolicy", pb.DeletePolicyRequest(
                    policy=pb.Policy(name=name), all=True))
            except GobgpError as exc:
                log.debug("old policy not deleted name=%s error=%s", name, exc)
        for kind, base in ((pb.PREFIX, "podcidrdefinedset"), (pb.PREFIX, "servicevipsdefinedset"),
                           (pb.PREFIX, "defaultroutedefinedset"), (pb.NEIGHBOR, "iBGPpeerset"),
                           (pb.NEIGHBOR, "externalpeerset"), (pb.NEIGHBOR, "allpeerset")):
            try:
                await self.gobgpd._call("DeleteDefinedSet", pb.DeleteDefinedSetRequest(
                    defined_set=pb.DefinedSet(defined_type=kind, name=f"{base}{gen}"),
                    all=True))
            except GobgpError as exc:
                log.debug("old defined set not deleted name=%s%d error=%s", base, gen, exc)

    async def soft_reset(self) -> None:
        """Re-evaluate what was sent and received under the new policies."""
        pb = self.gobgpd.pb
        await self.gobgpd._call("ResetPeer", pb.ResetPeerRequest(
            address="all", soft=True, direction=pb.ResetPeerRequest.BOTH))
