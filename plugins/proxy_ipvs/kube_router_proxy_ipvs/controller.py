"""The proxy's controller: Services, EndpointSlices and this Node in, IPVS state out.

Keys are Service keys ("ns/name"). A change to one Service or one of its slices syncs only
that Service's virtual servers, VIPs and rules; a full sync (at start and every
``--ipvs-sync-period``) recomputes everything and prunes what no Service wants any more.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter
from collections.abc import Hashable
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from itertools import chain
from operator import attrgetter
from typing import TYPE_CHECKING

from kube_router.controller import Controller
from kube_router.kube.records import EndpointSlice
from kube_router.kube.records import Node
from kube_router.kube.records import Service
from kube_router.kube.records import slice_service
from kube_router.linux.run import CommandError
from kube_router.linux.run import run
from kube_router_proxy_ipvs import desired as dz
from kube_router_proxy_ipvs import ipvs_netlink as nl
from kube_router_proxy_ipvs.addr_watch import AddressWatch
from kube_router_proxy_ipvs.api import DEFAULT
from kube_router_proxy_ipvs.api import KNOWN_SCHEDULERS
from kube_router_proxy_ipvs.api import IPVSScheduler
from kube_router_proxy_ipvs.dummy_if import DummyInterface
from kube_router_proxy_ipvs.dummy_if import local_addresses
from kube_router_proxy_ipvs.healthcheck import HealthCheckServers
from kube_router_proxy_ipvs.ipvs_manager import IPVSManager
from kube_router_proxy_ipvs.ipvs_manager import SyncResult
from kube_router_proxy_ipvs.status import write_names

if TYPE_CHECKING:
    from kube_router.agent import Agent
    from kube_router.kube.events import Event
    from kube_router_proxy_ipvs.service_netfilter import ServiceNetfilter
    from kube_router_proxy_ipvs.settings import ProxySettings

log = logging.getLogger(__name__)

#: Seconds between checks of real servers drained at weight 0.
REAP_INTERVAL = 5.0
#: A queue key that is no Service: the node's addresses changed, rewrite the sets only.
LOCAL_ADDRESSES = ("local-addresses",)
_VIPS = attrgetter("vips")


class ProxyController(Controller):
    name = "proxy"
    kinds = ("Service", "EndpointSlice", "Node")
    indexes = {"EndpointSlice": {"service": slice_service}}

    def __init__(self, agent: Agent, proxy: ProxySettings,
                 netfilter: ServiceNetfilter | None = None) -> None:
        super().__init__(agent)
        self.resync_period = proxy.sync_period
        self.settings = proxy.desired()
        self.bind_all = proxy.bind_all
        self.services = agent.store("Service")
        self.slices = agent.store("EndpointSlice")
        self.nodes = agent.store("Node")
        self.node_ips: list[str] = []
        # The source of each VIP's local route, per family: the node's InternalIP.
        self.vip_src: dict[int, str] = {}
        self.ipvs = IPVSManager(self._owns, graceful=proxy.graceful_termination,
                                graceful_period=proxy.graceful_period)
        self.dummy = DummyInterface()
        self.netfilter = netfilter
        # What each Service put in the kernel (those with any virtual server), so a partial
        # sync knows what to take away.
        self.svc_states: dict[str, dz.ServiceState] = {}
        self.svc_health: dict[str, tuple[int, int]] = {}  # key -> (hc port, local endpoints)
        self.health = HealthCheckServers()
        self.timeouts = proxy.timeouts
        self._vip_users: dict[str, int] = {}  # VIP -> how many Services bind it
        self._modules_loaded: set[str] = set()
        self._scheduler_hooked = True  # until the first full sync looks
        self._reaper: asyncio.Task[None] | None = None
        self.last_result = SyncResult()
        self._names_pending = False
        self.last_timings: dict[str, float] = {}
        self._full_synced = False  # later full syncs first check the kernel for drift
        self._addr_watch: AddressWatch | None = None

    # -- events -------------------------------------------------------------------------

    def keys_for(self, event: Event) -> Iterable[Hashable]:
        if event.kind == "EndpointSlice":
            keys = set()
            for rec in (event.new, event.old):
                if isinstance(rec, EndpointSlice) and rec.service_key:
                    keys.add(rec.service_key)
            return keys
        if event.kind == "Node":
            if event.key == self.agent.node_name:
                self.queue.add_all()  # our addresses may have changed: NodePorts move
            return ()
        return (event.key,)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        await self.ipvs.load()
        if any(self.timeouts):
            tcp, fin, udp = self.timeouts
            try:
                await self.ipvs.set_timeouts(tcp, fin, udp)
                log.info("ipvs timeouts set tcp=%d tcpfin=%d udp=%d", tcp, fin, udp)
            except OSError as exc:
                log.warning("cannot set ipvs timeouts tcp=%d tcpfin=%d udp=%d error=%s",
                            tcp, fin, udp, exc)
        await self.dummy.load()
        if self.netfilter is not None:
            await self.netfilter.start()
            self._addr_watch = AddressWatch(self._addresses_changed)
            self._addr_watch.start()
        log.info("proxy state loaded ipvs_services=%d owned=%d vips=%d",
                 len(self.ipvs.actual), len(self.ipvs.owned_keys()), len(self.dummy.addrs))
        if self.ipvs.graceful:
            self._reaper = asyncio.get_running_loop().create_task(self._reap_loop())

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        if self._addr_watch is not None:
            self._addr_watch.close()
        await self.health.close()
        await self.ipvs.close()

    async def _addresses_changed(self) -> None:
        assert self.netfilter is not None
        if await self.netfilter.refresh_local_ips():
            self.queue.add(LOCAL_ADDRESSES)

    # -- the sync -----------------------------------------------------------------------

    def _owns(self, key: nl.ServiceKey) -> bool:
        return dz.owns(key, self.settings, self.node_ips, self.dummy.addrs)

    async def _refresh_node_ips(self) -> None:
        node = self.nodes.get(self.agent.node_name)
        internal = list(node.internal_ips) if isinstance(node, Node) else []
        src: dict[int, str] = {}
        for ip in internal:
            src.setdefault(6 if ":" in ip else 4, ip)
        self.vip_src = src
        self.node_ips = await local_addresses() if self.bind_all else internal

    def _refresh_scheduler_hook(self) -> None:
        """Whether any enabled plugin answers the scheduler hook (checked at each full sync):
        with none, a cold sync of thousands of Services skips thousands of empty calls."""
        try:
            impls = self.agent.hook.kube_router_ipvs_scheduler.get_hookimpls()
        except AttributeError:  # no plugin declares the hook
            impls = []
        self._scheduler_hooked = bool(impls)

    def scheduler_for(self, svc: Service) -> IPVSScheduler:
        if not self._scheduler_hooked:
            return DEFAULT
        try:
            chosen = self.agent.hook.kube_router_ipvs_scheduler(service=svc,
                                                                 config=self.agent.config)
        except AttributeError:  # no plugin declares or implements the hook
            chosen = None
        except Exception as exc:
            log.warning("scheduler hook failed service=%s error=%s", svc.key, exc)
            chosen = None
        if chosen is None:
            return DEFAULT
        if chosen.name not in KNOWN_SCHEDULERS:
            dz.warnings.warn(svc.key, f"scheduler {chosen.name}",
                             "unknown ipvs scheduler service=%s scheduler=%s using=rr",
                             svc.key, chosen.name)
            return DEFAULT
        return chosen

    async def _load_module(self, name: str) -> None:
        if name in self._modules_loaded or name == "rr":
            return
        self._modules_loaded.add(name)
        try:
            rc, _, err = await run(["modprobe", f"ip_vs_{name}"], check=False)
        except (OSError, CommandError) as exc:  # not installed, or hung and killed
            log.warning("modprobe failed module=ip_vs_%s error=%s", name, exc)
            return
        if rc:
            # Built in, or the kernel autoloads it on first use: IPVS reports real failures.
            log.info("modprobe failed module=ip_vs_%s rc=%s stderr=%s", name, rc,
                     err.strip())

    def _state(self, key: str, svc: Service) -> dz.ServiceState:
        # (``key`` is the store's: a record's own key is a new string at every read)
        slices: list[EndpointSlice] = self.slices.by_index("service", key)  # type: ignore[assignment]
        scheduler = self.scheduler_for(svc) if self._scheduler_hooked else DEFAULT
        return dz.service_state(svc, slices, self.settings, scheduler, self.node_ips)

    async def sync(self, keys: frozenset[Hashable] | None) -> None:
        # (a full sync runs under the core's GC policy for bulk work: see gc_policy)
        started = time.monotonic()
        if keys is None:
            if self._full_synced:
                await self._check_kernel()
            await self._refresh_node_ips()
            self._refresh_scheduler_hook()
            # what was said about Services now gone is forgotten: bounded by what exists
            dz.warnings.forget_missing(self.services.__contains__)
            todo: Iterable[tuple[str, object]] = self.services.items()
        else:
            todo = [(str(k), self.services.get(str(k))) for k in keys
                    if k != LOCAL_ADDRESSES]
        states: dict[str, dz.ServiceState] = {}
        for name, svc in todo:
            if not isinstance(svc, Service):
                states[name] = dz.ServiceState()
                continue
            try:
                state = self._state(name, svc)
                old = self.svc_states.get(name)
                # An unchanged Service keeps its old state, so the new one dies at once:
                # what stays alive is not rebuilt in fresh memory at every full sync, which
                # over a long churn scattered it across the heap (RSS grew by a quarter).
                states[name] = old if old is not None and old == state else state
            except Exception as exc:  # one bad object must not stop the others
                dz.warnings.warn(name, f"error {exc}", "skipping service service=%s error=%s",
                                 name, exc)
                states[name] = self.svc_states.get(name, dz.ServiceState())
        dz.warnings.flush()
        desired = {vs.key: vs for st in states.values() for vs in st.servers}
        for sched in {v.attrs.scheduler for v in desired.values()}:
            await self._load_module(sched)

        if keys is None:
            # what no Service wants any more (the manager deletes only what it owns)
            remove = {k for k in self.ipvs.actual if k not in desired}
            # how many Services bind each VIP (a plain count: no set per address)
            users = Counter(chain.from_iterable(map(_VIPS, states.values())))
            self._vip_users = users
            vips_add: AbstractSet[str] = users.keys()
            vips_remove: AbstractSet[str] = self.dummy.addrs.keys() - vips_add
            self.svc_health = {n: st.health_check for n, st in states.items()
                               if st.health_check}
            # the states themselves become the record (no copy): only those with servers
            for name in [n for n, st in states.items() if not st.servers]:
                del states[name]
            self.svc_states = states
        else:
            remove = set()
            vips_add = set()
            vips_remove = set()
            for name, st in states.items():
                old = self.svc_states.pop(name, None)
                old_vips: tuple[str, ...] = ()
                if old is not None:
                    keep = {vs.key for vs in st.servers}
                    remove.update(vs.key for vs in old.servers if vs.key not in keep)
                    old_vips = old.vips
                if st.servers:
                    self.svc_states[name] = st
                for v in old_vips:
                    if v in st.vips:
                        continue
                    left = self._vip_users.get(v, 1) - 1
                    if left > 0:
                        self._vip_users[v] = left
                    else:
                        self._vip_users.pop(v, None)
                        vips_remove.add(v)
                for v in st.vips:
                    if v not in old_vips:
                        self._vip_users[v] = self._vip_users.get(v, 0) + 1
                if st.health_check:
                    self.svc_health[name] = st.health_check
                else:
                    self.svc_health.pop(name, None)
                vips_add.update(st.vips)
            # a key another Service still wants stays (rare: scan only when something goes)
            if remove:
                wanted = {vs.key for st in self.svc_states.values() for vs in st.servers}
                remove -= wanted

        t_desired = time.monotonic()
        # VIPs first so a new service answers as soon as IPVS has it; removals after IPVS.
        await self.dummy.update(vips_add, set(), self.vip_src)
        t_vips = time.monotonic()
        new_keys = any(k not in self.ipvs.actual for k in desired)
        result = await self.ipvs.apply(desired, remove)
        t_ipvs = time.monotonic()
        await self.dummy.update(set(), vips_remove)
        t_netfilter = time.monotonic()
        tools = 0
        if self.netfilter is not None:
            node = self.nodes.get(self.agent.node_name)
            pod_cidrs = list(node.pod_cidrs) if isinstance(node, Node) else []
            tools = self.netfilter.processes
            await self.netfilter.sync(self.svc_states.values(), pod_cidrs, full=keys is None)
            tools = self.netfilter.processes - tools
        t_flush = time.monotonic()
        await self._flush_udp(result.udp_removed)
        if self.svc_health or self.health.ports:
            await self.health.update({port: (name, count) for name, (port, count)
                                      in self.svc_health.items()})
        done = time.monotonic()
        self.last_timings = {"desired": t_desired - started, "vips": t_vips - t_desired,
                             "ipvs": t_ipvs - t_vips, "rest": done - t_ipvs,
                             "netfilter": t_flush - t_netfilter}
        self.last_result = result
        if keys is None or remove or new_keys:
            self._schedule_names()
        if keys is None:
            self._full_synced = True
        # where the time went: a first sync on a slow machine spends most of it on the
        # netfilter tools' processes (part of "rest", after IPVS is complete)
        log.info("proxy sync full=%s services=%d ipvs_ops=%d failures=%d seconds=%.4f "
                 "desired=%.3f vips=%.3f ipvs=%.3f rest=%.3f netfilter=%.3f "
                 "netfilter_processes=%d",
                 keys is None, len(self.services) if keys is None else len(keys),
                 result.ops, len(result.failures), time.monotonic() - started,
                 *self.last_timings.values(), tools)

    async def _check_kernel(self) -> None:
        """Before a later full sync: re-read what someone changed behind our back
        (``ipvsadm -C``, an address taken off kube-dummy-if, the link deleted), so that
        this sync puts it back. IPVS is checked with one dump of its services (without
        their real servers), the link with one of its addresses and one of its local
        routes; only what differs is read again in full."""
        drift = await self.ipvs.drift()
        if drift:
            log.warning("ipvs table changed outside the proxy %s; re-reading it",
                        " ".join(drift))
            await self.ipvs.reload()
        changed = await asyncio.to_thread(self.dummy.drift)
        if changed:
            log.warning("link changed outside the proxy link=%s %s; re-reading it",
                        self.dummy.name, changed)
            await self.dummy.load()

    def _schedule_names(self) -> None:
        """Write the VIP -> Service names for ``status`` at most once a second."""
        if self._names_pending:
            return
        self._names_pending = True

        def write() -> None:
            self._names_pending = False
            write_names(self.svc_states)

        asyncio.get_running_loop().call_later(1.0, write)

    # -- graceful termination and UDP ---------------------------------------------------

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(REAP_INTERVAL)
            try:
                # its dumps run on the IPVS worker, in their turn between syncs
                result = await self.ipvs.reap()
                await self._flush_udp(result.udp_removed)
            except Exception:
                log.exception("graceful termination check failed")

    async def _flush_udp(self, removed: list[tuple[nl.ServiceKey, str, int]]) -> None:
        """Forget conntrack entries of removed UDP real servers only (not the whole VIP), so
        clients of the other real servers keep their flows."""
        for key, ip, port in removed:
            fam = "ipv6" if key.af == socket.AF_INET6 else "ipv4"
            argv = ["conntrack", "-D", "-f", fam, "-p", "udp", "--orig-dst", key.addr,
                    "--orig-port-dst", str(key.port), "--reply-src", ip,
                    "--reply-port-src", str(port)]
            try:
                rc, _, err = await run(argv, check=False)
            except (OSError, CommandError) as exc:  # not installed, or hung and killed
                log.warning("conntrack flush failed service=%s dest=%s:%d error=%s",
                            key, ip, port, exc)
                continue
            # rc 1 with "0 flow entries" just means there was nothing to flush
            if rc not in (0, 1):
                log.warning("conntrack flush failed service=%s dest=%s:%d rc=%s stderr=%s",
                            key, ip, port, rc, err.strip())
