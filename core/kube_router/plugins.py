"""Plugin discovery: the ``kube_router.plugins`` entry-point group, and enabling by name.

stevedore loads the group's modules by name (a blocked one is never imported) and pluggy
registers each. Every installed plugin is registered (so its flags and subcommands exist);
only enabled ones get the running hooks (controllers, configure, status). A plugin that
fails to import stops start-up with its name, rather than silently running without it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any
from typing import NoReturn

import pluggy
from stevedore import NamedExtensionManager

from kube_router import ENTRY_POINT_GROUP
from kube_router import PROJECT
from kube_router import hookspecs
from kube_router.errors import PluginLoadError

#: Set to 1 to load no plugin from entry points (like PYTEST_DISABLE_PLUGIN_AUTOLOAD).
DISABLE_AUTOLOAD_ENV = "KUBE_ROUTER_DISABLE_PLUGIN_AUTOLOAD"


@dataclass(frozen=True)
class PluginInfo:
    name: str
    distribution: str
    version: str
    module: str
    agent: bool  # takes part in running the agent (not only a subcommand): enable-able


def new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    # Historic: each plugin gets the call as it is registered, before its hookimpls for
    # other plugins' hooks are checked.
    pm.hook.kube_router_add_hookspecs.call_historic(kwargs={"pluginmanager": pm})
    return pm


def load(pm: pluggy.PluginManager, blocked: Iterable[str] = ()) -> dict[str, PluginInfo]:
    """Register every plugin of the entry-point group but the blocked ones; return their
    descriptions by name."""
    for name in blocked:
        pm.set_blocked(name)
    if os.environ.get(DISABLE_AUTOLOAD_ENV):
        return {}
    # The metadata names each plugin's distribution; stevedore's entry points do not.
    dists = {ep.name: ep.dist for ep in entry_points(group=ENTRY_POINT_GROUP)}
    wanted = sorted(n for n in dists if not pm.is_blocked(n) and pm.get_plugin(n) is None)
    manager: NamedExtensionManager[Any] = NamedExtensionManager(
        ENTRY_POINT_GROUP, names=wanted, name_order=True,
        on_load_failure_callback=_import_failed, on_missing_entrypoints_callback=None)
    found: dict[str, PluginInfo] = {}
    for ext in manager:
        pm.register(ext.plugin, name=ext.name)
        dist = dists[ext.name]
        found[ext.name] = describe(pm, ext.name, ext.plugin, dist.name if dist else "?",
                                   dist.version if dist else "?")
    pm.check_pending()
    return found


def _import_failed(manager: object, ep: EntryPoint, exc: BaseException) -> NoReturn:
    raise PluginLoadError(
        f"plugin {ep.name!r} ({ep.value}) failed to import: {type(exc).__name__}: {exc}"
    ) from exc


def register(pm: pluggy.PluginManager, name: str, plugin: object) -> PluginInfo:
    """Register a plugin object directly (tests, embedding)."""
    pm.register(plugin, name=name)
    pm.check_pending()
    return describe(pm, name, plugin, "(registered)", "")


#: Hooks that only shape the command line; a plugin with nothing else is a command.
_COMMAND_HOOKS = frozenset({"kube_router_add_options", "kube_router_add_commands",
                            "kube_router_add_hookspecs"})


def describe(pm: pluggy.PluginManager, name: str, plugin: object, dist: str,
             version: str) -> PluginInfo:
    module = plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__qualname__
    hooks = {caller.name for caller in pm.get_hookcallers(plugin) or ()}
    return PluginInfo(name=name, distribution=dist, version=version, module=module,
                      agent=bool(hooks - _COMMAND_HOOKS))


def resolve_enabled(requested: list[str] | None, installed: dict[str, PluginInfo]) -> list[str]:
    """Check the names asked for; None means every installed agent plugin."""
    if requested is None:
        return [n for n, info in installed.items() if info.agent]
    missing = [n for n in requested if n not in installed]
    if missing:
        have = ", ".join(sorted(installed)) or "none"
        raise PluginLoadError(
            f"unknown or uninstalled plugin {', '.join(missing)}; installed plugins: {have}"
        )
    return list(dict.fromkeys(requested))
