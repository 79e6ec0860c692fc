"""The proxy's flags (kube-router's names and defaults) and their parsed form."""

from __future__ import annotations

import argparse
import ipaddress
import logging

from kube_router.flags import boolean
from kube_router.flags import cidr_list
from kube_router.flags import duration
from kube_router.flags import port_range
from kube_router_proxy_ipvs.desired import Network
from kube_router_proxy_ipvs.desired import Settings

log = logging.getLogger(__name__)




def _flatten(values: list | None) -> list[str]:
    out: list[str] = []
    for v in values or ():
        out.extend(v if isinstance(v, list) else [v])
    return out


def _nets(values: list | None) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in _flatten(values))


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add the proxy's flags; a flag another plugin already added (shared kube-router flags
    such as --service-cluster-ip-range) is left as that plugin defined it."""
    g = parser.add_argument_group("proxy (IPVS service proxy)")
    known = set(getattr(parser, "_option_string_actions", {}))

    def add(flag: str, **kw: object) -> None:
        if flag not in known:
            g.add_argument(flag, **kw)  # type: ignore[arg-type]

    add("--service-cluster-ip-range", type=cidr_list, action="append",
        help="Service cluster IP CIDRs, comma-separated (default 10.96.0.0/12)")
    add("--service-external-ip-range", type=cidr_list, action="append",
        help="CIDRs externalIPs may come from")
    add("--loadbalancer-ip-range", type=cidr_list, action="append",
        help="CIDRs LoadBalancer ingress IPs may come from")
    add("--strict-external-ip-validation", type=boolean, nargs="?", const=True, default=True,
        help="ignore externalIPs/LB IPs outside the ranges above (default true)")
    add("--service-node-port-range", type=port_range, default=(30000, 32767),
        help="NodePort range (default 30000-32767)")
    add("--enable-ipv4", type=boolean, nargs="?", const=True, default=True)
    add("--enable-ipv6", type=boolean, nargs="?", const=True, default=False)
    add("--ipvs-sync-period", type=duration, default=300.0,
        help="full IPVS reconcile period (default 5m)")
    add("--ipvs-permit-all", type=boolean, nargs="?", const=True, default=True,
        help="INPUT guard: accept service VIP:port, reject other traffic to VIPs (default true)")
    add("--ipvs-graceful-termination", type=boolean, nargs="?", const=True, default=False,
        help="drain removed real servers at weight 0 before deleting them")
    add("--ipvs-graceful-period", type=duration, default=30.0,
        help="longest drain with --ipvs-graceful-termination (default 30s)")
    add("--masquerade-all", type=boolean, nargs="?", const=True, default=False,
        help="SNAT all IPVS NAT traffic, also from local pods")
    add("--hairpin-mode", type=boolean, nargs="?", const=True, default=False,
        help="hairpin SNAT for every Service (else per Service annotation)")
    add("--nodeport-bindon-all-ip", type=boolean, nargs="?", const=True, default=False,
        help="NodePort on every local address, not only the node's InternalIP")
    add("--excluded-cidrs", type=cidr_list, action="append",
        help="IPVS services in these CIDRs are never deleted")
    add("--service-tcp-timeout", type=duration, default=0.0,
        help="IPVS timeout of idle TCP connections (default 0s: keep the system's)")
    add("--service-tcpfin-timeout", type=duration, default=0.0,
        help="IPVS timeout of TCP connections after a FIN (default 0s: keep the system's)")
    add("--service-udp-timeout", type=duration, default=0.0,
        help="IPVS timeout of UDP flows (default 0s: keep the system's)")


def ipvs_timeouts(cfg: argparse.Namespace) -> tuple[int, int, int]:
    """(tcp, tcpfin, udp) whole seconds; 0 keeps the system's value. A positive duration
    under a second becomes 1 (0 would silently mean "unchanged")."""
    out = []
    for name in ("service_tcp_timeout", "service_tcpfin_timeout", "service_udp_timeout"):
        v = float(getattr(cfg, name, 0.0) or 0.0)
        out.append(max(1, round(v)) if v > 0 else 0)
    return out[0], out[1], out[2]


def settings_from_config(cfg: argparse.Namespace, node_name: str) -> Settings:
    cidrs = _nets(getattr(cfg, "service_cluster_ip_range", None)) or (
        ipaddress.ip_network("10.96.0.0/12"),)
    return Settings(
        node_name=node_name,
        service_cidrs=cidrs,
        external_ranges=_nets(getattr(cfg, "service_external_ip_range", None)),
        lb_ranges=_nets(getattr(cfg, "loadbalancer_ip_range", None)),
        excluded=_nets(getattr(cfg, "excluded_cidrs", None)),
        strict_external=bool(getattr(cfg, "strict_external_ip_validation", True)),
        ipv4=bool(getattr(cfg, "enable_ipv4", True)),
        ipv6=bool(getattr(cfg, "enable_ipv6", False)),
        nodeport_range=tuple(getattr(cfg, "service_node_port_range", (30000, 32767))),
        hairpin_all=bool(getattr(cfg, "hairpin_mode", False)),
    )
