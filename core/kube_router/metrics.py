"""The agent's Prometheus metrics, named in kube-router's style (prefix ``kube_router_``).

Plugins register their own collectors on ``Metrics.registry``; the core fills the
per-controller and per-informer series below.
"""

from __future__ import annotations

import platform

from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import Gauge
from prometheus_client import Histogram
from prometheus_client import PlatformCollector
from prometheus_client import ProcessCollector

from kube_router import __version__

# Sync times range from a millisecond (one Service) to minutes (a cold sync at scale).
_SYNC_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        build = Gauge(
            "kube_router_build_info", "Build information",
            ["pythonversion", "version"], registry=self.registry,
        )
        build.labels(platform.python_version(), __version__).set(1)
        self.sync_seconds = Histogram(
            "kube_router_controller_sync_time", "Seconds a controller's sync took",
            ["controller"], buckets=_SYNC_BUCKETS, registry=self.registry,
        )
        self.sync_errors = Counter(
            "kube_router_controller_sync_errors", "Controller syncs that failed",
            ["controller"], registry=self.registry,
        )
        self.events_received = Counter(
            "kube_router_informer_events_received", "API events received, by kind",
            ["kind"], registry=self.registry,
        )
        self.relists = Counter(
            "kube_router_informer_relists", "Full relists after a watch expired (410 Gone)",
            ["kind"], registry=self.registry,
        )
