"""IPIP tunnels to other nodes, for pod routes whose next hop is not on our subnet
(``--overlay-type subnet``) or for every node (``full``).

One tunnel per remote node, named as the original names them: ``tun-`` and the first 11 hex
digits of the SHA-256 of the node's address without its dots (or colons). A learned route
through a tunnel leaves by that device instead of via the next hop.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import re

from kube_router.linux.run import run

log = logging.getLogger(__name__)

TUNNEL_RE = re.compile(r"^tun-[0-9a-f]{11}$")


def tunnel_name(node_ip: str) -> str:
    digest = hashlib.sha256(node_ip.replace(".", "").replace(":", "").encode()).hexdigest()
    return f"tun-{digest[:11]}"


async def local_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The subnets of this namespace's global addresses (what is reachable directly)."""
    _, out, _ = await run(["ip", "-j", "addr", "show"])
    nets = []
    for link in json.loads(out or "[]"):
        for a in link.get("addr_info", ()):
            if a.get("scope") == "global" and a.get("local"):
                nets.append(ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}").network)
    return nets


async def existing_tunnels() -> dict[str, int]:
    """Our tunnel devices: name -> ifindex."""
    _, out, _ = await run(["ip", "-j", "-d", "link", "show", "type", "ipip"], check=False)
    found = {}
    for link in json.loads(out or "[]"):
        if TUNNEL_RE.match(link.get("ifname", "")):
            found[link["ifname"]] = int(link["ifindex"])
    return found


class Overlay:
    def __init__(self, overlay_type: str) -> None:
        self.full = overlay_type == "full"
        self.tunnels: dict[str, int] = {}  # remote node IP -> ifindex
        self._local_nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None = None
        self._checked = False

    async def sync(self, local_ip: str, node_ips: set[str]) -> None:
        """Tunnels to the nodes that need one; remove ours to nodes that left."""
        if self._local_nets is None:
            self._local_nets = await local_networks()
        want = {ip for ip in node_ips if ip != local_ip and self.needs_tunnel(ip)
                and ipaddress.ip_address(ip).version == 4}
        if not want and not self.tunnels and self._checked:
            return  # the common case on one subnet: nothing to ask the kernel
        self._checked = True
        have = await existing_tunnels()
        names = {tunnel_name(ip): ip for ip in want}
        for name in [n for n in have if n not in names]:
            await run(["ip", "link", "del", "dev", name], check=False)
            log.info("tunnel removed name=%s", name)
        tunnels: dict[str, int] = {}
        for name, remote in names.items():
            if name not in have:
                await run(["ip", "link", "add", "name", name, "type", "ipip", "local",
                           local_ip, "remote", remote])
                await run(["ip", "link", "set", "dev", name, "up"])
                log.info("tunnel created name=%s remote=%s", name, remote)
                have = await existing_tunnels()
            tunnels[remote] = have[name]
        self.tunnels = tunnels

    def needs_tunnel(self, next_hop: str) -> bool:
        if self.full:
            return True
        addr = ipaddress.ip_address(next_hop)
        return not any(addr in n for n in self._local_nets or ())


async def remove_all_tunnels() -> int:
    have = await existing_tunnels()
    await asyncio.gather(*(run(["ip", "link", "del", "dev", n], check=False) for n in have))
    return len(have)
