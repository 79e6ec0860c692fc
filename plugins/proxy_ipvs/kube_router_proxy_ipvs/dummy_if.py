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
import struct

from pyroute2 import AsyncIPRoute

from kube_router_proxy_ipvs import ipvs_netlink as nl

log = logging.getLogger(__name__)

DUMMY_IF = "kube-dummy-if"
_SCOPE_LINK = 253
#: Above this many address changes, the raw pipelined batch is used.
BULK_THRESHOLD = 32
RTM_NEWADDR = 20
RTM_DELADDR = 21
IFA_ADDRESS = 1
IFA_LOCAL = 2
NLM_F_CREATE = 0x400
NLM_F_REPLACE = 0x100
_IFADDRMSG = struct.Struct("=BBBBI")


def _is_ours(addr: str) -> bool:
    return not ipaddress.ip_address(addr).is_link_local


class DummyInterface:
    """Keeps the addresses of ``kube-dummy-if`` equal to the desired VIP set."""

    def __init__(self, name: str = DUMMY_IF) -> None:
        self.name = name
        self.index: int | None = None
        self.addrs: set[str] = set()

    async def load(self) -> None:
        """Create the link if missing, bring it up, and read its addresses."""
        async with AsyncIPRoute() as ipr:
            found = await ipr.link_lookup(ifname=self.name)
            if not found:
                await ipr.link("add", ifname=self.name, kind="dummy")
                found = await ipr.link_lookup(ifname=self.name)
                log.info("created link name=%s", self.name)
            self.index = found[0]
            await ipr.link("set", index=self.index, state="up")
            self.addrs = {
                m.get("IFA_ADDRESS")
                async for m in await ipr.addr("dump", index=self.index)
                if _is_ours(m.get("IFA_ADDRESS"))
            }

    async def update(self, add: set[str], remove: set[str]) -> None:
        """Add and remove addresses (only those not already in that state)."""
        add = add - self.addrs
        remove = (remove & self.addrs) - add
        if not add and not remove:
            return
        assert self.index is not None, "load() first"
        if len(add) + len(remove) > BULK_THRESHOLD:
            # Thousands of VIPs at a cold start: one pipelined batch, not a call per address.
            failed = await asyncio.to_thread(address_batch, self.index, add, remove)
            for (op, addr), err in failed.items():
                if (op, err) not in (("add", errno.EEXIST), ("del", errno.EADDRNOTAVAIL)):
                    log.warning("cannot change address link=%s op=%s address=%s error=%s",
                                self.name, op, addr, os.strerror(err))
                    (add if op == "add" else remove).discard(addr)
            self.addrs |= add
            self.addrs -= remove
            return
        async with AsyncIPRoute() as ipr:
            for addr in sorted(add):
                plen = 128 if ":" in addr else 32
                try:
                    await ipr.addr("add", index=self.index, address=addr, prefixlen=plen,
                                   scope=_SCOPE_LINK)
                except Exception as exc:  # EEXIST after drift: the address is there, fine
                    if getattr(exc, "code", None) != 17:
                        log.warning("cannot add address link=%s address=%s error=%s",
                                    self.name, addr, exc)
                        continue
                self.addrs.add(addr)
            for addr in sorted(remove):
                plen = 128 if ":" in addr else 32
                try:
                    await ipr.addr("del", index=self.index, address=addr, prefixlen=plen)
                except Exception as exc:
                    if getattr(exc, "code", None) != 99:  # EADDRNOTAVAIL: already gone
                        log.warning("cannot remove address link=%s address=%s error=%s",
                                    self.name, addr, exc)
                        continue
                self.addrs.discard(addr)

    async def sync(self, desired: set[str]) -> None:
        await self.update(desired, self.addrs - desired)


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
    out: list[str] = []
    async with AsyncIPRoute() as ipr:
        names = {}
        async for link in await ipr.link("dump"):
            names[link["index"]] = link.get("IFLA_IFNAME") or ""
        async for m in await ipr.addr("dump"):
            name = names.get(m["index"], "")
            addr = m.get("IFA_ADDRESS")
            if not addr or any(x in name for x in exclude_names):
                continue
            ip = ipaddress.ip_address(addr)
            if ip.is_loopback or ip.is_link_local:
                continue
            out.append(addr)
    return out


def family_of(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def address_batch(index: int, add: set[str], remove: set[str]) -> dict[tuple[str, str], int]:
    """Add and delete addresses on one link in pipelined rtnetlink batches (blocking).

    Like the IPVS codec: no per-message ack, errors come back tagged with their sequence
    number, and one acked request closes the batch. Returns {(op, address): errno}.
    """
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        sock.setsockopt(socket.SOL_SOCKET, nl.SO_RCVBUFFORCE, 8 * 1024 * 1024)
        sock.setsockopt(nl.SOL_NETLINK, nl.NETLINK_CAP_ACK, 1)
        sock.bind((0, 0))
        pending: dict[int, tuple[str, str]] = {}
        chunks: list[bytes] = []
        seq = 0
        work = [("add", a) for a in sorted(add)] + [("del", a) for a in sorted(remove)]
        for i, (op, addr) in enumerate(work):
            seq += 1
            fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
            raw = socket.inet_pton(fam, addr)
            body = _IFADDRMSG.pack(fam, 128 if fam == socket.AF_INET6 else 32, 0,
                                   _SCOPE_LINK, index)
            body += nl._nla(IFA_LOCAL, raw) + nl._nla(IFA_ADDRESS, raw)
            flags = nl.NLM_F_REQUEST | (NLM_F_CREATE | NLM_F_REPLACE if op == "add" else 0)
            if i == len(work) - 1:
                flags |= nl.NLM_F_ACK  # the barrier: its ack comes after every earlier error
            chunks.append(nl.frame(RTM_NEWADDR if op == "add" else RTM_DELADDR, body, seq,
                                   flags))
            pending[seq] = (op, addr)
        last = seq
        failed: dict[tuple[str, str], int] = {}
        for start in range(0, len(chunks), 2000):
            sock.send(b"".join(chunks[start:start + 2000]))
        while True:
            data = sock.recv(1 << 20)
            done = False
            for mtype, _f, mseq, payload in nl.iter_messages(data):
                if mtype != nl.NLMSG_ERROR:
                    continue
                code = -struct.unpack_from("=i", payload)[0]
                if code and mseq in pending:
                    failed[pending[mseq]] = code
                if mseq == last:
                    done = True
            if done:
                return failed
    finally:
        sock.close()
