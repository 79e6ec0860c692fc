"""The router's flags (kube-router's names and defaults) and the frozen settings built from
them once."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from kube_router.errors import UsageError
from kube_router.flags import boolean
from kube_router.flags import duration
from kube_router.settings import CoreSettings
from kube_router.settings import Network


def _list(value: str) -> list[str]:
    return [x.strip() for x in value.split(",") if x.strip()]


def _positional(value: str) -> list[str]:
    # Empty entries stay: "c2VjcmV0,," gives the first of three peers a password.
    return [x.strip() for x in value.split(",")]


def add_options(parser: argparse.ArgumentParser) -> None:
    """The router's own flags; the Service CIDRs and the node name are the core's."""
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


@dataclass(frozen=True, slots=True)
class RouterSettings:
    """The router's flags, checked and typed (field names are the flags'), with the core's
    Service CIDRs (routes into them are never accepted from peers)."""

    service_cidrs: tuple[Network, ...]
    routes_sync_period: float
    injected_routes_sync_period: float
    enable_cni: bool
    cni_conf_dir: str
    cni_ipam_data_dir: str
    auto_mtu: bool
    enable_pod_egress: bool
    enable_overlay: bool
    overlay_type: str
    enable_ibgp: bool
    nodes_full_mesh: bool
    cluster_asn: int
    advertise_pod_cidr: bool
    advertise_cluster_ip: bool
    advertise_external_ip: bool
    advertise_loadbalancer_ip: bool
    override_nexthop: bool
    peer_router_ips: tuple[str, ...]
    peer_router_asns: tuple[str, ...]
    peer_router_ports: tuple[str, ...]
    peer_router_passwords: tuple[str, ...]
    peer_router_passwords_file: str
    peer_router_multihop_ttl: int
    router_id: str
    bgp_port: int
    bgp_holdtime: int  # whole seconds, as BGP carries it
    bgp_graceful_restart: bool
    bgp_graceful_restart_time: int
    gobgp_admin_address: str
    gobgp_admin_port: int
    gobgpd_path: str

    @classmethod
    def from_flags(cls, flags: argparse.Namespace, core: CoreSettings) -> RouterSettings:
        """Check the router's flags, each on its own; a bad one raises :class:`UsageError`
        naming it. (The peer lists are checked together by the plugin's settings hook.)"""
        if not 3 <= flags.bgp_holdtime <= 65535:
            raise UsageError(f"--bgp-holdtime must be from 3s to 65535s, got {flags.bgp_holdtime}")
        if not 0 <= flags.bgp_graceful_restart_time <= 4095:
            raise UsageError("--bgp-graceful-restart-time must be from 0s to 4095s, "
                             f"got {flags.bgp_graceful_restart_time}")
        for flag in ("bgp_port", "gobgp_admin_port"):
            if not 0 <= getattr(flags, flag) <= 65535:
                raise UsageError(f"--{flag.replace('_', '-')} must be from 0 to 65535, "
                                 f"got {getattr(flags, flag)}")
        for flag in ("routes_sync_period", "injected_routes_sync_period"):
            if getattr(flags, flag) <= 0:
                raise UsageError(f"--{flag.replace('_', '-')} must be positive, "
                                 f"got {getattr(flags, flag)}s")
        return cls(
            service_cidrs=core.service_cidrs,
            routes_sync_period=float(flags.routes_sync_period),
            injected_routes_sync_period=float(flags.injected_routes_sync_period),
            enable_cni=flags.enable_cni,
            cni_conf_dir=flags.cni_conf_dir,
            cni_ipam_data_dir=flags.cni_ipam_data_dir,
            auto_mtu=flags.auto_mtu,
            enable_pod_egress=flags.enable_pod_egress,
            enable_overlay=flags.enable_overlay,
            overlay_type=flags.overlay_type,
            enable_ibgp=flags.enable_ibgp,
            nodes_full_mesh=flags.nodes_full_mesh,
            cluster_asn=flags.cluster_asn,
            advertise_pod_cidr=flags.advertise_pod_cidr,
            advertise_cluster_ip=flags.advertise_cluster_ip,
            advertise_external_ip=flags.advertise_external_ip,
            advertise_loadbalancer_ip=flags.advertise_loadbalancer_ip,
            override_nexthop=flags.override_nexthop,
            peer_router_ips=tuple(flags.peer_router_ips),
            peer_router_asns=tuple(flags.peer_router_asns),
            peer_router_ports=tuple(flags.peer_router_ports),
            peer_router_passwords=tuple(flags.peer_router_passwords),
            peer_router_passwords_file=flags.peer_router_passwords_file,
            peer_router_multihop_ttl=flags.peer_router_multihop_ttl,
            router_id=flags.router_id,
            bgp_port=flags.bgp_port,
            bgp_holdtime=int(flags.bgp_holdtime),
            bgp_graceful_restart=flags.bgp_graceful_restart,
            bgp_graceful_restart_time=int(flags.bgp_graceful_restart_time),
            gobgp_admin_address=flags.gobgp_admin_address,
            gobgp_admin_port=flags.gobgp_admin_port,
            gobgpd_path=flags.gobgpd_path,
        )
