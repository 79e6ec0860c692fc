"""The API kinds the core can watch: where each is served and how it is decoded."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kube_router.kube import records


@dataclass(frozen=True, slots=True)
class Kind:
    name: str  # the API kind, e.g. "Service"
    path: str  # the list/watch path for all namespaces
    decode: Callable[[Mapping[str, Any]], records.Record]


SERVICE = "Service"
ENDPOINTSLICE = "EndpointSlice"
POD = "Pod"
NODE = "Node"
NAMESPACE = "Namespace"
NETWORKPOLICY = "NetworkPolicy"

KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind(SERVICE, "/api/v1/services", records.decode_service),
        Kind(ENDPOINTSLICE, "/apis/discovery.k8s.io/v1/endpointslices",
             records.decode_endpointslice),
        Kind(POD, "/api/v1/pods", records.decode_pod),
        Kind(NODE, "/api/v1/nodes", records.decode_node),
        Kind(NAMESPACE, "/api/v1/namespaces", records.decode_namespace),
        Kind(NETWORKPOLICY, "/apis/networking.k8s.io/v1/networkpolicies",
             records.decode_networkpolicy),
    )
}
