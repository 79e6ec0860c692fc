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
    from kube_router.status import StatusSection

log = logging.getLogger(__name__)


@hookimpl
def kube_router_add_options(parser: argparse.ArgumentParser) -> None:
    settings.add_options(parser)


@hookimpl
def kube_router_controllers(agent: Agent) -> list[Controller]:
    from kube_router_firewall_ipset.bridge import see_bridged_traffic
    from kube_router_firewall_ipset.controller import FirewallController
    from kube_router_firewall_ipset.metrics import FirewallMetrics

    cfg = settings.from_config(agent.config)
    see_bridged_traffic(cfg.families)
    controller = FirewallController(agent, cfg)
    controller.metrics = FirewallMetrics(agent.metrics.registry)
    return [controller]


@hookimpl
def kube_router_api_reads() -> list[str]:
    from kube_router_firewall_ipset.controller import FirewallController

    return list(FirewallController.kinds)


@hookimpl
def kube_router_cleanup(config: argparse.Namespace) -> None:
    from kube_router_firewall_ipset.cleanup import cleanup_sync

    cleanup_sync()


@hookimpl
def kube_router_status(config: argparse.Namespace) -> list[StatusSection]:
    from kube_router_firewall_ipset.status import status_sections

    return status_sections(config)
