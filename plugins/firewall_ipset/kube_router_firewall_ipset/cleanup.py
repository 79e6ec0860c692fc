"""``--cleanup-config``: remove the firewall's jumps, chains and sets, and nothing else.

Our objects are known by name (``KUBE-ROUTER-FORWARD/INPUT/OUTPUT``, ``KUBE-NWPLCY-*``,
``KUBE-POD-FW-*``, ``KUBE-SRC-*``, ``KUBE-DST-*``); a foreign chain or set, even one using
a similar name, survives. Both families are cleaned whatever the flags say now.
"""

from __future__ import annotations

import logging

from kube_router.linux import ipset
from kube_router.linux import iptables
from kube_router_firewall_ipset import naming as nm
from kube_router_firewall_ipset.render import builtin_jump

log = logging.getLogger(__name__)


def cleanup_sync() -> tuple[int, int]:
    """Return (chains, sets) removed."""
    chains = sets = 0
    for family in (4, 6):
        try:
            saved = iptables.save_sync("filter", family)
        except Exception as exc:
            log.info("no iptables to clean family=ipv%d error=%s", family, exc)
            continue
        ours = sorted(c for c in iptables.chains(saved) if nm.owned_chain(c))
        lines = []
        for b in nm.TOP_CHAINS:
            jump = builtin_jump(b)
            lines += [f"-D {b} {jump}" for r in iptables.rules_of(saved, b) if r == jump]
        lines += [f":{c} - [0:0]" for c in ours]
        lines += [f"-X {c}" for c in ours]
        if lines:
            iptables.restore_sync("filter", lines, family)
        chains += len(ours)
    try:
        found = ipset.parse_save(ipset.save_sync(), nm.owned_set)
    except Exception as exc:
        log.info("no ipsets to clean error=%s", exc)
        found = {}
    for name in sorted(found):
        if ipset.destroy_sync(name):
            sets += 1
        else:
            log.warning("cannot destroy ipset name=%s (still referenced)", name)
    log.info("firewall cleanup done chains=%d sets=%d", chains, sets)
    return chains, sets
