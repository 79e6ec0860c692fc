"""Calling a hook one plugin at a time, through pluggy."""

from __future__ import annotations

from collections.abc import Collection
from collections.abc import Iterator

import pluggy
from pluggy import HookCaller


def one_by_one(pm: pluggy.PluginManager, hook: str, among: Collection[str] | None = None
               ) -> Iterator[tuple[str, HookCaller]]:
    """A caller of ``hook`` for each plugin implementing it (of ``among``, if given), in
    pluggy's call order: one plugin's failure cannot keep the others from being called, and
    each call can be given that plugin's own arguments (its settings)."""
    everyone = pm.list_name_plugin()
    for impl in reversed(getattr(pm.hook, hook).get_hookimpls()):
        if among is None or impl.plugin_name in among:
            others = [p for n, p in everyone if n != impl.plugin_name]
            yield impl.plugin_name, pm.subset_hook_caller(hook, others)
