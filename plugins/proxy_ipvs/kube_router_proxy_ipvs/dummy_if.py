"""``kube-dummy-if``: the dummy link holding every service VIP as a host address.

IPVS only sees packets addressed to a local address; a /32 (/128) on a dummy link makes the
VIP local without answering ARP for it on any real interface. The link is the proxy's own,
so every address on it is the proxy's, except the kernel's IPv6 link-local one.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
from collections.abc import Mapping
from collections.abc import Set as AbstractSet

from pyroute2 import AsyncIPRoute

from kube_router_proxy_ipvs import rtnl

log = logging.getLogger(__name__)

DUMMY_IF = "kube-dummy-if"
#: Above this many addresses to bind or unbind (two messages each, with their routes), the
#: batch is encoded and sent from a worker thread, so the loop stays free while the kernel
#: works; below it the hop to the thread costs more than it frees.
BULK_THRESHOLD = 2048


def _is_ours(addr: str) -> bool:
    return not ipaddress.ip_address(addr).is_link_local


class DummyInterface:
    """Keeps the addresses of ``kube-dummy-if`` equal to the desired VIP set, and each VIP's
    local-table route sourced from the node IP of its family (kube-router does the same), so
    that a client on the node reaching a VIP is not given the VIP as its source address."""

    def __init__(self, name: str = DUMMY_IF) -> None:
        self.name = name
        self.index: int | None = None
        # The addresses on the link, each with the preferred source of its local route
        # (the address itself while the kernel's own route stands). One map, not a set and
        # a map: at thousands of VIPs every table is fresh memory, slow to touch.
        self.addrs: dict[str, str] = {}
        self.last_failures: dict[tuple[str, str], int] = {}
        self.sent = 0  # rtnetlink messages sent so far (the benchmark compares counts)
        self._buf = bytearray(rtnl.CHUNK_BYTES)  # reused by every batch

    async def load(self) -> None:
        """Create the link if missing, bring it up, and read its addresses and routes."""
        async with AsyncIPRoute() as ipr:
            found = await ipr.link_lookup(ifname=self.name)
            if not found:
                await ipr.link("add", ifname=self.name, kind="dummy")
                found = await ipr.link_lookup(ifname=self.name)
                log.info("created link name=%s", self.name)
            self.index = found[0]
            await ipr.link("set", index=self.index, state="up")
        # the same dumps the drift check reads, so both see the link alike
        addrs = await asyncio.to_thread(rtnl.addresses, self.index)
        routes = await asyncio.to_thread(rtnl.local_routes, self.index)
        self.addrs = {a: routes.get(a, a) for a in addrs if _is_ours(a)}
        # A route we sourced outlives its address when someone else removes that (the
        # kernel deletes only the route it made), and would shadow the kernel's route when
        # the address comes back: the link is ours, so such routes go.
        stale = [dst for dst in routes if dst not in self.addrs and _is_ours(dst)]
        if stale:
            batch = rtnl.Batch(self.index)
            for dst in stale:
                batch.local_route(dst, None)
            failed = await asyncio.to_thread(batch.send)
            log.info("stale local routes deleted link=%s count=%d failed=%d", self.name,
                     len(stale), len(failed))

    def drift(self) -> str | None:
        """What the link shows that the cache does not, or None when they agree: one dump
        of its addresses and one of its local-table routes. Blocking."""
        try:
            index = socket.if_nametoindex(self.name)
        except OSError:
            return "link missing"
        if index != self.index:
            return "link made again"
        # Each address and route is looked at and dropped: this runs at every full sync,
        # and ten thousand held at once are megabytes of short-lived objects.
        addrs = self.addrs
        ours = known = 0
        for a in rtnl.each_address(index):
            if _is_ours(a):
                ours += 1
                known += a in addrs
        if ours != len(addrs) or known != ours:
            return f"addresses={ours} expected={len(addrs)}"
        # An IPv6 route the kernel made names no source: only IPv4 sources compare. Of two
        # routes to one address the lowest metric counts: a mismatch seen is confirmed
        # from the whole table (rare: the table is read whole only then).
        if any(dst in addrs and src != addrs[dst]
               for dst, src, _ in rtnl.each_local_route(index, socket.AF_INET)):
            moved = [a for a, src in rtnl.local_routes(index).items()
                     if ":" not in a and a in addrs and src != addrs[a]]
            if moved:
                return f"route_sources_changed={len(moved)}"
        return None

    def plan(self, add: AbstractSet[str], remove: AbstractSet[str],
             src: Mapping[int, str] | None = None, batch: rtnl.Batch | None = None
             ) -> rtnl.Batch:
        """The messages that bind ``add``, unbind ``remove`` and source each VIP of ``add``
        from ``src[family]`` (4 or 6; a family missing there keeps the kernel's route),
        encoded into ``batch`` (a new one that keeps its chunks, if None)."""
        assert self.index is not None, "load() first"
        if batch is None:
            batch = rtnl.Batch(self.index)
        addrs = self.addrs
        src4, src6 = (src.get(4), src.get(6)) if src else (None, None)
        new4: list[str] = []  # new IPv4 VIPs sourced from src4: packed in one run below
        for addr in add:
            v6 = ":" in addr
            if addr not in addrs:
                want = src6 if v6 else src4
                # the kernel makes the local route, sourced from the address itself
                if not want or want == addr:
                    batch.address(addr, add=True)
                elif v6:
                    batch.address_with_route(addr, want)
                else:
                    new4.append(addr)
                continue
            want = src6 if v6 else src4
            if want and addrs[addr] != want:
                batch.local_route(addr, want)
        if new4:
            assert src4 is not None
            batch.addresses_with_routes(new4, src4)
        for addr in remove:
            if addr in add or addr not in addrs:
                continue
            if addrs[addr] != addr:
                # ours: the kernel removes only the route it made with the address
                batch.local_route(addr, None)
            batch.address(addr, add=False)
        return batch

    def commit(self, batch: rtnl.Batch, failed: dict[tuple[str, str], int],
               src: Mapping[int, str] | None = None) -> None:
        """Record what the sent batch did, and report what failed (one line per kind)."""
        addrs = self.addrs
        src = src or {}
        for op, addr in batch.ops():
            err = failed.get((op, addr)) if failed else None
            if op == rtnl.ADD_ADDRESS:
                if err in (None, errno.EEXIST):
                    addrs[addr] = addr  # the kernel's route, until a message below
            elif op == rtnl.DEL_ADDRESS:
                if err in (None, errno.EADDRNOTAVAIL):
                    addrs.pop(addr, None)
            elif addr not in addrs:
                continue  # a route of an address that failed: nothing to record
            elif op == rtnl.SET_ROUTE:
                if err is None:
                    addrs[addr] = src.get(6 if ":" in addr else 4, addr)
            elif op == rtnl.DEL_ROUTE and err in (None, errno.ESRCH):
                addrs[addr] = addr
        ignorable = {(rtnl.ADD_ADDRESS, errno.EEXIST), (rtnl.DEL_ADDRESS, errno.EADDRNOTAVAIL),
                     (rtnl.DEL_ROUTE, errno.ESRCH)}
        by_kind: dict[tuple[str, int], list[str]] = {}
        for (op, addr), err in failed.items():
            if (op, err) not in ignorable:
                by_kind.setdefault((op, err), []).append(addr)
        for (op, err), which in sorted(by_kind.items()):
            log.warning("cannot change link link=%s op=%s count=%d first=%s error=%s",
                        self.name, op, len(which), sorted(which)[0], os.strerror(err))
        self.last_failures = dict(failed)

    async def update(self, add: AbstractSet[str], remove: AbstractSet[str],
                     src: Mapping[int, str] | None = None) -> None:
        """Bind ``add``, unbind ``remove`` (only what is not already so), and source the
        routes of ``add`` from ``src`` (see :meth:`plan`)."""
        if len(add) + len(remove) > BULK_THRESHOLD:
            batch, failed = await asyncio.to_thread(self._send, add, remove, src)
        else:  # a few system calls, cheaper than a thread hop
            batch, failed = self._send(add, remove, src)
        if not len(batch):
            return
        self.sent += len(batch)
        self.commit(batch, failed, src)
        if not (src and src.get(6)):
            return  # IPv4 routes were replaced in place; nothing more to do
        routed6 = {a for op, a in batch.ops()
                   if op == rtnl.SET_ROUTE and ":" in a and (op, a) not in failed}
        if routed6 and self.index is not None:
            new = {a for op, a in batch.ops() if op == rtnl.ADD_ADDRESS}
            await asyncio.to_thread(rtnl.drop_kernel_routes6, self.index, routed6, new)

    def _send(self, add: AbstractSet[str], remove: AbstractSet[str],
              src: Mapping[int, str] | None) -> tuple[rtnl.Batch, dict[tuple[str, str], int]]:
        """Plan and send at once: each full buffer goes out while the rest is encoded."""
        assert self.index is not None, "load() first"
        with rtnl.Sender() as tx:
            batch = rtnl.Batch(self.index, buf=self._buf)
            batch.sink = tx.sink(batch)
            self.plan(add, remove, src, batch)
            return batch, tx.finish(batch)

    async def sync(self, desired: set[str], src: Mapping[int, str] | None = None) -> None:
        await self.update(desired, self.addrs.keys() - desired, src)


async def delete_link(name: str = DUMMY_IF) -> bool:
    """Remove the link (cleanup); False when it did not exist."""
    async with AsyncIPRoute() as ipr:
        found = await ipr.link_lookup(ifname=name)
        if not found:
            return False
        await ipr.link("del", index=found[0])
        return True


async def local_addresses(exclude_names: tuple[str, ...] = ("dummy", "kube", "docker")
                          ) -> list[str]:
    """Every global address of this host on links whose name has none of ``exclude_names``
    (kube-router's --nodeport-bindon-all-ip set)."""
    skip = set()
    async with AsyncIPRoute() as ipr:
        async for link in await ipr.link("dump"):
            name = link.get("IFLA_IFNAME") or ""
            if any(x in name for x in exclude_names):
                skip.add(link["index"])
    # the addresses through the proxy's own reader: the kernel lists every VIP of
    # kube-dummy-if too, and decoding each costs more than the rest of the dump
    out: list[str] = []
    for addr in await asyncio.to_thread(rtnl.addresses_except, skip):
        ip = ipaddress.ip_address(addr)
        if ip.is_loopback or ip.is_link_local:
            continue
        out.append(addr)
    return out


def family_of(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET
