"""The firewall's flags (kube-router's names) and the frozen settings built from them once.

The shared flags it reads (the address families, --service-cluster-ip-range,
--service-node-port-range) are the core's; they come from the core's settings.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from kube_router.errors import UsageError
from kube_router.flags import duration
from kube_router.settings import CoreSettings


def add_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("firewall (NetworkPolicy with iptables and ipset)")
    g.add_argument("--iptables-sync-period", type=duration, default=300.0, metavar="DURATION",
                   help="full reconcile of the firewall's chains and sets (default 5m)")


@dataclass(frozen=True, slots=True)
class Settings:
    families: tuple[int, ...]  # 4 and/or 6
    sync_period: float  # seconds between full reconciles
    service_cidrs: tuple[str, ...]  # pods reaching a VIP are judged at the real server
    nodeport_range: tuple[int, int]

    @classmethod
    def from_flags(cls, flags: argparse.Namespace, core: CoreSettings) -> Settings:
        if flags.iptables_sync_period <= 0:
            raise UsageError(f"--iptables-sync-period must be positive, "
                             f"got {flags.iptables_sync_period}s")
        return cls(
            families=core.families,
            sync_period=float(flags.iptables_sync_period),
            service_cidrs=tuple(str(n) for n in core.service_cidrs),
            nodeport_range=core.nodeport_range,
        )
