"""The resource kinds the lab's API serves, and where each lives in the URL space."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Resource:
    kind: str
    group: str  # "" for the core group
    version: str
    plural: str
    namespaced: bool
    has_status: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"


RESOURCES: tuple[Resource, ...] = (
    Resource("Namespace", "", "v1", "namespaces", False),
    Resource("Node", "", "v1", "nodes", False),
    Resource("Pod", "", "v1", "pods", True),
    Resource("Service", "", "v1", "services", True),
    Resource("Endpoints", "", "v1", "endpoints", True, has_status=False),
    Resource("Secret", "", "v1", "secrets", True, has_status=False),
    Resource("ConfigMap", "", "v1", "configmaps", True, has_status=False),
    Resource("EndpointSlice", "discovery.k8s.io", "v1", "endpointslices", True,
             has_status=False),
    Resource("NetworkPolicy", "networking.k8s.io", "v1", "networkpolicies", True,
             has_status=False),
    Resource("Deployment", "apps", "v1", "deployments", True),
)

BY_KIND: dict[str, Resource] = {r.kind: r for r in RESOURCES}
# (group, version, plural) -> resource, for routing URLs
BY_PATH: dict[tuple[str, str, str], Resource] = {
    (r.group, r.version, r.plural): r for r in RESOURCES
}


def group_versions() -> dict[str, list[Resource]]:
    """Resources grouped by "group/version" ("v1" for the core group), in table order."""
    out: dict[str, list[Resource]] = {}
    for r in RESOURCES:
        out.setdefault(r.api_version, []).append(r)
    return out
