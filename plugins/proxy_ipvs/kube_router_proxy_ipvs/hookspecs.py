"""Hooks the proxy declares for other plugins (registered through kube_router_add_hookspecs)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from kube_router import hookspec

if TYPE_CHECKING:
    from kube_router.kube.records import Service
    from kube_router_proxy_ipvs.api import IPVSScheduler


@hookspec(firstresult=True)
def kube_router_ipvs_scheduler(
    service: Service, config: argparse.Namespace
) -> IPVSScheduler | None:
    """Choose the IPVS scheduler and scheduler flags of a Service's virtual servers.

    Called by the proxy whenever it computes a Service's desired state, for enabled plugins
    only; the first non-None answer wins.

    :param service: the Service record being synced.
    :param config: the agent's parsed flags, read-only.
    :return: an :class:`~kube_router_proxy_ipvs.api.IPVSScheduler`, or None to leave
        the choice to another plugin (round robin when nobody chooses). An unknown scheduler
        name is reported once per Service and replaced by ``rr``.
    """
