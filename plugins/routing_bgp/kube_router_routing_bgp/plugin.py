"""The ``router`` plugin's hooks: flags, controller, cleanup and status."""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import TYPE_CHECKING

import kube_router
from kube_router.errors import UsageError
from kube_router.flags import boolean
from kube_router.flags import duration

if TYPE_CHECKING:
    from kube_router.agent import Agent
    from kube_router.controller import Controller
    from kube_router.status import StatusSection

log = logging.getLogger(__name__)


def _list(value: str) -> list[str]:
    return [x.strip() for x in value.split(",") if x.strip()]


def _positional(value: str) -> list[str]:
    # Empty entries stay: "c2VjcmV0,," gives the first of three peers a password.
    return [x.strip() for x in value.split(",")]


@kube_router.hookimpl
def kube_router_add_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("router (BGP pod routing, kube-router's --run-router)")

    def flag(name: str, default: bool, text: str) -> None:
        g.add_argument(name, type=boolean, nargs="?", const=True, default=default,
                       metavar="BOOL", help=f"{text} (default {str(default).lower()})")

    g.add_argument("--routes-sync-period", type=duration, default=300.0, metavar="DURATION",
                   help="full resync of peers, paths and the pod network (default 5m)")
    g.add_argument("--injected-routes-sync-period", type=duration, default=60.0,
                   metavar="DURATION",
                   help="re-check of the learned routes in the kernel (default 60s)")
    flag("--enable-cni", True, "write the CNI bridge configuration and create kube-bridge")
    g.add_argument("--cni-conf-dir", default="/etc/cni/net.d",
                   help="where 10-kuberouter.conflist is written (default /etc/cni/net.d)")
    g.add_argument("--cni-ipam-data-dir", default="",
                   help="host-local IPAM dataDir in the CNI config (default: the plugin's)")
    flag("--auto-mtu", True, "take the bridge and pod MTU from the node's interface")
    flag("--enable-pod-egress", True, "masquerade pod traffic leaving the cluster")
    flag("--enable-overlay", True, "IPIP tunnels to nodes in other subnets")
    g.add_argument("--overlay-type", choices=("subnet", "full"), default="subnet",
                   help="subnet: tunnel only to nodes in other subnets; full: to every node")
    flag("--enable-ibgp", True, "peer with the other nodes")
    flag("--nodes-full-mesh", True,
         "peer with every node; false: only nodes with the same kube-router.io/node.asn")
    g.add_argument("--cluster-asn", type=int, default=64512, help="the cluster's ASN")
    flag("--advertise-pod-cidr", True, "advertise the pod CIDR to external peers")
    flag("--advertise-cluster-ip", False, "advertise cluster IPs to external peers")
    flag("--advertise-external-ip", False, "advertise external IPs to external peers")
    flag("--advertise-loadbalancer-ip", False, "advertise load balancer IPs to external peers")
    flag("--override-nexthop", False, "next-hop-self towards external peers")
    g.add_argument("--peer-router-ips", type=_list, action="extend", default=[],
                   help="external BGP routers every node peers with (comma list)")
    g.add_argument("--peer-router-asns", type=_list, action="extend", default=[],
                   help="their ASNs, in the same order")
    g.add_argument("--peer-router-ports", type=_list, action="extend", default=[],
                   help="their ports (default --bgp-port)")
    g.add_argument("--peer-router-passwords", type=_positional, action="extend", default=[],
                   help="base64 MD5 passwords, in the same order")
    g.add_argument("--peer-router-passwords-file", default="",
                   help="file of base64 passwords (the flag above wins)")
    g.add_argument("--peer-router-multihop-ttl", type=int, default=0,
                   help="eBGP multihop TTL for external peers (used when >= 2)")
    g.add_argument("--router-id", default="", help="BGP router id (default: the node IP)")
    g.add_argument("--bgp-port", type=int, default=179)
    g.add_argument("--bgp-holdtime", type=duration, default=90.0, metavar="DURATION")
    flag("--bgp-graceful-restart", False, "BGP graceful restart")
    g.add_argument("--bgp-graceful-restart-time", type=duration, default=90.0,
                   metavar="DURATION")
    g.add_argument("--gobgp-admin-address", default="127.0.0.1",
                   help="address of gobgpd's gRPC API (the gobgp CLI's target)")
    g.add_argument("--gobgp-admin-port", type=int, default=50051,
                   help="port of gobgpd's gRPC API; 0 keeps it on a private unix socket")
    g.add_argument("--gobgpd-path", default="gobgpd", help="the gobgpd program")


@kube_router.hookimpl
def kube_router_configure(config: argparse.Namespace) -> None:
    from kube_router_routing_bgp import desired

    if not 3 <= config.bgp_holdtime <= 65535:
        raise UsageError(f"--bgp-holdtime must be from 3s to 65535s, got {config.bgp_holdtime}")
    if config.bgp_graceful_restart_time > 4095:
        raise UsageError("--bgp-graceful-restart-time must be at most 4095s")
    try:
        desired.external_peers(config, "")
    except (desired.PeerFlagsError, OSError) as exc:
        raise UsageError(str(exc)) from None
    config.bgp_holdtime = int(config.bgp_holdtime)
    config.bgp_graceful_restart_time = int(config.bgp_graceful_restart_time)


@kube_router.hookimpl
def kube_router_controllers(agent: Agent) -> list[Controller]:
    from kube_router_routing_bgp.controller import RouterController

    return [RouterController(agent)]


@kube_router.hookimpl
def kube_router_api_reads() -> list[str]:
    from kube_router_routing_bgp.controller import ADVERTISING_KINDS

    return list(ADVERTISING_KINDS)


@kube_router.hookimpl
def kube_router_cleanup(config: argparse.Namespace) -> None:
    from kube_router_routing_bgp.cleanup import cleanup

    asyncio.run(cleanup(config))


@kube_router.hookimpl
def kube_router_status(config: argparse.Namespace) -> list[StatusSection]:
    from kube_router_routing_bgp.status import status

    return asyncio.run(status(config))
