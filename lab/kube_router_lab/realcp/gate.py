"""When the lab on a real control plane has settled: what the real controllers and the
lab's kubelets still have to do. Which agents are behind is :mod:`kube_router_lab.versions`'
question, with :meth:`RemoteStore.placed` placing the versions."""

from __future__ import annotations

from typing import Any

from kube_router_lab.realcp.remote import RemoteStore


def _ready(pod: dict[str, Any]) -> bool:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def not_settled(store: RemoteStore, nodes: set[str]) -> str | None:
    """What the real controllers and the lab's kubelets still have to do (None: nothing)."""
    pods, _ = store.list("Pod")
    for p in pods:
        meta, spec = p.get("metadata") or {}, p.get("spec") or {}
        if meta.get("deletionTimestamp"):
            continue
        key = f"{meta.get('namespace')}/{meta.get('name')}"
        if not spec.get("nodeName"):
            return f"pod {key} not scheduled"
        if spec["nodeName"] in nodes and not (p.get("status") or {}).get("podIP"):
            return f"pod {key} has no IP yet"
    deployments, _ = store.list("Deployment")
    for d in deployments:
        meta, status = d.get("metadata") or {}, d.get("status") or {}
        want = (d.get("spec") or {}).get("replicas", 1)
        if (status.get("observedGeneration", 0) < meta.get("generation", 0)
                or status.get("updatedReplicas", 0) != want
                or status.get("replicas", 0) != want):
            return f"deployment {meta.get('namespace')}/{meta.get('name')} not rolled out"
    # Every Service with a selector: its slices hold exactly its ready pods' addresses.
    services, _ = store.list("Service")
    slices, _ = store.list("EndpointSlice")
    for svc in services:
        meta, spec = svc.get("metadata") or {}, svc.get("spec") or {}
        selector = spec.get("selector")
        if not selector:
            continue
        ns_ = meta.get("namespace")
        want_ips = {(p.get("status") or {}).get("podIP") for p in pods
                    if (p.get("metadata") or {}).get("namespace") == ns_
                    and not (p.get("metadata") or {}).get("deletionTimestamp")
                    and all(((p.get("metadata") or {}).get("labels") or {}).get(k) == v
                            for k, v in selector.items())
                    and _ready(p)}
        have_ips: set[str] = set()
        for s in slices:
            sm = s.get("metadata") or {}
            if sm.get("namespace") != ns_ or \
                    (sm.get("labels") or {}).get("kubernetes.io/service-name") != meta.get("name"):
                continue
            for ep in s.get("endpoints") or []:
                if (ep.get("conditions") or {}).get("ready"):
                    have_ips.update(ep.get("addresses") or [])
        if want_ips != have_ips:
            return f"endpoints of service {ns_}/{meta.get('name')} not current"
    return None
