"""kube-router-py: a Kubernetes networking agent built from plugins.

The core watches the Kubernetes API and broadcasts events; every feature (the IPVS proxy,
BGP routing, the firewall) is a plugin found through the ``kube_router.plugins`` entry-point
group. Plugins implement the hooks in :mod:`kube_router.hookspecs` with :data:`hookimpl`.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

import pluggy

PROJECT = "kube_router"
ENTRY_POINT_GROUP = "kube_router.plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

try:
    __version__ = _version("kube-router-py")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["ENTRY_POINT_GROUP", "PROJECT", "__version__", "hookimpl", "hookspec"]
