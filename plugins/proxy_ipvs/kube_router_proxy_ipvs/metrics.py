"""kube-router's service metrics, read from IPVS when Prometheus scrapes."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.core import Metric

from kube_router_proxy_ipvs import ipvs_netlink as nl

if TYPE_CHECKING:
    from kube_router_proxy_ipvs.controller import ProxyController

log = logging.getLogger(__name__)

LABELS = ["svc_namespace", "service_name", "service_vip", "protocol", "port"]
STATS = {
    "service_total_connections": ("conns", "Total connections made to the service"),
    "service_packets_in": ("inpkts", "Packets received by the service"),
    "service_packets_out": ("outpkts", "Packets sent by the service"),
    "service_bytes_in": ("inbytes", "Bytes received by the service"),
    "service_bytes_out": ("outbytes", "Bytes sent by the service"),
    "service_pps_in": ("inpps", "Incoming packets per second"),
    "service_pps_out": ("outpps", "Outgoing packets per second"),
    "service_cps": ("cps", "Connections per second"),
    "service_bps_in": ("inbps", "Incoming bytes per second"),
    "service_bps_out": ("outbps", "Outgoing bytes per second"),
}


class IPVSCollector:
    """Dumps the IPVS table on each scrape (one netlink dump, no per-service calls)."""

    def __init__(self, controller: ProxyController) -> None:
        self.controller = controller
        self._sock: nl.IPVSSocket | None = None

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        families = {name: GaugeMetricFamily(f"kube_router_{name}", doc, labels=LABELS)
                    for name, (_, doc) in STATS.items()}
        owners: dict[nl.ServiceKey, str] = {}
        for svc_key, st in list(self.controller.svc_states.items()):
            for vs in st.servers:
                owners[vs.key] = svc_key
        try:
            if self._sock is None:
                self._sock = nl.IPVSSocket()
            dumped = self._sock.services()
        except OSError as exc:
            log.warning("cannot read ipvs stats error=%s", exc)
            self._sock = None
            dumped = []
        for svc in dumped:
            if svc.key is None or svc.key not in owners:
                continue
            ns, _, name = owners[svc.key].partition("/")
            labels = [ns, name, svc.key.addr, nl.PROTOCOL_NAMES.get(svc.key.protocol, "?"),
                      str(svc.key.port)]
            for metric, (attr, _) in STATS.items():
                families[metric].add_metric(labels, getattr(svc.stats, attr))
        yield from families.values()
        count = GaugeMetricFamily("kube_router_controller_ipvs_services",
                                  "IPVS services this node's proxy manages")
        count.add_metric([], len(owners))
        yield count
        export = GaugeMetricFamily("kube_router_controller_ipvs_metrics_export_time",
                                   "Seconds the last IPVS stats export took")
        export.add_metric([], time.monotonic() - started)
        yield export


def register_metrics(registry: CollectorRegistry, controller: ProxyController) -> None:
    registry.register(IPVSCollector(controller))
