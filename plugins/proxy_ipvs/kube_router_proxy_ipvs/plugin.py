"""Entry point of the ``proxy`` plugin: hooks for the agent."""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import TYPE_CHECKING

from kube_router import hookimpl
from kube_router_proxy_ipvs import hookspecs
from kube_router_proxy_ipvs import settings

if TYPE_CHECKING:
    import pluggy

    from kube_router.agent import Agent
    from kube_router.controller import Controller
    from kube_router.settings import CoreSettings
    from kube_router.status import StatusSection

log = logging.getLogger(__name__)


@hookimpl
def kube_router_add_hookspecs(pluginmanager: pluggy.PluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


@hookimpl
def kube_router_add_options(parser: argparse.ArgumentParser) -> None:
    settings.add_options(parser)


@hookimpl
def kube_router_settings(config: argparse.Namespace, core: CoreSettings
                         ) -> settings.ProxySettings:
    return settings.ProxySettings.from_flags(config, core)


@hookimpl
def kube_router_controllers(agent: Agent, settings: settings.ProxySettings
                            ) -> list[Controller]:
    from kube_router_proxy_ipvs.controller import ProxyController
    from kube_router_proxy_ipvs.metrics import register_metrics
    from kube_router_proxy_ipvs.service_netfilter import ServiceNetfilter

    controller = ProxyController(agent, settings, ServiceNetfilter(settings))
    register_metrics(agent.metrics.registry, controller)
    return [controller]


@hookimpl
def kube_router_add_commands(subparsers: argparse._SubParsersAction) -> None:
    from kube_router_proxy_ipvs.kube_proxy_cleanup import cmd_cleanup_kube_proxy

    subparsers.add_parser(
        "cleanup-kube-proxy", help="remove kube-proxy's leftovers from this node",
        description="Remove kube-proxy's iptables chains (and the jumps to them), its "
                    "ipsets, the IPVS services on kube-ipvs0 and that link; nothing else. "
                    "Run it on every node after deleting kube-proxy's DaemonSet, before the "
                    "agent starts.").set_defaults(func=cmd_cleanup_kube_proxy)


@hookimpl
def kube_router_api_reads() -> list[str]:
    from kube_router_proxy_ipvs.controller import ProxyController

    return list(ProxyController.kinds)


@hookimpl
def kube_router_cleanup(config: argparse.Namespace, core: CoreSettings) -> None:
    from kube_router_proxy_ipvs.cleanup import cleanup

    asyncio.run(cleanup(settings.ProxySettings.from_flags(config, core)))


@hookimpl
def kube_router_status() -> list[StatusSection]:
    from kube_router_proxy_ipvs.status import status_sections

    return status_sections()
