"""Every plugin package is named in each layer contract that speaks of plugins, so a new
plugin is born inside the layers `make lint` checks (lint-imports reads pyproject.toml)."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _plugin_packages() -> set[str]:
    return {pkg.parent.name for pkg in ROOT.glob("plugins/*/kube_router_*/__init__.py")}


def _contracts() -> tuple[dict, dict[str, dict]]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return cfg, {c["name"]: c for c in cfg["contracts"]}


def test_every_plugin_package_is_inside_the_layer_contracts():
    plugins = _plugin_packages()
    assert {"kube_router_proxy_ipvs", "kube_router_routing_bgp"} <= plugins
    cfg, contracts = _contracts()
    everything = {"kube_router", "kube_router_lab", *plugins}
    assert set(cfg["root_packages"]) == everything
    core = contracts["The core imports no plugin and not the lab"]
    assert set(core["forbidden_modules"]) == {"kube_router_lab", *plugins}
    lab = contracts["The lab imports no plugin (it runs agents and route helpers as processes)"]
    assert set(lab["forbidden_modules"]) == plugins
    independent = next(c for c in contracts.values() if c["type"] == "independence")
    assert set(independent["modules"]) == plugins
    acyclic = next(c for c in contracts.values() if c["type"] == "acyclic_siblings")
    assert set(acyclic["ancestors"]) == everything
