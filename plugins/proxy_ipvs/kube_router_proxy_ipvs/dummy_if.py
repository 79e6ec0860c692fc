"""``kube-dummy-if``: the dummy link holding every service VIP as a host address.

IPVS only sees packets addressed to a local address; a /32 (/128) on a dummy link makes the
VIP local without answering ARP for it on any real interface. The link is the proxy's own,
so every address on it is the proxy's, except the kernel's IPv6 link-local one.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

from pyroute2 import AsyncIPRoute

log = logging.getLogger(__name__)

DUMMY_IF = "kube-dummy-if"
_SCOPE_LINK = 253


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
