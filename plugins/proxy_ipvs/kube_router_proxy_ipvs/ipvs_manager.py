"""The IPVS table: desired virtual servers diffed against a cached copy of the kernel's.

The kernel's table is read once at start; afterwards every change this manager makes is
applied to the cache too, so a sync costs only the messages for what differs. Scheduler,
persistence and timeout changes are made in place (SET), never by delete-and-add, so
established connections survive. Only services the ``owns`` predicate accepts are ever
deleted.

All work on the IPVS socket goes through one worker: one operation at a time, in the order
asked (an asyncio lock, taken by the event loop only), the blocking ones (reading the
table, bulk syncs, the graceful-termination checks) on one thread of their own. So the
event loop never waits on a lock a thread holds: a change that comes while a check
dumps real servers waits its turn without holding the loop up.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from dataclasses import field
from typing import TypeVar

from kube_router_proxy_ipvs import ipvs_netlink as nl
from kube_router_proxy_ipvs.desired import Dests
from kube_router_proxy_ipvs.desired import VirtualServer

log = logging.getLogger(__name__)

DestKey = tuple[str, int]
#: Above this many services a sync is encoded and sent from a worker thread, so the loop
#: stays free while the kernel works; below it the hop to the thread costs more than it frees
#: (a thousand new services take the kernel tens of milliseconds).
THREAD_THRESHOLD = 2000

T = TypeVar("T")


@dataclass
class SyncResult:
    ops: int = 0
    failures: list[tuple[nl.Op, nl.IPVSError]] = field(default_factory=list)
    # UDP real servers removed: (service key, dest ip, dest port), for a conntrack flush
    udp_removed: list[tuple[nl.ServiceKey, str, int]] = field(default_factory=list)


class IPVSManager:
    """Owns the proxy's IPVS services and the socket; the async methods take turns."""

    def __init__(
        self,
        owns: Callable[[nl.ServiceKey], bool],
        *,
        graceful: bool = False,
        graceful_period: float = 30.0,
    ) -> None:
        self.owns = owns
        self.graceful = graceful
        self.graceful_period = graceful_period
        self.sock: nl.IPVSSocket | None = None
        # What the kernel has. The values are the desired state's own objects once applied
        # (shared, not copied: nothing mutates them); only entries read from the kernel, and
        # those graceful termination edits, hold a dict of their own.
        self.actual: dict[nl.ServiceKey, VirtualServer] = {}
        self.fwmark_services = 0
        # (service, dest) -> monotonic deadline, for real servers drained at weight 0
        self.draining: dict[tuple[nl.ServiceKey, DestKey], float] = {}
        # the one worker: whose turn it is, and the thread for blocking work
        self._turn = asyncio.Lock()
        self._thread: ThreadPoolExecutor | None = None

    # -- the worker ---------------------------------------------------------------------

    async def _in_turn(self, work: Callable[[], T], *, blocking: bool = True) -> T:
        """Run ``work`` when no other socket work runs: on the worker thread, or (short
        work, cheaper than the hop to a thread) right here on the loop."""
        async with self._turn:
            if not blocking:
                return work()
            if self._thread is None:
                self._thread = ThreadPoolExecutor(1, thread_name_prefix="ipvs")
            fut: Awaitable[T] = asyncio.get_running_loop().run_in_executor(self._thread, work)
            return await fut

    # -- kernel state -------------------------------------------------------------------

    async def load(self) -> None:
        """Read the whole IPVS table into the cache (once at start)."""
        await self._in_turn(self._load)

    async def set_timeouts(self, tcp: int, tcpfin: int, udp: int) -> None:
        """Set IPVS's connection timeouts (0 leaves one as it is); OSError if refused."""
        def work() -> None:
            assert self.sock is not None, "load() first"
            self.sock.set_timeouts(tcp, tcpfin, udp)

        await self._in_turn(work, blocking=False)

    def _load(self) -> None:
        if self.sock is None:
            self.sock = nl.IPVSSocket()
        self.actual.clear()
        self.fwmark_services = 0
        for svc in self.sock.services(stats=False):
            if svc.key is None:
                self.fwmark_services += 1
                continue
            self.actual[svc.key] = VirtualServer(svc.key, svc.attrs, self._read_dests(svc.key))

    async def drift(self) -> list[str]:
        """What the kernel's virtual services (one dump, without their real servers) show
        that the cache does not: ours gone or changed, or new ones in our ranges; empty when
        they agree."""
        return await self._in_turn(self._drift)

    def _drift(self) -> list[str]:
        # Each dumped service is looked at and dropped: this runs at every full sync, and
        # a table of ten thousand held at once is megabytes of short-lived objects, whose
        # memory the records other threads allocate meanwhile keep from being given back.
        assert self.sock is not None
        actual = self.actual
        found = 0
        changed: list[nl.ServiceKey] = []
        unknown: list[nl.ServiceKey] = []
        for svc in self.sock.each_service(stats=False):
            key = svc.key
            if key is None:
                continue
            vs = actual.get(key)
            if vs is None:
                if self.owns(key):
                    unknown.append(key)
                continue
            found += 1
            if vs.attrs != svc.attrs:
                changed.append(key)
        gone: list[nl.ServiceKey] = []
        if found < len(actual):  # some are missing: which, from a set of the keys alone
            there = {svc.key for svc in self.sock.each_service(stats=False)}
            gone = [k for k in actual if k not in there]
        return [f"{what}={len(keys)} (first {keys[0]})" for what, keys in
                (("missing", gone), ("changed", changed), ("unknown", unknown)) if keys]

    async def reload(self) -> None:
        """Read the whole table again."""
        await self._in_turn(self._load)

    def _read_dests(self, key: nl.ServiceKey) -> dict[DestKey, int]:
        assert self.sock is not None
        return self.sock.dest_weights(key)

    async def close(self) -> None:
        def work() -> None:
            if self.sock is not None:
                self.sock.close()
                self.sock = None

        await self._in_turn(work, blocking=False)
        if self._thread is not None:
            self._thread.shutdown(wait=False)
            self._thread = None

    # -- planning -----------------------------------------------------------------------

    def plan(
        self,
        desired: Mapping[nl.ServiceKey, VirtualServer],
        remove: Iterable[nl.ServiceKey],
        result: SyncResult,
        batch: nl.Batch | None = None,
    ) -> nl.Batch:
        """Encode into ``batch`` (a new one without a sink if None) the requests turning the
        cache into ``desired``; ``remove`` lists keys to delete when they are not desired
        (only those this manager owns are deleted)."""
        if batch is None:
            batch = nl.Batch(self.sock.family if self.sock is not None else 0)
        now = time.monotonic()
        actual = self.actual
        udp = socket.IPPROTO_UDP
        for key, want in desired.items():
            have = actual.get(key)
            if have is None:
                dests = want.dests
                if type(dests) is Dests:
                    batch.new_service(key, want.attrs, dests.ips, dests.port, dests.weight)
                else:
                    batch.service(nl.CMD_NEW_SERVICE, key, want.attrs)
                    batch.dests(nl.CMD_NEW_DEST, key, dests.items())
                continue
            if have.attrs != want.attrs:
                batch.service(nl.CMD_SET_SERVICE, key, want.attrs)
            have_dests = have.dests
            if have_dests == want.dests:
                continue  # the common case of a full resync: nothing to look at
            added, changed, gone = [], [], []
            for dkey, weight in want.dests.items():
                cur = have_dests.get(dkey)
                if cur is None:
                    added.append((dkey, weight))
                elif cur != weight:
                    changed.append((dkey, weight))
                if self.draining:
                    self.draining.pop((key, dkey), None)
            for dkey, cur in have_dests.items():
                if dkey in want.dests:
                    continue
                if self.graceful:
                    if (key, dkey) not in self.draining:
                        self.draining[(key, dkey)] = now + self.graceful_period
                    if cur != 0:
                        changed.append((dkey, 0))
                    continue
                gone.append((dkey, None))
                if key.protocol == udp:
                    result.udp_removed.append((key, dkey[0], dkey[1]))
            if added:
                batch.dests(nl.CMD_NEW_DEST, key, added)
            if changed:
                batch.dests(nl.CMD_SET_DEST, key, changed)
            if gone:
                batch.dests(nl.CMD_DEL_DEST, key, gone)
        for key in remove:
            if key in desired or key not in actual or not self.owns(key):
                continue
            batch.service(nl.CMD_DEL_SERVICE, key)
            for dkey in actual[key].dests:
                self.draining.pop((key, dkey), None)
                if key.protocol == udp:
                    result.udp_removed.append((key, dkey[0], dkey[1]))
        return batch

    def _commit(
        self,
        desired: Mapping[nl.ServiceKey, VirtualServer],
        remove: Iterable[nl.ServiceKey],
    ) -> None:
        """Record in the cache what the planned operations did."""
        actual = self.actual
        if not self.graceful:
            if actual or type(desired) is not dict:
                for key, want in desired.items():
                    if actual.get(key) is want:
                        continue  # a full resync's common case: the same object
                    # An assignment keeps the dict's old key beside the value's equal new
                    # one: popping first leaves one key object per service, not two.
                    actual.pop(key, None)
                    actual[key] = want
            else:
                # The first sync: its table becomes the cache (see apply), saving a copy of
                # thousands of entries in fresh memory.
                self.actual = desired
        else:
            for key, want in desired.items():
                have = actual.get(key)
                dests = dict(want.dests)
                if have is not None:
                    for dkey in have.dests:
                        if dkey not in dests and (key, dkey) in self.draining:
                            dests[dkey] = 0
                actual.pop(key, None)  # (one key object per service, as above)
                actual[key] = VirtualServer(key, want.attrs, dests)
        for key in remove:
            if key not in desired and key in self.actual and self.owns(key):
                del self.actual[key]

    async def apply(
        self,
        desired: Mapping[nl.ServiceKey, VirtualServer],
        remove: Iterable[nl.ServiceKey] = (),
    ) -> SyncResult:
        """Bring the kernel to ``desired`` for these keys; delete ``remove`` (if owned).
        A ``desired`` dict may be kept as the cache: the caller must not change it after.

        Many services are encoded and sent from the worker thread (the loop stays free);
        fewer, as for any event, right here in their turn.
        """
        assert self.sock is not None, "load() first"
        remove = list(remove)
        return await self._in_turn(lambda: self._apply(desired, remove),
                                   blocking=len(desired) + len(remove) > THREAD_THRESHOLD)

    def _apply(
        self,
        desired: Mapping[nl.ServiceKey, VirtualServer],
        remove: list[nl.ServiceKey],
    ) -> SyncResult:
        assert self.sock is not None
        result = SyncResult()
        # Encoded into one reused buffer, sent whenever it fills.
        stream = self.sock.stream()
        self.plan(desired, remove, result, stream)
        result.ops = len(stream)
        if not result.ops:
            return result
        result.failures = stream.finish()
        self._commit(desired, remove)
        if result.failures:
            self._repair(result.failures)
        return result

    def _repair(self, failures: list[tuple[nl.Op, nl.IPVSError]]) -> None:
        """Re-read the kernel for the services whose operations failed."""
        assert self.sock is not None
        for op, err in failures[:20]:
            log.warning("ipvs operation failed op=%r error=%s", op.desc, err.strerror)
        if len(failures) > 20:
            log.warning("ipvs operations failed count=%d (first 20 logged)", len(failures))
        current = {s.key: s for s in self.sock.services(stats=False) if s.key is not None}
        for key in list(self.actual):
            if key not in current:
                del self.actual[key]
        for key, svc in current.items():
            self.actual[key] = VirtualServer(key, svc.attrs, self._read_dests(key))

    def owned_keys(self) -> set[nl.ServiceKey]:
        return {k for k in self.actual if self.owns(k)}

    # -- graceful termination -----------------------------------------------------------

    async def reap(self) -> SyncResult:
        """Delete drained real servers whose connections ended or whose time is up (their
        connection counts are dumped on the worker thread)."""
        if not self.draining:
            return SyncResult()
        return await self._in_turn(self._reap)

    def _reap(self) -> SyncResult:
        result = SyncResult()
        if not self.draining or self.sock is None:
            return result
        now = time.monotonic()
        ops: list[nl.Op] = []
        by_service: dict[nl.ServiceKey, list[DestKey]] = {}
        for (key, dkey) in self.draining:
            by_service.setdefault(key, []).append(dkey)
        for key, dkeys in by_service.items():
            try:
                conns = {(d.addr, d.port): d.active_conns + d.inactive_conns
                         for d in self.sock.dests(key, stats=False)}
            except nl.IPVSError:
                conns = {}
            for dkey in dkeys:
                deadline = self.draining[(key, dkey)]
                if conns.get(dkey, 0) and now < deadline:
                    continue
                del self.draining[(key, dkey)]
                if dkey in conns:
                    ops.append(nl.del_dest(key, dkey[0], dkey[1]))
                    if key.protocol == socket.IPPROTO_UDP:
                        result.udp_removed.append((key, dkey[0], dkey[1]))
                have = self.actual.get(key)
                if have is not None and isinstance(have.dests, dict):
                    have.dests.pop(dkey, None)
        if ops:
            result.ops = len(ops)
            result.failures = self.sock.apply(ops)
        return result
