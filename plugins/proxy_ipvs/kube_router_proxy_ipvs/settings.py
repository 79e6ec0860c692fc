"""The proxy's flags (kube-router's names and defaults) and the frozen settings built from
them once."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

from kube_router.errors import UsageError
from kube_router.flags import boolean
from kube_router.flags import cidr_list
from kube_router.flags import duration
from kube_router.settings import CoreSettings
from kube_router.settings import networks
from kube_router_proxy_ipvs.desired import Network
from kube_router_proxy_ipvs.desired import Settings

log = logging.getLogger(__name__)


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add the proxy's own flags; the shared ones (--service-cluster-ip-range, the address
    families, --service-node-port-range) are the core's."""
    g = parser.add_argument_group("proxy (IPVS service proxy)")

    def switch(flag: str, default: bool, text: str) -> None:
        g.add_argument(flag, type=boolean, nargs="?", const=True, default=default,
                       metavar="BOOL", help=f"{text} (default {str(default).lower()})")

    g.add_argument("--service-external-ip-range", type=cidr_list, action="append",
                   help="CIDRs externalIPs may come from")
    g.add_argument("--loadbalancer-ip-range", type=cidr_list, action="append",
                   help="CIDRs LoadBalancer ingress IPs may come from")
    switch("--strict-external-ip-validation", True,
           "ignore externalIPs/LB IPs outside the ranges above")
    g.add_argument("--ipvs-sync-period", type=duration, default=300.0, metavar="DURATION",
                   help="full IPVS reconcile period (default 5m)")
    switch("--ipvs-permit-all", True,
           "INPUT guard: accept service VIP:port, reject other traffic to VIPs")
    switch("--ipvs-graceful-termination", False,
           "drain removed real servers at weight 0 before deleting them")
    g.add_argument("--ipvs-graceful-period", type=duration, default=30.0, metavar="DURATION",
                   help="longest drain with --ipvs-graceful-termination (default 30s)")
    switch("--masquerade-all", False, "SNAT all IPVS NAT traffic, also from local pods")
    switch("--hairpin-mode", False, "hairpin SNAT for every Service (else per Service "
                                    "annotation)")
    switch("--nodeport-bindon-all-ip", False,
           "NodePort on every local address, not only the node's InternalIP")
    g.add_argument("--excluded-cidrs", type=cidr_list, action="append",
                   help="IPVS services in these CIDRs are never deleted")
    for kind, what in (("tcp", "idle TCP connections"), ("tcpfin", "TCP connections after "
                       "a FIN"), ("udp", "UDP flows")):
        g.add_argument(f"--service-{kind}-timeout", type=duration, default=0.0,
                       metavar="DURATION",
                       help=f"IPVS timeout of {what} (default 0s: keep the system's)")


def _timeout(seconds: float) -> int:
    # Whole seconds; a positive duration under a second becomes 1 (0 means "unchanged").
    return max(1, round(seconds)) if seconds > 0 else 0


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """The proxy's flags, checked and typed, with the core's shared ones it uses."""

    node_name: str
    service_cidrs: tuple[Network, ...]
    ipv4: bool
    ipv6: bool
    nodeport_range: tuple[int, int]
    external_ranges: tuple[Network, ...] = ()
    lb_ranges: tuple[Network, ...] = ()
    excluded: tuple[Network, ...] = ()
    strict_external: bool = True
    sync_period: float = 300.0  # seconds between full reconciles
    permit_all: bool = True
    graceful_termination: bool = False
    graceful_period: float = 30.0
    masquerade_all: bool = False
    hairpin_all: bool = False
    bind_all: bool = False  # NodePorts on every local address
    timeouts: tuple[int, int, int] = (0, 0, 0)  # tcp, tcpfin, udp; 0 keeps the system's

    @property
    def families(self) -> tuple[int, ...]:
        return tuple(f for f, on in ((4, self.ipv4), (6, self.ipv6)) if on)

    @classmethod
    def from_flags(cls, flags: argparse.Namespace, core: CoreSettings) -> ProxySettings:
        for flag in ("ipvs_sync_period", "ipvs_graceful_period"):
            if getattr(flags, flag) <= 0:
                name = "--" + flag.replace("_", "-")
                raise UsageError(f"{name} must be positive, got {getattr(flags, flag)}s")
        return cls(
            node_name=core.node_name,
            service_cidrs=core.service_cidrs,
            ipv4=core.ipv4,
            ipv6=core.ipv6,
            nodeport_range=core.nodeport_range,
            external_ranges=networks(flags.service_external_ip_range),
            lb_ranges=networks(flags.loadbalancer_ip_range),
            excluded=networks(flags.excluded_cidrs),
            strict_external=flags.strict_external_ip_validation,
            sync_period=float(flags.ipvs_sync_period),
            permit_all=flags.ipvs_permit_all,
            graceful_termination=flags.ipvs_graceful_termination,
            graceful_period=float(flags.ipvs_graceful_period),
            masquerade_all=flags.masquerade_all,
            hairpin_all=flags.hairpin_mode,
            bind_all=flags.nodeport_bindon_all_ip,
            timeouts=(_timeout(flags.service_tcp_timeout),
                      _timeout(flags.service_tcpfin_timeout),
                      _timeout(flags.service_udp_timeout)),
        )

    def desired(self) -> Settings:
        """What computing the desired IPVS state needs of these."""
        return Settings(
            node_name=self.node_name, service_cidrs=self.service_cidrs,
            external_ranges=self.external_ranges, lb_ranges=self.lb_ranges,
            excluded=self.excluded, strict_external=self.strict_external, ipv4=self.ipv4,
            ipv6=self.ipv6, nodeport_range=self.nodeport_range, hairpin_all=self.hairpin_all)
