"""Every hook the core calls, with its contract.

Hooks are called with keyword arguments only; an implementation may accept any subset of a
hook's parameters. A plugin implements them with :data:`kube_router.hookimpl`, in a module or
object named by its entry point in the ``kube_router.plugins`` group.

Hooks declare; the core drives. None of them may block on network I/O: they return objects
(controllers, status sections) that the core then runs.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from kube_router import hookspec

if TYPE_CHECKING:
    import pluggy

    from kube_router.agent import Agent
    from kube_router.controller import Controller
    from kube_router.settings import CoreSettings
    from kube_router.status import StatusSection

# -------------------------------------------------------------------------
# Initialization: called for every installed plugin, enabled or not
# -------------------------------------------------------------------------


@hookspec(historic=True)
def kube_router_add_hookspecs(pluginmanager: pluggy.PluginManager) -> None:
    """Let a plugin declare hooks of its own for other plugins to implement.

    Called once per plugin as it is registered, before options are parsed (historic: a
    plugin registered later still gets the call).

    :param pluginmanager: call ``pluginmanager.add_hookspecs(module)`` here.

    Use it when a plugin offers an extension point, as proxy_ipvs does for the choice of a
    Service's IPVS scheduler.
    """


@hookspec
def kube_router_add_options(parser: argparse.ArgumentParser) -> None:
    """Add command-line flags to the agent (the ``run`` command).

    Called for every installed plugin before the command line is parsed, so its flags are
    accepted whether or not the plugin is enabled. Use an argument group named after the
    plugin, and kube-router's own flag names where one exists.

    :param parser: the parser of the ``run`` command.
    """


@hookspec
def kube_router_add_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add a subcommand to ``kube-router-py``.

    Called for every installed plugin before parsing. The subcommand's parser should call
    ``set_defaults(func=callable)``; the callable receives the parsed namespace and returns
    the process exit status.

    :param subparsers: the top-level subparsers object.
    """


@hookspec
def kube_router_settings(config: argparse.Namespace, core: CoreSettings) -> object | None:
    """Build this plugin's settings from its flags, once.

    Called after parsing, before any informer starts, for enabled plugins only. Return a
    frozen object (a ``@dataclass(frozen=True)``) holding this plugin's flags in their
    checked, typed form; the core hands it back as ``settings`` to
    :func:`kube_router_controllers` and :func:`kube_router_status`. Raise
    :class:`kube_router.errors.UsageError` with a one-line message naming the flag on a bad
    value or combination; start-up then stops with exit status 2.

    :param config: the parsed flags, read-only (writing one raises). Read only the flags
        this plugin adds; what is shared (node name, Service CIDRs, address families,
        NodePort range) comes from ``core``.
    :param core: the core's settings.
    :return: this plugin's settings, or None when it has none.
    """


@hookspec
def kube_router_configure(config: argparse.Namespace, core: CoreSettings) -> None:
    """Check the parsed flags of an enabled plugin (kept for plugins written before
    :func:`kube_router_settings`, which both checks and builds).

    Called after parsing, before :func:`kube_router_settings`, for enabled plugins only.
    Raise :class:`kube_router.errors.UsageError` with a one-line message on an invalid flag
    combination; start-up then stops with exit status 2.

    :param config: the parsed flags, read-only (writing one raises).
    :param core: the core's settings; ``core.enabled`` names the enabled plugins.
    """


@hookspec
def kube_router_api_reads() -> list[str] | None:
    """Name every API kind this plugin's controllers may read, with any flags.

    Called for every installed plugin, without an agent or an API server: deployment
    manifests and their tests build the agent's ClusterRole (get, list, watch) from it. A
    plugin that runs controllers must implement it; the names are those of
    :data:`kube_router.kube.kinds.KINDS`, a superset of every controller's ``kinds``.

    :return: kind names, e.g. ``["Service", "EndpointSlice", "Node"]``.
    """


# -------------------------------------------------------------------------
# Running: called for enabled plugins only
# -------------------------------------------------------------------------


@hookspec
def kube_router_controllers(agent: Agent, settings: object) -> list[Controller] | None:
    """Return the controllers this plugin runs.

    Called once at start-up, for enabled plugins only, after :func:`kube_router_settings`.
    The core starts one informer for every kind the returned controllers list in
    ``Controller.kinds``, feeds them events through the bus, and drives their sync loops.

    :param agent: the running agent: its settings (``agent.settings``, the core's), the
        read-only flags (``agent.config``), stores, node name and hook relay.
    :param settings: what this plugin's :func:`kube_router_settings` returned (None without).
    :return: a list of :class:`kube_router.controller.Controller` (or None for none).
    """


@hookspec
def kube_router_cleanup(config: argparse.Namespace, core: CoreSettings) -> None:
    """Remove every kernel object this plugin made (``--cleanup-config``).

    Called for every installed plugin, without any API server. Must remove only what the
    plugin owns (by name prefix, comment or protocol number) and must succeed when there is
    nothing to remove. Exceptions are logged with the plugin's name and the other plugins'
    cleanups still run.

    :param config: the parsed flags, read-only.
    :param core: the core's settings.
    """


@hookspec
def kube_router_status(config: argparse.Namespace, core: CoreSettings, settings: object
                       ) -> list[StatusSection] | None:
    """Describe this plugin's live state for ``kube-router-py status``.

    Called for enabled plugins, on the node, outside the agent process: read the kernel
    (or gobgpd), not the agent's memory.

    :param config: the parsed flags, read-only.
    :param core: the core's settings (the node's name among them).
    :param settings: what this plugin's :func:`kube_router_settings` returned.
    :return: sections to print, each a titled table.
    """
