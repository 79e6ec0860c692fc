"""Service addresses this node advertises to external peers (as host routes).

As the original: cluster IPs with ``--advertise-cluster-ip``, external IPs with
``--advertise-external-ip``, load balancer IPs with ``--advertise-loadbalancer-ip``; each
overridden per Service by ``kube-router.io/service.advertise.*`` annotations. An address
whose traffic policy is Local (internal policy for cluster IPs; external policy or the
``kube-router.io/service.local`` annotation for the others) is withheld by nodes without a
ready local endpoint, so traffic only comes to nodes that can serve it locally.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from kube_router.kube.kinds import SERVICE
from kube_router.kube.records import EndpointSlice
from kube_router.kube.records import Service
from kube_router.objwarn import ObjectWarnings

if TYPE_CHECKING:
    from kube_router_routing_bgp.settings import RouterSettings

log = logging.getLogger(__name__)
# each bad annotation once per Service, not at every sync
_warnings = ObjectWarnings(log, kind=SERVICE)

ANN_CLUSTER = "kube-router.io/service.advertise.clusterip"
ANN_EXTERNAL = "kube-router.io/service.advertise.externalip"
ANN_LB = "kube-router.io/service.advertise.loadbalancerip"
ANN_LOCAL = "kube-router.io/service.local"
ANN_SKIP_LB = "kube-router.io/service.skiplbips"
HEADLESS_LABEL = "service.kubernetes.io/headless"

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def enabled(config: RouterSettings) -> bool:
    """Whether Services must be watched at all."""
    return bool(config.advertise_cluster_ip or config.advertise_external_ip
                or config.advertise_loadbalancer_ip)


def _flag(svc: Service, annotation: str, default: bool) -> bool:
    value = svc.meta.annotations.get(annotation)
    if value is None:
        return default
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    _warnings.warn(svc.key, f"{annotation}={value}",
                   "invalid annotation ignored service=%s annotation=%s value=%r", svc.key,
                   annotation, value)
    return default


def has_local_endpoint(slices: Iterable[EndpointSlice], node: str) -> bool:
    return any(ep.ready and ep.node_name == node for s in slices for ep in s.endpoints)


def _host(address: str) -> str | None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    return f"{ip}/{ip.max_prefixlen}"


def service_vips(svc: Service, slices: Iterable[EndpointSlice], node: str,
                 config: RouterSettings) -> set[str]:
    """The host prefixes of ``svc`` this node should advertise."""
    if svc.headless or svc.type == "ExternalName" or HEADLESS_LABEL in svc.meta.labels:
        return set()
    slices = list(slices)
    local = None  # computed once, only if some address needs it

    def local_ok() -> bool:
        nonlocal local
        if local is None:
            local = has_local_endpoint(slices, node)
        return local

    out: set[str] = set()
    if _flag(svc, ANN_CLUSTER, config.advertise_cluster_ip) and (
            svc.internal_traffic_policy != "Local" or local_ok()):
        out.update(p for ip in svc.cluster_ips if (p := _host(ip)))
    external_local = (svc.external_traffic_policy == "Local"
                      or svc.meta.annotations.get(ANN_LOCAL, "").lower() == "true")
    if _flag(svc, ANN_EXTERNAL, config.advertise_external_ip) and (
            not external_local or local_ok()):
        out.update(p for ip in svc.external_ips if (p := _host(ip)))
    if (ANN_SKIP_LB not in svc.meta.annotations
            and _flag(svc, ANN_LB, config.advertise_loadbalancer_ip)
            and (not external_local or local_ok())):
        out.update(p for ip in svc.load_balancer_ips if (p := _host(ip)))
    return out
