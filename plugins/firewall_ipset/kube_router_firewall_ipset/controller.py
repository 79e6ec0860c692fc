"""The firewall's controller: desired chains and sets from the stores, kept per part.

Keys are (kind, key) pairs. A full sync (start, ``--iptables-sync-period``, a namespace's
or this node's change) recomputes everything and re-reads the kernel when it is periodic.
A policy's change recompiles that policy alone and re-renders the chains of the local
pods in its namespace; a pod's change moves its addresses in and out of the sets whose
selectors match it (old labels or new), and re-renders its own chain when it is local.
Then the whole desired state is diffed against what the kernel holds, which writes only
what differs (identical parts are the same objects, so the diff is cheap).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable
from typing import TYPE_CHECKING
from typing import Any
from typing import cast

from kube_router.controller import Controller
from kube_router.kube.kinds import NAMESPACE
from kube_router.kube.kinds import NETWORKPOLICY
from kube_router.kube.kinds import NODE
from kube_router.kube.kinds import POD
from kube_router.kube.records import NetworkPolicy
from kube_router.kube.records import Node
from kube_router.kube.records import Pod
from kube_router.objwarn import ObjectWarnings
from kube_router_firewall_ipset import naming as nm
from kube_router_firewall_ipset import render
from kube_router_firewall_ipset import status
from kube_router_firewall_ipset.dataplane import Dataplane
from kube_router_firewall_ipset.dataplane import Written
from kube_router_firewall_ipset.dataplane import keep_equal
from kube_router_firewall_ipset.members import Cluster
from kube_router_firewall_ipset.members import eligible
from kube_router_firewall_ipset.members import ips
from kube_router_firewall_ipset.metrics import FirewallMetrics
from kube_router_firewall_ipset.model import Policy
from kube_router_firewall_ipset.model import compile_policy
from kube_router_firewall_ipset.render import PolicyRender
from kube_router_firewall_ipset.render import SetSpec
from kube_router_firewall_ipset.settings import Settings

if TYPE_CHECKING:
    from kube_router.agent import Agent
    from kube_router.kube.events import Event

log = logging.getLogger(__name__)


class FirewallController(Controller):
    name = "firewall"
    kinds = (POD, NAMESPACE, NETWORKPOLICY, NODE)

    def __init__(self, agent: Agent, settings: Settings) -> None:
        super().__init__(agent)
        self.settings = settings
        self.resync_period = settings.sync_period
        self.cluster = Cluster(agent.store(POD), agent.store(NAMESPACE))
        self.planes = {f: Dataplane(f) for f in settings.families}
        self.policies: dict[str, Policy] = {}
        self.by_namespace: dict[str, dict[str, Policy]] = {}
        # a policy it cannot honour: one line per problem, forgotten when the policy goes
        self.warnings = ObjectWarnings(log, kind=NETWORKPOLICY)
        self.renders: dict[tuple[int, str], PolicyRender] = {}
        # desired state per family
        self.specs: dict[int, dict[str, SetSpec]] = {f: {} for f in settings.families}
        self.members: dict[int, dict[str, tuple[str, frozenset[str]]]] = {
            f: {} for f in settings.families}
        self.pod_chains: dict[int, dict[str, tuple[str, ...]]] = {
            f: {} for f in settings.families}
        self.local: dict[str, Pod] = {}  # local pods with a chain
        self.seen: dict[str, Pod] = {}  # the pod records the sets were last computed from
        self.last: dict[int, Written] = {}
        self.full_syncs = 0
        self._selection_changed = True
        # sets changed since the last apply, per family (None: any may have)
        self.touched: dict[int, set[str] | None] = {f: None for f in settings.families}
        self._local_version = 0
        self._top: dict[int, tuple[object, dict[str, tuple[str, ...]]]] = {}
        self._named: set[str] = set()  # keys of policies with named ports
        self.metrics: FirewallMetrics | None = None

    # -- events ---------------------------------------------------------------------------

    def keys_for(self, event: Event) -> tuple[Hashable, ...]:
        if event.kind == NODE and event.key != self.agent.node_name:
            return ()
        if event.old is not None and event.old == event.new:
            return ()  # nothing a record holds changed (records leave out the rest)
        return ((event.kind, event.key),)

    # -- compiling ------------------------------------------------------------------------

    def _compile(self, key: str, old: tuple[dict[str, Policy],
                                          dict[tuple[int, str], PolicyRender]] | None = None,
                 ) -> None:
        """``old``: the policies and renders of before a full sync, kept where equal."""
        self._selection_changed = True
        rec = self.agent.store(NETWORKPOLICY).get(key)
        for f in self.settings.families:
            self.renders.pop((f, key), None)
        self.policies.pop(key, None)
        self._named.discard(key)
        self.by_namespace.get(key.partition("/")[0], {}).pop(key, None)
        if not isinstance(rec, NetworkPolicy):
            self.warnings.forget(key)
            return
        try:
            policy = compile_policy(rec)
        except Exception as exc:  # one bad policy must not stop the others
            reason = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            self.warnings.warn(key, reason, "networkpolicy skipped policy=%s reason=%s", key,
                               reason)
            return
        self.warnings.forget(key)
        if old is not None and (prev := old[0].get(key)) is not None and prev == policy:
            policy = prev
        self.policies[key] = policy
        if _has_named(policy):
            self._named.add(key)
        self.by_namespace.setdefault(policy.namespace, {})[key] = policy
        for f in self.settings.families:
            self._render(policy, f, old[1].get((f, key)) if old is not None else None)

    def _render(self, policy: Policy, family: int,
                prev: PolicyRender | None = None) -> PolicyRender:
        named = None
        if _has_named(policy):
            pops = render.render_policy(policy, family).named
            named = {p: self.cluster.named_ports(p) for p in pops}
        r = render.render_policy(policy, family, named)
        if prev is not None:
            if prev.chains == r.chains and prev.sets == r.sets and prev.named == r.named:
                r = prev
            else:  # unchanged chains keep their rules
                r.chains = {c: have if (have := prev.chains.get(c)) == rules else rules
                            for c, rules in r.chains.items()}
                if prev.sets == r.sets:
                    r.sets = prev.sets
        self.renders[(family, policy.key)] = r
        return r

    def _selection_rows(self) -> dict[str, dict[str, Any]]:
        """Per local pod: its addresses, its chain and the policies selecting it."""
        rows = {}
        for key, pod in sorted(self.local.items()):
            ingress, egress = self._selecting(pod)
            rows[key] = {"ips": list(pod.pod_ips),
                         "chain": nm.pod_chain(pod.meta.namespace, pod.meta.name),
                         "ingress": sorted(p.key for p in ingress),
                         "egress": sorted(p.key for p in egress)}
        return rows

    def _selecting(self, pod: Pod) -> tuple[list[Policy], list[Policy]]:
        ingress, egress = [], []
        for p in self.by_namespace.get(pod.meta.namespace, {}).values():
            if p.pods.matches(pod.meta.labels):
                if p.ingress is not None:
                    ingress.append(p)
                if p.egress is not None:
                    egress.append(p)
        return ingress, egress

    def _pod_chain(self, pod: Pod, family: int) -> tuple[str, ...] | None:
        addrs = ips(pod, family)
        if not addrs:
            return None
        ingress, egress = self._selecting(pod)
        inc = [nm.policy_chain(p.namespace, p.name, "ingress") for p in sorted(
            ingress, key=lambda p: p.key)] if ingress else None
        egc = [nm.policy_chain(p.namespace, p.name, "egress") for p in sorted(
            egress, key=lambda p: p.key)] if egress else None
        return render.pod_chain(addrs[0], family, inc, egc)

    def _is_local(self, pod: object) -> bool:
        return (isinstance(pod, Pod) and pod.node_name == self.agent.node_name
                and eligible(pod))

    def _refresh_local(self, key: str) -> None:
        self._selection_changed = True
        self._local_version += 1
        pod = self.agent.store(POD).get(key)
        if self._is_local(pod):
            assert isinstance(pod, Pod)
            self.local[key] = pod
            for f in self.settings.families:
                chain = self._pod_chain(pod, f)
                name = nm.pod_chain(pod.meta.namespace, pod.meta.name)
                if chain is None:
                    self.pod_chains[f].pop(name, None)
                elif self.pod_chains[f].get(name) != chain:
                    self.pod_chains[f][name] = chain
        else:
            old = self.local.pop(key, None)
            if old is not None:
                for f in self.settings.families:
                    self.pod_chains[f].pop(nm.pod_chain(old.meta.namespace, old.meta.name),
                                           None)

    def _rebuild_specs(self) -> None:
        for f in self.settings.families:
            specs: dict[str, SetSpec] = {}
            for (fam, _), r in self.renders.items():
                if fam == f:
                    specs.update(r.sets)
            keep_equal(self.specs[f], specs)

    def _recompute_sets(self, family: int, names: list[str] | None = None) -> None:
        specs = self.specs[family]
        members = self.members[family]
        cache: dict[SetSpec, frozenset[str]] = {}
        for name in specs if names is None else names:
            spec = specs[name]
            stype = render.settype(spec)
            if spec not in cache:
                cache[spec] = self.cluster.members(spec, family)
            have = members.get(name)
            if have is not None and have[0] == stype and have[1] == cache[spec]:
                cache[spec] = have[1]  # the long-lived copy, shared by equal sets
            else:
                members[name] = (stype, cache[spec])
            self._touch(family, name)
        keep = nm.local_pods(family)  # kept by desired(), not by a policy
        for name in [n for n in members if n not in specs and n != keep]:
            del members[name]
            self._touch(family, name)

    def _touch(self, family: int, name: str) -> None:
        touched = self.touched[family]
        if touched is not None:
            touched.add(name)

    # -- syncing --------------------------------------------------------------------------

    def _full(self) -> None:
        """Recompute everything, but keep each long-lived object (policy, render, chain,
        member set) that comes out equal: the fresh copy dies at once, and a periodic sync
        does not move the whole state into new memory (which fragments the heap)."""
        nm.sweep_begin()
        policies, renders, by_namespace = self.policies, self.renders, self.by_namespace
        self.policies, self.renders, self.by_namespace = {}, {}, {}
        self._named.clear()
        for key, _ in self.agent.store(NETWORKPOLICY).items():
            self._compile(key, (policies, renders))
        keep_equal(policies, self.policies)
        keep_equal(renders, self.renders)
        for ns, pols in self.by_namespace.items():
            if ns in by_namespace:
                keep_equal(by_namespace[ns], pols)
                self.by_namespace[ns] = by_namespace[ns]
        keep_equal(by_namespace, self.by_namespace)
        self.policies, self.renders, self.by_namespace = policies, renders, by_namespace
        self._rebuild_specs()
        for f in self.settings.families:
            self._recompute_sets(f)
        self._local_version += 1
        for f in self.settings.families:
            self.touched[f] = None
        pods = self.agent.store(POD)
        local = set()
        for key, pod in pods.items():
            if self._is_local(pod):
                self._refresh_local(key)
                local.add(key)
        for key in [k for k in self.local if k not in local]:
            del self.local[key]  # gone or no longer local (its chain goes below)
            self._selection_changed = True
        names = {nm.pod_chain(p.meta.namespace, p.meta.name) for p in self.local.values()}
        for f in self.settings.families:
            for name in [n for n in self.pod_chains[f] if n not in names]:
                del self.pod_chains[f][name]
        # the store's records themselves (an equal old one kept would be a second copy)
        current = dict(pods.items())
        for key in [k for k in self.seen if k not in current]:
            del self.seen[key]
        for key, pod in current.items():
            if self.seen.get(key) is not pod:
                self.seen[key] = pod  # type: ignore[assignment]
        nm.sweep_end()

    def _policy_changed(self, key: str) -> None:
        self._compile(key)
        self._rebuild_specs()
        for f in self.settings.families:
            r = self.renders.get((f, key))
            self._recompute_sets(f, list(r.sets) if r else [])
        ns = key.partition("/")[0]
        for pkey, pod in list(self.local.items()):
            if pod.meta.namespace == ns:
                self._refresh_local(pkey)

    def _pod_changed(self, key: str) -> None:
        store = self.agent.store(POD)
        new = store.get(key)
        old = self.seen.get(key)
        if isinstance(new, Pod):
            self.seen[key] = new
        else:
            self.seen.pop(key, None)
        for f in self.settings.families:
            specs = self.specs[f]
            members = self.members[f]
            old_ips = set(ips(old, f)) if old is not None else set()
            new_ips = set(ips(new, f)) if isinstance(new, Pod) else set()
            for name, spec in specs.items():
                if isinstance(spec, render.NetSet):
                    continue
                was = old is not None and self.cluster.holds(spec, old)
                now = isinstance(new, Pod) and self.cluster.holds(spec, new)
                if not was and not now:
                    continue
                stype, cur = members[name]
                updated = (cur - old_ips if was else cur) | (new_ips if now else frozenset())
                if updated != cur:
                    members[name] = (stype, frozenset(updated))
                    self._touch(f, name)
        # named ports resolve through pods: re-render the policies whose population
        # may hold this pod (its chains gain or lose a number)
        if (old is not None and old.ports) or (isinstance(new, Pod) and new.ports):
            touched = False
            for pkey in self._named:
                policy = self.policies[pkey]
                for f in self.settings.families:
                    r = self.renders[(f, pkey)]
                    if any((old is not None and self.cluster.in_podset(pop, old))
                           or (isinstance(new, Pod) and self.cluster.in_podset(pop, new))
                           for pop in r.named):
                        r2 = self._render(policy, f, r)
                        if r2.sets.keys() != r.sets.keys():
                            touched = True
            if touched:
                self._rebuild_specs()
                for f in self.settings.families:
                    self._recompute_sets(f, [n for n in self.specs[f]
                                             if n not in self.members[f]])
        if self._is_local(new) or key in self.local:
            self._refresh_local(key)

    def desired(self, family: int) -> tuple[dict[str, tuple[str, ...]],
                                             dict[str, tuple[str, frozenset[str]]]]:
        chains: dict[str, tuple[str, ...]] = {}
        for (f, _), r in self.renders.items():
            if f == family:
                chains.update(r.chains)
        chains.update(self.pod_chains[family])
        node = self.agent.store(NODE).get(self.agent.node_name)
        cidrs = [c for c in (node.pod_cidrs if isinstance(node, Node) else ())
                 if (":" in c) == (family == 6)]
        version = (self._local_version, tuple(cidrs))
        cached = self._top.get(family)
        if cached is None or cached[0] != version:
            local = []
            for pod in self.local.values():
                a = ips(pod, family)
                if a:
                    local.append((a[0], nm.pod_chain(pod.meta.namespace, pod.meta.name)))
            top = render.top_chains(
                local, family,
                service_cidrs=[c for c in self.settings.service_cidrs
                               if (":" in c) == (family == 6)],
                nodeport_range=self.settings.nodeport_range, pod_cidrs=cidrs)
            addrs = frozenset(ip for ip, _ in local)
            have = self.members[family].get(nm.local_pods(family))
            if have != ("hash:ip", addrs):
                self.members[family][nm.local_pods(family)] = ("hash:ip", addrs)
            self._touch(family, nm.local_pods(family))
            if cached is not None and cached[1] == top:
                top = cached[1]  # the same chains: keep the old copy
            cached = self._top[family] = (version, top)
        chains.update(cached[1])
        return chains, self.members[family]

    async def sync(self, keys: frozenset[Hashable] | None) -> None:
        started = time.monotonic()
        self.cluster.begin()
        # Keys are (kind, ns/name) pairs: see keys_for.
        pairs = sorted(cast("frozenset[tuple[str, str]]", keys or frozenset()))
        kinds = {kind for kind, _ in pairs}
        if keys is None or NAMESPACE in kinds or NODE in kinds:
            if keys is None and self.full_syncs:
                for plane in self.planes.values():
                    plane.known = False  # periodic: repair drift from a fresh read
            self._full()
            self.full_syncs += 1
        else:
            for kind, key in pairs:
                if kind == NETWORKPOLICY:
                    self._policy_changed(key)
            for kind, key in pairs:
                if kind == POD:
                    self._pod_changed(key)
        computed = time.monotonic()
        for f, plane in self.planes.items():
            chains, sets = self.desired(f)
            touched, self.touched[f] = self.touched[f], set()
            try:
                self.last[f] = w = await plane.apply(chains, sets, touched)
            except Exception:
                self.touched[f] = None
                raise
            if not w.empty:
                log.info("firewall synced family=ipv%d full=%s chains=%d chains_deleted=%d "
                         "sets=%d sets_destroyed=%d compute_s=%.3f ipset_s=%.3f "
                         "iptables_s=%.3f", f, keys is None, w.chains, w.chains_deleted,
                         w.sets, w.sets_destroyed, computed - started, w.ipset_seconds,
                         w.iptables_seconds)
        self.warnings.flush()
        if self._selection_changed:  # what `status` shows: not for a remote pod's change
            status.write_selection(self.agent.node_name, self._selection_rows())
            self._selection_changed = False
        m = self.metrics
        if m is not None:
            m.sync_time.observe(time.monotonic() - started)
            m.chains_sync_time.observe(computed - started)
            for f, w in self.last.items():
                if w.save_seconds:
                    m.save_time[f].observe(w.save_seconds)
                if w.iptables_seconds:
                    m.restore_time[f].observe(w.iptables_seconds)
                if w.ipset_seconds:
                    m.ipset_restore_time[f].observe(w.ipset_seconds)
            first = next(iter(self.planes.values()), None)
            if first is not None:
                m.chains.set(sum(c.startswith(nm.POLICY_PREFIX) for c in first.chains))
                m.ipsets.set(sum(len(p.sets) for p in self.planes.values()))


def _has_named(policy: Policy) -> bool:
    return any(isinstance(port.port, str)
               for rules in (policy.ingress or (), policy.egress or ())
               for rule in rules for port in rule.ports)

