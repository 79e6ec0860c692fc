"""Pod egress masquerade, with the original's sets and rule.

Traffic from a pod CIDR (any node's) to an address that is neither a pod CIDR nor a node
is masqueraded: inside the cluster pods see each other's real addresses.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging

from kube_router.linux import ipset
from kube_router.linux import iptables

log = logging.getLogger(__name__)

POD_SUBNETS_SET = "kube-router-pod-subnets"
NODE_IPS_SET = "kube-router-node-ips"
COMMENT = "kube-router-py pod egress masquerade"
_TMP_SUFFIX = "-rtmp"
RULE = (f"-m comment --comment \"{COMMENT}\" "
        f"-m set --match-set {POD_SUBNETS_SET} src "
        f"-m set ! --match-set {POD_SUBNETS_SET} dst "
        f"-m set ! --match-set {NODE_IPS_SET} dst -j MASQUERADE")


def _v4(items: set[str]) -> list[str]:
    out = []
    for i in sorted(items):
        try:
            if ipaddress.ip_network(i, strict=False).version == 4:
                out.append(i)
        except ValueError:
            continue
    return out


class PodEgress:
    def __init__(self) -> None:
        self._sets: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self._rule_checked = False

    async def sync(self, pod_cidrs: set[str], node_ips: set[str]) -> None:
        want = (tuple(_v4(pod_cidrs)), tuple(_v4(node_ips)))
        if want != self._sets:
            lines = ipset.swap_script(POD_SUBNETS_SET, "hash:net", want[0],
                                      tmp_suffix=_TMP_SUFFIX)
            lines += ipset.swap_script(NODE_IPS_SET, "hash:ip", want[1],
                                       tmp_suffix=_TMP_SUFFIX)
            await ipset.restore(lines)
            self._sets = want
            log.info("egress sets updated pod_subnets=%d node_ips=%d", len(want[0]),
                     len(want[1]))
        # The rule is checked on every full sync (cheap next to a routes sync period) in
        # case someone flushed POSTROUTING; added only when missing.
        saved = await iptables.save("nat")
        if not any(COMMENT in r for r in iptables.rules_of(saved, "POSTROUTING")):
            await iptables.restore("nat", [f"-A POSTROUTING {RULE}"])
            log.info("egress masquerade rule added chain=POSTROUTING")


async def cleanup_egress() -> None:
    saved = await iptables.save("nat")
    ours = [r for r in iptables.rules_of(saved, "POSTROUTING") if COMMENT in r]
    if ours:
        await iptables.restore("nat", [f"-D POSTROUTING {r}" for r in ours])
        log.info("cleanup egress rules removed=%d", len(ours))
    names = await asyncio.to_thread(ipset.names_sync)
    for name in (POD_SUBNETS_SET, NODE_IPS_SET, POD_SUBNETS_SET + _TMP_SUFFIX,
                 NODE_IPS_SET + _TMP_SUFFIX):
        if name in names:
            await asyncio.to_thread(ipset.destroy_sync, name)
