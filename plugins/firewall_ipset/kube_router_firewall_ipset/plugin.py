"""Entry point of the ``firewall`` plugin: hooks for the agent."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from kube_router import hookimpl
from kube_router_firewall_ipset import settings

if TYPE_CHECKING:
    from kube_router.agent import Agent
    from kube_router.controller import Controller
    from kube_router.settings import CoreSettings
    from kube_router.status import StatusSection

log = logging.getLogger(__name__)


@hookimpl
def kube_router_add_options(parser: argparse.ArgumentParser) -> None:
    settings.add_options(parser)


@hookimpl
def kube_router_settings(config: argparse.Namespace, core: CoreSettings) -> settings.Settings:
    return settings.Settings.from_flags(config, core)


@hookimpl
def kube_router_controllers(agent: Agent, settings: settings.Settings) -> list[Controller]:
    from kube_router_firewall_ipset.bridge import see_bridged_traffic
    from kube_router_firewall_ipset.controller import FirewallController
    from kube_router_firewall_ipset.metrics import FirewallMetrics

    see_bridged_traffic(settings.families)
    controller = FirewallController(agent, settings)
    controller.metrics = FirewallMetrics(agent.metrics.registry)
    return [controller]


@hookimpl
def kube_router_api_reads() -> list[str]:
    from kube_router_firewall_ipset.controller import FirewallController

    return list(FirewallController.kinds)


@hookimpl
def kube_router_cleanup() -> None:
    from kube_router_firewall_ipset.cleanup import cleanup_sync

    cleanup_sync()


@hookimpl
def kube_router_status(core: CoreSettings) -> list[StatusSection]:
    from kube_router_firewall_ipset.status import status_sections

    return status_sections(core.node_name)
