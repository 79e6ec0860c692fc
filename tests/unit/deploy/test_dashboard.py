"""The Grafana dashboard queries only metrics the agent exports: the core's and the
plugins' collectors are built for real here, and every name a query uses must be among
the sample names they produce."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from kube_router.metrics import Metrics

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "daemonset" / "grafana-dashboard.json"
METRIC = re.compile(r"\b((?:kube_router|process)_[a-z0-9_]+)\b")


def exported_names() -> set[str]:
    registry = CollectorRegistry()
    Metrics(registry)
    try:
        from kube_router_routing_bgp.metrics import RouterMetrics

        RouterMetrics(registry)
    except ImportError:
        pass
    try:
        from kube_router_proxy_ipvs.metrics import register_metrics

        # a proxy that manages no service: the collector still names every family
        register_metrics(registry, SimpleNamespace(svc_states={}))  # type: ignore[arg-type]
    except ImportError:
        pass
    names = set()
    for family in registry.collect():
        names.add(family.name)
        names |= {s.name for s in family.samples}
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
    return names


def queries() -> list[tuple[str, str]]:
    doc = json.loads(DASHBOARD.read_text())
    out = [(p["title"], t["expr"]) for p in doc["panels"] for t in p.get("targets", [])]
    out += [(f"variable {v['name']}", v["query"]) for v in doc["templating"]["list"]
            if v.get("type") == "query"]
    return out


def test_the_dashboard_has_panels_for_each_part() -> None:
    used = {m for _, expr in queries() for m in METRIC.findall(expr)}
    for part in ("kube_router_controller_sync_time", "kube_router_service_",
                 "kube_router_bgp_peer_info", "kube_router_host_routes_"):
        assert any(u.startswith(part) for u in used), part


@pytest.mark.parametrize(("title", "expr"), queries(), ids=[t for t, _ in queries()])
def test_every_queried_metric_exists(title: str, expr: str) -> None:
    names = exported_names()
    used = METRIC.findall(expr)
    assert used, f"{title}: no metric in {expr!r}"
    missing = sorted(set(used) - names)
    assert not missing, f"{title}: not exported by the agent: {missing}"
