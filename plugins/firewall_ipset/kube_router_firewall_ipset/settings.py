"""The firewall's flags (kube-router's names) and the frozen settings built from them once.

Flags shared with another plugin (--enable-ipv6, --service-cluster-ip-range,
--service-node-port-range) are added only when no plugin added them yet, with the same
meaning, so the command line is the same whichever plugins are installed.
"""

from __future__ import annotations

import argparse
import ipaddress
from dataclasses import dataclass

from kube_router.flags import boolean
from kube_router.flags import cidr_list
from kube_router.flags import duration
from kube_router.flags import port_range

DEFAULT_SERVICE_CIDR = "10.96.0.0/12"




def add_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("firewall (NetworkPolicy with iptables and ipset)")
    known = set(getattr(parser, "_option_string_actions", {}))

    def add(flag: str, **kw: object) -> None:
        if flag not in known:
            g.add_argument(flag, **kw)  # type: ignore[arg-type]

    add("--iptables-sync-period", type=duration, default=300.0,
        help="full reconcile of the firewall's chains and sets (default 5m)")
    add("--enable-ipv4", type=boolean, nargs="?", const=True, default=True)
    add("--enable-ipv6", type=boolean, nargs="?", const=True, default=False)
    add("--service-cluster-ip-range", type=cidr_list, action="append",
        help="Service cluster IP CIDRs, comma-separated (default 10.96.0.0/12)")
    add("--service-node-port-range", type=port_range, default=(30000, 32767),
        help="NodePort range (default 30000-32767)")


@dataclass(frozen=True, slots=True)
class Settings:
    families: tuple[int, ...]  # 4 and/or 6
    sync_period: float  # seconds between full reconciles
    service_cidrs: tuple[str, ...]  # pods reaching a VIP are judged at the real server
    nodeport_range: tuple[int, int]


def from_config(cfg: argparse.Namespace) -> Settings:
    families = tuple(f for f, on in ((4, getattr(cfg, "enable_ipv4", True)),
                                     (6, getattr(cfg, "enable_ipv6", False))) if on)
    cidrs: list[str] = []
    for v in getattr(cfg, "service_cluster_ip_range", None) or ():
        cidrs.extend(v if isinstance(v, list) else [v])
    nets = [ipaddress.ip_network(c, strict=False) for c in cidrs or [DEFAULT_SERVICE_CIDR]]
    return Settings(
        families=families,
        sync_period=float(getattr(cfg, "iptables_sync_period", 300.0)),
        service_cidrs=tuple(str(n) for n in nets),
        nodeport_range=tuple(getattr(cfg, "service_node_port_range", (30000, 32767))),
    )
