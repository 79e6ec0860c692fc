"""The ``router`` plugin's hooks: flags, controller, cleanup and status."""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import TYPE_CHECKING

import kube_router
from kube_router.errors import UsageError
from kube_router_routing_bgp import desired
from kube_router_routing_bgp import settings
from kube_router_routing_bgp.settings import RouterSettings

if TYPE_CHECKING:
    from kube_router.agent import Agent
    from kube_router.controller import Controller
    from kube_router.settings import CoreSettings
    from kube_router.status import StatusSection

log = logging.getLogger(__name__)


@kube_router.hookimpl
def kube_router_add_options(parser: argparse.ArgumentParser) -> None:
    settings.add_options(parser)


@kube_router.hookimpl
def kube_router_settings(config: argparse.Namespace, core: CoreSettings) -> RouterSettings:
    built = RouterSettings.from_flags(config, core)
    try:
        desired.external_peers(built, "")  # the --peer-router-* lists agree
    except (desired.PeerFlagsError, OSError) as exc:
        raise UsageError(str(exc)) from None
    return built


@kube_router.hookimpl
def kube_router_controllers(agent: Agent, settings: RouterSettings) -> list[Controller]:
    from kube_router_routing_bgp.controller import RouterController

    return [RouterController(agent, settings)]


@kube_router.hookimpl
def kube_router_api_reads() -> list[str]:
    from kube_router_routing_bgp.controller import ADVERTISING_KINDS

    return list(ADVERTISING_KINDS)


@kube_router.hookimpl
def kube_router_cleanup(config: argparse.Namespace) -> None:
    from kube_router_routing_bgp.cleanup import cleanup

    # Only the CNI directory is needed, and a cleanup must not stop at an unrelated bad flag.
    asyncio.run(cleanup(config.cni_conf_dir))


@kube_router.hookimpl
def kube_router_status(settings: RouterSettings) -> list[StatusSection]:
    from kube_router_routing_bgp.status import status

    return asyncio.run(status(settings))
