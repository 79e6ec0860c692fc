"""The routing controller: gobgpd's peers and paths from the Node objects, learned paths
into the kernel, and the node's pod network (CNI config, kube-bridge, egress masquerade).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import tempfile
import time
from collections.abc import Hashable
from collections.abc import Iterable
from typing import TYPE_CHECKING

from kube_router.controller import Controller
from kube_router.errors import TemporaryError
from kube_router.kube.records import EndpointSlice
from kube_router.kube.records import Node
from kube_router.kube.records import Service
from kube_router.kube.records import slice_service
from kube_router_routing_bgp import desired
from kube_router_routing_bgp import service_vips
from kube_router_routing_bgp.gobgpd import Gobgpd
from kube_router_routing_bgp.gobgpd import GobgpError
from kube_router_routing_bgp.gobgpd import PeerConfig
from kube_router_routing_bgp.gobgpd import PeerStatus
from kube_router_routing_bgp.gobgpd import admin_target
from kube_router_routing_bgp.kernel_routes import Route
from kube_router_routing_bgp.kernel_routes import RouteTable
from kube_router_routing_bgp.metrics import RouterMetrics
from kube_router_routing_bgp.overlay import Overlay
from kube_router_routing_bgp.policy import PolicyInputs
from kube_router_routing_bgp.policy import PolicyManager
from kube_router_routing_bgp.route_sync import RouteInstaller

if TYPE_CHECKING:
    from kube_router.agent import Agent
    from kube_router.kube.events import Event
    from kube_router_routing_bgp.settings import RouterSettings

log = logging.getLogger(__name__)

_ALL = "nodes"
# Before pruning protocol-17 routes nobody advertises, give the peers time to come up and
# send their tables again: a restarted agent must not drop working routes.
PRUNE_GRACE = 60.0


#: Seconds a newly added node peer may hold back readiness while its session comes up
#: and its pod routes arrive (sessions take a few seconds to establish).
CONVERGE_GRACE = 20.0


#: What the router reads when it advertises service VIPs; without that, Nodes only.
ADVERTISING_KINDS = ("Node", "Service", "EndpointSlice")


class RouterController(Controller):
    name = "router"
    kinds: tuple[str, ...] = ("Node",)

    def __init__(self, agent: Agent, settings: RouterSettings) -> None:
        super().__init__(agent)
        self.settings = settings
        self.resync_period = settings.routes_sync_period
        self.advertise_services = service_vips.enabled(settings)
        if self.advertise_services:
            self.kinds = ADVERTISING_KINDS
            # Declared here, not in ``indexes``: the router reads slices only when it
            # advertises Service VIPs (the proxy declares the same index, same function).
            agent.store("EndpointSlice").add_index("service", slice_service)
        # Only with the TCP admin API off does gobgpd need a private socket directory.
        runtime_dir = ("" if settings.gobgp_admin_port
                       else tempfile.mkdtemp(prefix="kube-router-bgp-"))
        self.gobgpd = Gobgpd(
            api_host=admin_target(settings.gobgp_admin_address, settings.gobgp_admin_port,
                                  runtime_dir),
            binary=settings.gobgpd_path, graceful_restart=settings.bgp_graceful_restart)
        self.metrics = RouterMetrics(agent.metrics.registry)
        self.policy = PolicyManager(self.gobgpd)
        self.table: RouteTable | None = None
        self.installer: RouteInstaller | None = None
        self.local: desired.LocalBgp | None = None
        self.peers: dict[str, PeerConfig] = {}  # applied to gobgpd
        self.paths: dict[str, str] = {}  # prefix -> next hop, advertised
        self._bgp_started_at = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._bgp_tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._peer_states: dict[str, tuple[str, str, str, str]] = {}
        self._peer_added_at: dict[str, float] = {}  # monotonic time each peer was added
        self._vip_paths: set[str] = set()
        # Routes into the Service CIDRs are never taken from a peer.
        self._reject_nets = list(settings.service_cidrs)
        self.overlay: Overlay | None = (Overlay(settings.overlay_type) if settings.enable_overlay
                                        else None)
        self.pod_network = None
        if settings.enable_cni or settings.enable_pod_egress:
            from kube_router_routing_bgp.pod_network import PodNetwork

            self.pod_network = PodNetwork(settings)

    def keys_for(self, event: Event) -> Iterable[Hashable]:
        # Peers and egress sets depend on every node: one key, one sync per burst.
        return (_ALL,)

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        self.table = RouteTable()
        self.installer = RouteInstaller(self.table, metrics=self.metrics)
        self.installer.reject = self._rejected
        if self.settings.bgp_graceful_restart:
            self.installer.hold_seconds = float(self.settings.bgp_graceful_restart_time)
        self.installer.route_for = self._route_for
        await self.installer.load()
        log.info("router starting node=%s learned_routes_in_kernel=%d",
                 self.agent.node_name, len(self.installer.actual))
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.installer.run(), name="router:install"),
            loop.create_task(self._reconcile_loop(), name="router:reconcile"),
        ]

    async def stop(self) -> None:
        self._stopping = True
        for t in (*self._bgp_tasks, *self._tasks):
            t.cancel()
        await asyncio.gather(*self._bgp_tasks, *self._tasks, return_exceptions=True)
        # With graceful restart the peers keep our routes while we are away; without it
        # gobgpd goes with the agent either way (it dies with its parent).
        await self.gobgpd.stop()
        if self.table is not None:
            self.table.close()

    def _route_for(self, prefix: str, next_hop: str) -> Route:
        if self.overlay is not None and next_hop in self.overlay.tunnels and self.local:
            return Route(dst=prefix, oif=self.overlay.tunnels[next_hop], src=self.local.address)
        return Route(dst=prefix, gateway=next_hop)

    def _rejected(self, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
        # Import policy as the original: no default route, no service addresses.
        if net.prefixlen == 0:
            return True
        # (a subnet: at least as long, and starting inside; `in` is False across families)
        return any(net.prefixlen >= r.prefixlen and net.network_address in r
                   for r in self._reject_nets)

    # -- sync --------------------------------------------------------------------

    async def sync(self, keys: frozenset[Hashable] | None) -> None:
        started = time.monotonic()
        nodes_store = self.agent.store("Node")
        me = nodes_store.get(self.agent.node_name)
        if not isinstance(me, Node):
            raise TemporaryError(f"node {self.agent.node_name} not found in the API")
        local = desired.local_bgp(me, self.settings)
        if local is None:
            raise TemporaryError(f"node {self.agent.node_name} has no usable address or ASN")
        nodes = [n for n in nodes_store if isinstance(n, Node)]
        my_cidrs = desired.pod_cidrs(me)
        vips = self._service_vips() if self.advertise_services else set()
        assert self.installer is not None
        self.installer.local_addresses = {local.address}
        self.installer.local_prefixes = set(my_cidrs)

        errors: list[str] = []
        if self.overlay is not None:
            try:
                await self.overlay.sync(local.address,
                                        {ip for n in nodes if (ip := desired.node_ip(n))})
                self.installer.rederive()
            except Exception as exc:
                log.warning("overlay sync failed node=%s error=%s", me.meta.name, exc)
                errors.append(f"overlay: {exc}")

        bgp_error: GobgpError | None = None
        try:
            await self._ensure_bgp(local)
            want = self._desired_peers(me, local, nodes)
            had_peers = bool(self.peers)
            # Policies first: a new peer must never see a route the policy would withhold.
            changed = await self.policy.apply(PolicyInputs(
                pod_cidrs=frozenset(my_cidrs), service_vips=frozenset(vips),
                node_peers=frozenset(a for a, p in want.items() if not p.external),
                external_peers=frozenset(a for a, p in want.items() if p.external),
                advertise_pod_cidr=self.settings.advertise_pod_cidr,
                override_nexthop=self.settings.override_nexthop))
            # Paths before peers: a session that comes up at once gets our routes, then
            # End-of-RIB. After a graceful restart the peer drops every stale route that
            # End-of-RIB did not refresh, so a path added after it means a gap in traffic.
            errors += await self._sync_paths(local, my_cidrs, vips)
            t0 = time.monotonic()
            errors += await self._sync_peers(me, want)
            self.metrics.internal_peers_sync_time.observe(time.monotonic() - t0)
            if changed and had_peers:
                await self.policy.soft_reset()
            await self._update_peer_metrics()
        except GobgpError as exc:
            bgp_error = exc  # the pod network is synced all the same
        # The pod network comes after BGP: its commands are slow next to the gRPC calls,
        # and the sessions should come up (connect retries run) in the meantime. No pod
        # can use the CIDR before the CNI configuration is written here anyway.
        if self.pod_network is not None:
            try:
                await self.pod_network.sync(me, local.address, my_cidrs,
                                            desired.cluster_pod_cidrs(nodes),
                                            {ip for n in nodes if (ip := desired.node_ip(n))})
            except Exception as exc:  # reported with the rest; the next sync retries it
                log.warning("pod network sync failed node=%s error=%s", me.meta.name, exc)
                errors.append(f"pod network: {exc}")
        self.metrics.routes_sync_time.observe(time.monotonic() - started)
        if bgp_error is not None:
            raise TemporaryError("; ".join([f"gobgpd: {bgp_error}", *errors]),
                                 delay=2.0) from bgp_error
        if errors:
            raise TemporaryError("; ".join(errors))
        waiting = self._converging(nodes)
        if waiting:
            raise TemporaryError(f"waiting for the pod routes of {', '.join(waiting)}",
                                 delay=1.0)

    def _converging(self, nodes: list[Node]) -> list[str]:
        """Nodes peered in the last CONVERGE_GRACE seconds whose pod CIDRs are not routed
        here yet.

        Until their routes arrive, this node cannot reach their pods, so the controller does
        not report the API's state as applied; a peer that stays down (no agent on that
        node) stops holding it back after the grace period.
        """
        assert self.installer is not None
        now = time.monotonic()
        waiting = []
        for node in nodes:
            addr = desired.node_ip(node)
            peer = self.peers.get(addr) if addr else None
            if peer is None or peer.external:
                continue
            if now - self._peer_added_at.get(addr, 0.0) > CONVERGE_GRACE:
                continue
            if any(c not in self.installer.actual for c in desired.pod_cidrs(node)):
                waiting.append(node.meta.name)
        return waiting

    async def _ensure_bgp(self, local: desired.LocalBgp) -> None:
        if self.local is not None and local != self.local and self.gobgpd.running():
            log.info("node BGP identity changed asn=%d router_id=%s address=%s: restarting "
                     "gobgpd", local.asn, local.router_id, local.address)
            await self._stop_bgp_tasks()
            await self.gobgpd.stop()
        if not self.gobgpd.running():
            await self._stop_bgp_tasks()
            self.peers.clear()
            self.paths.clear()
            await self.gobgpd.spawn()
        if not await self.gobgpd.started():
            await self.gobgpd.start_bgp(
                asn=local.asn, router_id=local.router_id, listen_addresses=[local.address],
                listen_port=self.settings.bgp_port,
                graceful_restart=self.settings.bgp_graceful_restart,
                restart_time=self.settings.bgp_graceful_restart_time)
            log.info("bgp started asn=%d router_id=%s listen=%s:%d", local.asn,
                     local.router_id, local.address, self.settings.bgp_port)
            self.local = local
            self.policy.reset()
            self.peers.clear()
            self.paths.clear()
            self._bgp_started_at = time.monotonic()
            loop = asyncio.get_running_loop()
            self._bgp_tasks = [
                loop.create_task(self._watch(), name="router:watch"),
                loop.create_task(self._supervise(), name="router:supervise"),
            ]

    async def _stop_bgp_tasks(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in self._bgp_tasks if t is not current]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._bgp_tasks = []

    def _desired_peers(self, me: Node, local: desired.LocalBgp,
                       nodes: list[Node]) -> dict[str, PeerConfig]:
        want = desired.ibgp_peers(me, local, nodes, self.settings)
        try:
            external = desired.external_peers(self.settings, local.address)
        except (desired.PeerFlagsError, OSError) as exc:
            log.warning("external peers skipped node=%s error=%s", me.meta.name, exc)
            external = {}
        if not external:  # the node's annotation counts only without global peers
            external = desired.annotation_peers(me, local.address, self.settings)
        for addr, peer in external.items():
            want.setdefault(addr, peer)  # a node address stays a node peer
        return want

    async def _sync_peers(self, me: Node, want: dict[str, PeerConfig]) -> list[str]:
        errors = []
        for addr in [a for a in self.peers if a not in want]:
            try:
                await self.gobgpd.delete_peer(addr)
                del self.peers[addr]
                self._peer_added_at.pop(addr, None)
                if self.installer is not None:
                    self.installer.release_peer(addr)
                log.info("bgp peer removed node=%s peer=%s", me.meta.name, addr)
            except GobgpError as exc:
                errors.append(f"delete peer {addr}: {exc}")
        for addr, peer in want.items():
            if self.peers.get(addr) == peer:
                continue
            try:
                if addr in self.peers:
                    await self.gobgpd.delete_peer(addr)
                    del self.peers[addr]
                try:
                    await self.gobgpd.add_peer(peer)
                except GobgpError as exc:
                    if "existing peer" not in str(exc):
                        raise
                    # gobgpd kept it from before we lost track (a failed call): redo it.
                    await self.gobgpd.delete_peer(addr)
                    await self.gobgpd.add_peer(peer)
                self.peers[addr] = peer
                self._peer_added_at[addr] = time.monotonic()
                log.info("bgp peer added node=%s peer=%s asn=%d external=%s", me.meta.name,
                         addr, peer.asn, peer.external)
            except GobgpError as exc:
                errors.append(f"add peer {addr}: {exc}")
        return errors

    def _service_vips(self) -> set[str]:
        slices = self.agent.store("EndpointSlice")
        out: set[str] = set()
        for svc in self.agent.store("Service"):
            if isinstance(svc, Service):
                out |= service_vips.service_vips(
                    svc, [s for s in slices.by_index("service", svc.key)
                          if isinstance(s, EndpointSlice)],
                    self.agent.node_name, self.settings)
        return out

    async def _sync_paths(self, local: desired.LocalBgp, cidrs: list[str],
                          vips: set[str]) -> list[str]:
        version = ipaddress.ip_address(local.address).version
        want = {c: local.address for c in (*cidrs, *vips)
                if ipaddress.ip_network(c).version == version}
        errors = []
        for prefix, nh in list(self.paths.items()):
            if want.get(prefix) != nh:
                try:
                    await self.gobgpd.delete_path(prefix, nh)
                    del self.paths[prefix]
                    kind = "withdraw-vip" if prefix in self._vip_paths else "withdraw-pod-route"
                    self._vip_paths.discard(prefix)
                    self.metrics.sent.labels(kind).inc()
                    log.info("path withdrawn prefix=%s type=%s", prefix, kind)
                except GobgpError as exc:
                    errors.append(f"withdraw {prefix}: {exc}")
        for prefix, nh in want.items():
            if prefix in self.paths:
                continue
            try:
                await self.gobgpd.add_path(prefix, nh)
                self.paths[prefix] = nh
                kind = "advertise-vip" if prefix in vips else "pod-route"
                if prefix in vips:
                    self._vip_paths.add(prefix)
                self.metrics.sent.labels(kind).inc()
                log.info("path advertised prefix=%s next_hop=%s type=%s", prefix, nh, kind)
            except (GobgpError, ValueError) as exc:
                errors.append(f"advertise {prefix}: {exc}")
        return errors

    async def _update_peer_metrics(self) -> None:
        peers = await self.gobgpd.list_peers()
        self.metrics.peer_info.clear()
        self._peer_states = {}
        for p in peers:
            self._peer_changed(p)

    def _peer_changed(self, p: PeerStatus) -> None:
        old = self._peer_states.pop(p.address, None)
        if old is not None:
            with contextlib.suppress(KeyError):
                self.metrics.peer_info.remove(*old)
        if p.address not in self.peers:
            return  # a deconfigured peer's last word
        peer = self.peers[p.address]
        if peer.graceful_restart and self.installer is not None:
            self.installer.peer_state(p.address, p.state == "Establ")
        kind = "external" if peer.external else "internal"
        labels = (p.address, kind, str(p.asn), p.state)
        self.metrics.peer_info.labels(*labels).set(1)
        self._peer_states[p.address] = labels
        if old is not None and old[3] != p.state:
            log.info("bgp peer state peer=%s asn=%d state=%s", p.address, p.asn, p.state)

    # -- background tasks ----------------------------------------------------------

    async def _watch(self) -> None:
        assert self.installer is not None
        while self.gobgpd.running():
            try:
                async for batch in self.gobgpd.watch_best(on_peer=self._peer_changed):
                    self.installer.update(batch)
            except GobgpError as exc:
                if not self.gobgpd.running():
                    return
                log.warning("best path watch ended error=%s; resubscribing", exc)
            await asyncio.sleep(1)

    async def _supervise(self) -> None:
        rc = await self.gobgpd.wait()
        if self._stopping:
            return
        log.warning("gobgpd exited rc=%s; restarting and reconfiguring it", rc)
        await asyncio.sleep(1)
        self.queue.add_all()

    async def _reconcile_loop(self) -> None:
        assert self.installer is not None
        while True:
            await asyncio.sleep(self.settings.injected_routes_sync_period)
            try:
                if self.gobgpd.running() and self.gobgpd.stub is not None and self.local:
                    self.installer.replace_all(await self.gobgpd.best_paths())
                    self.installer.pruning = (
                        time.monotonic() - self._bgp_started_at > PRUNE_GRACE)
                await self.installer.reconcile()
            except Exception as exc:
                log.warning("route reconcile failed error=%s", exc)
