"""``kube-router-py cleanup-kube-proxy``: remove what kube-proxy left on a node, and nothing
else, before the agent takes its place.

kube-proxy's objects are known by name: its iptables chains (the fixed ones of its iptables
and IPVS modes, and the per-Service ``KUBE-SVC-``/``KUBE-SEP-``... chains), the rules in
other chains that jump to them, its ipsets, the IPVS virtual servers on its dummy link
``kube-ipvs0``, and the link. The kubelet's chains (``KUBE-FIREWALL``, ``KUBE-MARK-DROP``,
``KUBE-KUBELET-CANARY``), ours (``KUBE-ROUTER-...``) and every other tool's stay. NodePort
virtual servers on the node's own addresses are left to the proxy's first sync, which owns
that port range.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re

from kube_router.linux import ipset
from kube_router.linux import iptables
from kube_router.linux.run import CommandError

log = logging.getLogger(__name__)

KUBE_IPVS_IF = "kube-ipvs0"
TABLES = ("nat", "filter", "mangle")
#: Fixed chains of kube-proxy's iptables and IPVS modes.
CHAINS = frozenset({
    "KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", "KUBE-FORWARD",
    "KUBE-EXTERNAL-SERVICES", "KUBE-PROXY-FIREWALL", "KUBE-PROXY-CANARY", "KUBE-NODE-PORT",
    "KUBE-LOAD-BALANCER", "KUBE-SOURCE-RANGES-FIREWALL", "KUBE-IPVS-FILTER",
    "KUBE-IPVS-OUT-FILTER",
})
#: Per-Service chains: services, endpoints, external, firewall, local (old and new).
CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SEP-", "KUBE-EXT-", "KUBE-FW-", "KUBE-XLB-",
                  "KUBE-SVL-")
#: ipsets of the IPVS mode; the IPv6 ones carry ``KUBE-6-`` in place of ``KUBE-``.
SETS = frozenset({
    "KUBE-CLUSTER-IP", "KUBE-LOOP-BACK", "KUBE-EXTERNAL-IP", "KUBE-EXTERNAL-IP-LOCAL",
    "KUBE-LOAD-BALANCER", "KUBE-LOAD-BALANCER-FW", "KUBE-LOAD-BALANCER-LOCAL",
    "KUBE-LOAD-BALANCER-SOURCE-IP", "KUBE-LOAD-BALANCER-SOURCE-CIDR",
    "KUBE-NODE-PORT-TCP", "KUBE-NODE-PORT-LOCAL-TCP", "KUBE-NODE-PORT-UDP",
    "KUBE-NODE-PORT-LOCAL-UDP", "KUBE-NODE-PORT-SCTP-HASH", "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
    "KUBE-HEALTH-CHECK-NODE-PORT", "KUBE-IPVS-IPS",
})
_JUMP = re.compile(r"(?:^|\s)-[jg]\s+(\S+)")


def is_kube_proxy_chain(name: str) -> bool:
    return name in CHAINS or name.startswith(CHAIN_PREFIXES)


def is_kube_proxy_set(name: str) -> bool:
    return name in SETS or ("KUBE-" + name.removeprefix("KUBE-6-")) in SETS


def removal_lines(saved: str) -> list[str]:
    """iptables-restore lines that take kube-proxy's chains out of one table's dump: the
    jumps to them from other chains, then the chains themselves."""
    ours = sorted(c for c in iptables.chains(saved) if is_kube_proxy_chain(c))
    if not ours:
        return []
    targets = set(ours)
    lines = []
    for line in saved.splitlines():
        if not line.startswith("-A "):
            continue
        chain, _, spec = line[3:].partition(" ")
        m = _JUMP.search(spec)
        if chain not in targets and m and m.group(1) in targets:
            lines.append(f"-D {chain} {spec}")
    lines += [f"-F {c}" for c in ours]
    lines += [f"-X {c}" for c in ours]
    return lines


def remove_chains() -> int:
    removed = 0
    for family in (4, 6):
        for table in TABLES:
            try:
                lines = removal_lines(iptables.save_sync(table, family))
                if lines:
                    iptables.restore_sync(table, lines, family)
            except CommandError as exc:  # no such table or family on this node
                log.info("kube-proxy chains skipped family=%d table=%s error=%s", family,
                         table, str(exc).splitlines()[0] if str(exc) else "")
                continue
            n = sum(1 for line in lines if line.startswith("-X "))
            if n:
                log.info("kube-proxy chains removed family=%d table=%s chains=%d", family,
                         table, n)
            removed += n
    return removed


def remove_sets() -> int:
    try:
        names = ipset.names_sync()
    except CommandError as exc:
        log.info("kube-proxy ipsets skipped error=%s", exc)
        return 0
    removed = 0
    for name in sorted(n for n in names if is_kube_proxy_set(n)):
        if ipset.destroy_sync(name):
            removed += 1
        else:
            log.warning("kube-proxy ipset kept name=%s reason=in-use", name)
    return removed


async def _ipvs_link_addresses() -> set[str]:
    from pyroute2 import AsyncIPRoute

    async with AsyncIPRoute() as ipr:
        found = await ipr.link_lookup(ifname=KUBE_IPVS_IF)
        if not found:
            return set()
        return {m.get("IFA_ADDRESS") async for m in await ipr.addr("dump")
                if m["index"] == found[0]}


def remove_ipvs(addresses: set[str]) -> int:
    from kube_router_proxy_ipvs.cleanup import delete_ipvs_services

    if not addresses:
        return 0
    return delete_ipvs_services(lambda key: key.addr in addresses, "kube-proxy")


async def cleanup() -> dict[str, int | bool]:
    from kube_router_proxy_ipvs.dummy_if import delete_link

    addresses = await _ipvs_link_addresses()
    services = await asyncio.to_thread(remove_ipvs, addresses)
    chains = await asyncio.to_thread(remove_chains)
    sets = await asyncio.to_thread(remove_sets)  # after the rules that matched them
    link = await delete_link(KUBE_IPVS_IF)
    return {"ipvs_services": services, "chains": chains, "ipsets": sets, "link": link}


def cmd_cleanup_kube_proxy(_config: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
    done = asyncio.run(cleanup())
    log.info("kube-proxy cleanup done " + " ".join(f"{k}={v}" for k, v in done.items()))
    return 0
