"""The lab's embedded Kubernetes API server (see the ``api`` package for the parts)."""

from kube_router_lab.api.errors import ApiError
from kube_router_lab.api.server import ApiServer
from kube_router_lab.api.store import ApiStore

__all__ = ["ApiError", "ApiServer", "ApiStore"]
