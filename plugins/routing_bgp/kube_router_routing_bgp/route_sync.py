"""Learned BGP best paths into kernel routes (protocol 17), batched.

The watcher hands over best-path changes as they stream in; a single installer task takes
everything pending at once and writes it in one batch, so a burst of thousands of paths
is a handful of system calls, and a lone withdrawal goes out at once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from collections.abc import Iterable
from typing import TYPE_CHECKING

from kube_router_routing_bgp.gobgpd import LearnedPath
from kube_router_routing_bgp.kernel_routes import PROTO_BGP
from kube_router_routing_bgp.kernel_routes import RT_TABLE_MAIN
from kube_router_routing_bgp.kernel_routes import Route
from kube_router_routing_bgp.kernel_routes import RouteTable

if TYPE_CHECKING:
    from kube_router_routing_bgp.metrics import RouterMetrics

log = logging.getLogger(__name__)

# Below this many operations the batch is written from the loop thread: a thread hand-off
# costs more than the two system calls it would save the loop.
_INLINE_OPS = 64
_COALESCE_QUIET_YIELDS = 3
_COALESCE_MAX_YIELDS = 2000
#: Seconds a reconnected graceful-restart peer has to advertise a held prefix again.
HELD_AFTER_RECONNECT = 10.0


class RouteInstaller:
    """Keeps the main table's protocol-17 routes equal to the learned best paths."""

    def __init__(self, table: RouteTable, *, metrics: RouterMetrics | None = None) -> None:
        self.table = table
        self.metrics = metrics
        self.desired: dict[str, Route] = {}
        self.learned: dict[str, str] = {}  # prefix -> next hop, accepted paths only
        # How a learned path becomes a route (the overlay sends some through a tunnel).
        self.route_for: Callable[[str, str], Route] = lambda dst, nh: Route(dst=dst,
                                                                             gateway=nh)
        self.actual: dict[str, Route] = {}
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self.local_addresses: set[str] = set()
        self.local_prefixes: set[str] = set()
        # Prefixes never installed whatever a peer says (default route, service ranges).
        self.reject: Callable[[ipaddress.IPv4Network | ipaddress.IPv6Network], bool] = (
            lambda net: net.prefixlen == 0)
        self.pruning = False  # delete protocol-17 routes nobody advertises (after a grace)
        # Graceful restart, as the helper: how long the routes of a peer whose session is
        # down stay in the kernel (0: they go when gobgpd withdraws them). See peer_state.
        self.hold_seconds = 0.0
        self._down_since: dict[str, float] = {}  # peer -> when its session left Established
        self.held: dict[str, tuple[str, float]] = {}  # prefix -> (peer, until)
        self._expiry: asyncio.TimerHandle | None = None
        self.batches = 0
        self.last_install: float = 0.0  # monotonic time the last batch reached the kernel

    # -- input -------------------------------------------------------------------

    def update(self, paths: Iterable[LearnedPath]) -> None:
        held: list[LearnedPath] = []
        for p in paths:
            if p.withdraw and self._hold(p):
                held.append(p)
                continue
            self.held.pop(p.prefix, None)
            if p.withdraw or not p.neighbor or not p.next_hop or not self._acceptable(p):
                # Withdrawn, originated by this node itself, or refused: no route.
                self.desired.pop(p.prefix, None)
                self.learned.pop(p.prefix, None)
            else:
                self.learned[p.prefix] = p.next_hop
                self.desired[p.prefix] = self.route_for(p.prefix, p.next_hop)
            self._pending.add(p.prefix)
        if held:
            # once per batch: gobgpd drops a peer's paths in a few large ones
            log.info("keeping routes of a restarting bgp peer peer=%s count=%d first=%s",
                     held[0].neighbor, len(held), held[0].prefix)
            self._schedule_expiry()
        if self.metrics is not None:
            self.metrics.received.inc()
        self._wake.set()

    # -- graceful restart ----------------------------------------------------------

    def peer_state(self, peer: str, established: bool) -> None:
        """Follow a graceful-restart peer's session (the watcher calls this on each change).

        While a peer restarts, gobgpd keeps its paths as stale, but drops them all as soon
        as one attempt to reconnect fails (say the restarted speaker answers before it
        knows its peers) rather than when the restart time is up. A withdrawal that comes
        while the peer's session is down is therefore not the peer's word: its route stays
        (``held``) until the peer advertises the prefix again, or the peer has been back
        for a few seconds without it, or the restart time since the session went down has
        passed.
        """
        now = time.monotonic()
        if not established:
            self._down_since.setdefault(peer, now)
            return
        if self._down_since.pop(peer, None) is None:
            return
        # Back: what it still advertises arrives right away (the restarting speaker waits
        # at most its selection deferral); what it does not, goes soon after.
        settle = now + HELD_AFTER_RECONNECT
        for prefix, (owner, until) in self.held.items():
            if owner == peer and until > settle:
                self.held[prefix] = (owner, settle)
        self._schedule_expiry()

    def release_peer(self, peer: str) -> None:
        """The peer is no longer configured: its held routes go now."""
        self._down_since.pop(peer, None)
        self._expire(lambda owner, until: owner == peer)

    def _hold(self, p: LearnedPath) -> bool:
        """Whether this withdrawal is a restarting peer's stale path dropped early."""
        since = self._down_since.get(p.neighbor) if self.hold_seconds else None
        if since is None or self.learned.get(p.prefix) is None or p.prefix in self.held:
            return p.prefix in self.held
        until = since + self.hold_seconds
        if until <= time.monotonic():
            return False
        self.held[p.prefix] = (p.neighbor, until)
        return True

    def _schedule_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if not self.held:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # (outside a loop: the next reconcile expires them)
        delay = min(until for _, until in self.held.values()) - time.monotonic()
        self._expiry = loop.call_later(max(0.0, delay), self.expire_held)

    def expire_held(self) -> None:
        """Let go of the held routes whose time is up."""
        now = time.monotonic()
        self._expire(lambda owner, until: until <= now)

    def _expire(self, done: Callable[[str, float], bool]) -> None:
        gone = [prefix for prefix, (owner, until) in self.held.items() if done(owner, until)]
        for prefix in gone:
            del self.held[prefix]
            self.desired.pop(prefix, None)
            self.learned.pop(prefix, None)
            self._pending.add(prefix)
        if gone:
            log.info("held bgp routes released count=%d first=%s", len(gone), gone[0])
            self._wake.set()
        self._schedule_expiry()

    def rederive(self) -> None:
        """Recompute every route from its path (after tunnels came or went)."""
        for prefix, nh in self.learned.items():
            route = self.route_for(prefix, nh)
            if self.desired.get(prefix) != route:
                self.desired[prefix] = route
                self._pending.add(prefix)
        if self._pending:
            self._wake.set()

    def replace_all(self, paths: Iterable[LearnedPath]) -> None:
        """The full table (after a resubscribe): forget what is not in it any more, except
        the routes held for a restarting peer."""
        old = set(self.desired)
        kept = {prefix: (self.learned[prefix], self.desired[prefix]) for prefix in self.held
                if prefix in self.learned and prefix in self.desired}
        self.desired.clear()
        self.learned.clear()
        for prefix, (nh, route) in kept.items():
            self.learned[prefix], self.desired[prefix] = nh, route
        self.update(paths)
        self._pending.update(old)
        self._wake.set()

    def _acceptable(self, p: LearnedPath) -> bool:
        try:
            net = ipaddress.ip_network(p.prefix)
        except ValueError:
            return False
        if p.next_hop in self.local_addresses or p.prefix in self.local_prefixes:
            return False
        return not self.reject(net)

    # -- kernel ------------------------------------------------------------------

    async def load(self) -> None:
        """Read our routes from the kernel (once at start, then on every reconcile)."""
        routes = await asyncio.to_thread(self.table.dump, PROTO_BGP)
        self.actual = {r.dst: r for r in routes if r.table == RT_TABLE_MAIN}

    async def reconcile(self) -> None:
        """Repair drift: re-read the kernel and re-apply everything."""
        started = time.monotonic()
        self.expire_held()
        await self.load()
        self._pending.update(self.desired)
        if self.pruning:
            self._pending.update(self.actual)
        await self.flush()
        if self.metrics is not None:
            self.metrics.host_sync_time.observe(time.monotonic() - started)

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            # A burst arrives one stream message at a time: let it pile up while it is
            # still growing (a lone withdrawal waits a few loop turns), then write it whole.
            # (Yielding, not sleeping: the guest's timer ticks every 10 ms.)
            quiet = 0
            for _ in range(_COALESCE_MAX_YIELDS):
                before = len(self._pending)
                await asyncio.sleep(0)
                quiet = quiet + 1 if len(self._pending) == before else 0
                if quiet >= _COALESCE_QUIET_YIELDS:
                    break
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                log.exception("route install failed")
                await asyncio.sleep(1)
                self._wake.set()

    async def flush(self) -> None:
        if not self._pending:
            return
        keys, self._pending = self._pending, set()
        add: list[Route] = []
        replace: list[Route] = []
        delete: list[Route] = []
        for dst in keys:
            want = self.desired.get(dst)
            have = self.actual.get(dst)
            if want is None:
                if have is not None:
                    delete.append(have)
            elif have is None:
                add.append(want)
            elif have.gateway != want.gateway or (want.oif and have.oif != want.oif):
                replace.append(want)
        if not (add or replace or delete):
            return
        n = len(add) + len(replace) + len(delete)
        if n <= _INLINE_OPS:
            errors = self.table.apply(add=add, replace=replace, delete=delete)
        else:
            errors = await asyncio.to_thread(self.table.apply, add, replace, delete)
        self.last_install = time.monotonic()
        self.batches += 1
        failed = {e.route.dst for e in errors}
        for e in errors:
            log.warning("route not applied op=%s dst=%s gateway=%s error=%s", e.op,
                        e.route.dst, e.route.gateway or "-", e)
        for r in delete:
            self.actual.pop(r.dst, None)
        for r in (*add, *replace):
            if r.dst not in failed:
                self.actual[r.dst] = r
        if self.metrics is not None:
            written = {r.dst for r in (*add, *replace)}
            self.metrics.added.inc(len(written - failed))
            self.metrics.removed.inc(len(delete))
            self.metrics.synced.set(len(self.actual))
        log.debug("routes applied add=%d replace=%d delete=%d errors=%d", len(add),
                  len(replace), len(delete), len(errors))

    async def remove_all(self) -> int:
        """Delete every protocol-17 route of the main table (cleanup)."""
        await self.load()
        routes = list(self.actual.values())
        await asyncio.to_thread(self.table.apply, (), (), routes)
        self.actual.clear()
        return len(routes)
