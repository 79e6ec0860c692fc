"""kube-router's routing metrics, under the original's names."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import Gauge
from prometheus_client import Histogram

_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60)


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.peer_info = Gauge(
            "kube_router_bgp_peer_info", "BGP peers: 1 per peer, labelled with its state",
            ["address", "type", "asn", "state"], registry=registry)
        self.received = Counter(
            "kube_router_controller_bgp_advertisements_received",
            "Best-path updates received from gobgpd", registry=registry)
        self.sent = Counter(
            "kube_router_controller_bgp_advertisements_sent",
            "Paths advertised or withdrawn", ["type"], registry=registry)
        self.internal_peers_sync_time = Histogram(
            "kube_router_controller_bgp_internal_peers_sync_time",
            "Seconds to bring the node peers in line", buckets=_BUCKETS, registry=registry)
        self.routes_sync_time = Histogram(
            "kube_router_controller_routes_sync_time",
            "Seconds a routing controller sync took", buckets=_BUCKETS, registry=registry)
        self.host_sync_time = Histogram(
            "kube_router_host_routes_sync_time",
            "Seconds to reconcile the learned kernel routes", buckets=_BUCKETS,
            registry=registry)
        self.synced = Gauge(
            "kube_router_host_routes_synced", "Learned routes in the kernel", registry=registry)
        self.added = Counter(
            "kube_router_host_routes_added", "Learned routes written to the kernel",
            registry=registry)
        self.removed = Counter(
            "kube_router_host_routes_removed", "Learned routes removed from the kernel",
            registry=registry)
