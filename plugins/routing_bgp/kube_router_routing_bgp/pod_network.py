"""The node's side of the pod network: the CNI bridge plugin's configuration, the
``kube-bridge`` device with the pod gateway address, and pod egress masquerade.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from kube_router.kube.records import Node
from kube_router.linux.run import CommandError
from kube_router.linux.run import run

if TYPE_CHECKING:
    from kube_router_routing_bgp.settings import RouterSettings

log = logging.getLogger(__name__)

BRIDGE = "kube-bridge"
CONFLIST_NAME = "10-kuberouter.conflist"
NETWORK_NAME = "kubernetes"
# Written as the bridge's ifalias when we create it: cleanup removes only a bridge we made.
OWNER_ALIAS = "kube-router-py"


def conflist(pod_cidrs: Iterable[str], mtu: int | None, data_dir: str = "") -> dict[str, Any]:
    """The bridge plugin's configuration list for this node's pod CIDR(s)."""
    ipam: dict[str, Any] = {
        "type": "host-local",
        # One range set per CIDR: a dual-stack node gets one address of each family.
        "ranges": [[{"subnet": c}] for c in pod_cidrs],
    }
    if data_dir:
        ipam["dataDir"] = data_dir
    bridge: dict[str, Any] = {
        "type": "bridge",
        "bridge": BRIDGE,
        "isDefaultGateway": True,
        "hairpinMode": True,
        "ipam": ipam,
    }
    if mtu:
        bridge["mtu"] = mtu
    return {"cniVersion": "0.3.1", "name": NETWORK_NAME, "plugins": [bridge]}


def write_if_changed(path: Path, doc: dict[str, Any]) -> bool:
    """Write ``doc`` as JSON atomically (temporary file + rename); False if unchanged."""
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    try:
        if path.read_text() == text:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with_suppress_unlink(tmp)
        raise
    return True


def with_suppress_unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def gateway_addresses(pod_cidrs: Iterable[str]) -> list[str]:
    """The first address of each pod CIDR, with its prefix length: the pods' gateway."""
    out = []
    for c in pod_cidrs:
        net = ipaddress.ip_network(c)
        out.append(f"{net.network_address + 1}/{net.prefixlen}")
    return out


async def interface_mtu(address: str) -> int | None:
    """MTU of the interface holding ``address``."""
    _, out, _ = await run(["ip", "-j", "addr", "show"])
    for link in json.loads(out or "[]"):
        for a in link.get("addr_info", ()):
            if a.get("local") == address:
                return int(link.get("mtu") or 0) or None
    return None


async def ensure_bridge(gateways: list[str], mtu: int | None) -> bool:
    """Create kube-bridge if missing, give it the gateway addresses, bring it up.
    Returns True when it was created now."""
    created = False
    rc, out, _ = await run(["ip", "-j", "addr", "show", "dev", BRIDGE], check=False)
    if rc != 0:
        add_rc, _, err = await run(["ip", "link", "add", "name", BRIDGE, "type", "bridge"],
                                   check=False)
        if add_rc == 0:
            await run(["ip", "link", "set", "dev", BRIDGE, "alias", OWNER_ALIAS])
            created = True
            log.info("bridge created name=%s", BRIDGE)
            out = "[]"
        elif "File exists" in err:
            # the CNI bridge plugin made it meanwhile (a pod started): use that one
            _, out, _ = await run(["ip", "-j", "addr", "show", "dev", BRIDGE])
        else:
            raise CommandError(["ip", "link", "add", "name", BRIDGE, "type", "bridge"],
                               add_rc, err)
    have = set()
    info = json.loads(out or "[]")
    for link in info:
        for a in link.get("addr_info", ()):
            have.add(f"{a.get('local')}/{a.get('prefixlen')}")
    for gw in gateways:
        if gw not in have:
            # replace, not add: the CNI bridge plugin may have set it meanwhile
            await run(["ip", "addr", "replace", gw, "dev", BRIDGE])
            log.info("bridge address added name=%s address=%s", BRIDGE, gw)
    up = ["ip", "link", "set", "dev", BRIDGE, "up"]
    if mtu and (not info or info[0].get("mtu") != mtu):
        up += ["mtu", str(mtu)]
    if created or not info or "UP" not in info[0].get("flags", ()) or len(up) > 6:
        await run(up)
    return created


async def delete_bridge_if_ours() -> bool:
    rc, out, _ = await run(["ip", "-j", "-d", "link", "show", "dev", BRIDGE], check=False)
    if rc != 0:
        return False
    info = json.loads(out or "[]")
    if not info or info[0].get("ifalias") != OWNER_ALIAS:
        log.info("bridge kept name=%s reason=not-created-by-us", BRIDGE)
        return False
    await run(["ip", "link", "del", "dev", BRIDGE])
    return True


def enable_forwarding() -> None:
    # Pod traffic between nodes is routed by this node: it must forward (per namespace).
    path = "/proc/sys/net/ipv4/ip_forward"
    try:
        with open(path) as fh:
            if fh.read().strip() == "1":
                return
        with open(path, "w") as fh:
            fh.write("1")
    except OSError as exc:
        log.warning("cannot enable forwarding path=%s error=%s", path, exc)


class PodNetwork:
    def __init__(self, config: RouterSettings) -> None:
        self.settings = config
        self.conf_path = Path(config.cni_conf_dir) / CONFLIST_NAME
        self._mtu: int | None = None
        self.egress = None
        if config.enable_pod_egress:
            from kube_router_routing_bgp.egress import PodEgress

            self.egress = PodEgress()

    async def sync(self, me: Node, node_ip: str, my_cidrs: list[str],
                   all_cidrs: set[str], node_ips: set[str]) -> None:
        if self.settings.enable_cni:
            if not my_cidrs:
                log.warning("no pod CIDR on node, CNI configuration not written node=%s",
                            me.meta.name)
            else:
                if self._mtu is None and self.settings.auto_mtu:
                    self._mtu = await interface_mtu(node_ip)
                doc = conflist(my_cidrs, self._mtu, self.settings.cni_ipam_data_dir)
                if await asyncio.to_thread(write_if_changed, self.conf_path, doc):
                    log.info("cni configuration written path=%s cidrs=%s", self.conf_path,
                             ",".join(my_cidrs))
                await ensure_bridge(gateway_addresses(my_cidrs), self._mtu)
                enable_forwarding()
        if self.egress is not None:
            await self.egress.sync(all_cidrs, node_ips)
