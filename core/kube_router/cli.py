"""The ``kube-router-py`` command: ``run`` (the default), ``plugins``, ``status``, and the
subcommands plugins add."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

import pluggy

from kube_router import __version__
from kube_router import plugins
from kube_router.errors import PluginLoadError
from kube_router.errors import UsageError
from kube_router.flags import boolean
from kube_router.status import StatusSection

log = logging.getLogger("kube_router")

#: kube-router's own switches, and the plugin each one stands for.
RUN_ALIASES = {"run_service_proxy": "proxy", "run_router": "router", "run_firewall": "firewall"}


def _agent_options(pm: pluggy.PluginManager, *, defaults: bool = True) -> argparse.ArgumentParser:
    """Flags shared by ``run`` and ``status``: the core's and every installed plugin's, each
    plugin's in its own group. Without ``defaults``, a flag left out sets nothing (so a
    subcommand does not undo what was given before it)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("core")
    g.add_argument("--enable", type=lambda s: [n.strip() for n in s.split(",") if n.strip()],
                   help="comma-separated plugins to run (default: every installed plugin)")
    for flag, name in RUN_ALIASES.items():
        g.add_argument("--" + flag.replace("_", "-"), type=boolean, nargs="?", const=True,
                       help=f"kube-router's switch for the {name!r} plugin (true/false)")
    g.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"),
                   help="kubeconfig file (default: in-cluster config)")
    g.add_argument("--master", help="API server address, overriding the kubeconfig's")
    g.add_argument("--hostname-override",
                   help="this node's name (default: $NODE_NAME, else the hostname)")
    g.add_argument("--health-addr", default="0.0.0.0", help="health server address")
    g.add_argument("--health-port", type=int, default=20244,
                   help="/healthz, /readyz and /metrics port; 0 turns it off")
    g.add_argument("--metrics-addr", default="0.0.0.0")
    g.add_argument("--metrics-port", type=int, default=0,
                   help="a separate Prometheus port (0: /metrics on the health port only)")
    g.add_argument("--metrics-path", default="/metrics")
    g.add_argument("--cleanup-config", action="store_true",
                   help="remove every kernel object the installed plugins made, then exit")
    g.add_argument("-v", "--v", dest="verbose", action="count", default=0,
                   help="more logging; repeat for more")
    pm.hook.kube_router_add_options(parser=p)
    if not defaults:
        # Not set_defaults(): a parser-level SUPPRESS default lands in the namespace as text.
        for action in p._actions:
            action.default = argparse.SUPPRESS
    return p


def _add_disable_plugin(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--disable-plugin", action="append", default=[], metavar="NAME",
                        help="do not load this installed plugin at all")


def build_parser(pm: pluggy.PluginManager) -> argparse.ArgumentParser:
    """The agent's flags at the top, as ``run`` is the default command; the commands after."""
    parser = argparse.ArgumentParser(
        prog="kube-router-py", parents=[_agent_options(pm)],
        usage="%(prog)s [FLAG ...] [COMMAND [ARG ...]]",
        description="Kubernetes networking agent: service proxy, pod routing, firewall. "
                    "Without a command, runs the agent with the flags below.",
    )
    parser.add_argument("--version", action="version", version=f"kube-router-py {__version__}")
    _add_disable_plugin(parser)
    parser.set_defaults(func=cmd_run)
    sub = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND",
                                prog=parser.prog)
    opts = _agent_options(pm, defaults=False)
    sub.add_parser("run", parents=[opts], help="run the agent (the default command)",
                   description="Run the agent on this node.").set_defaults(func=cmd_run)
    sub.add_parser("plugins", help="list the installed plugins").set_defaults(func=cmd_plugins)
    sub.add_parser("status", parents=[opts], help="show this node's state",
                   description="Show the agent's health and each enabled plugin's state."
                   ).set_defaults(func=cmd_status)
    pm.hook.kube_router_add_commands(subparsers=sub)
    return parser


def setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose >= 2 else logging.INFO
    logging.basicConfig(
        level=level, stream=sys.stderr,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    if verbose < 3:  # the client's own debug output is rarely what an operator wants
        logging.getLogger("urllib3").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Which plugins to keep out must be known before loading them, hence a first pass.
    first = argparse.ArgumentParser(add_help=False)
    _add_disable_plugin(first)
    pm = plugins.new_manager()
    try:
        installed = plugins.load(pm, blocked=first.parse_known_args(argv)[0].disable_plugin)
    except PluginLoadError as exc:
        print(f"kube-router-py: {exc}", file=sys.stderr)
        return 2
    config = build_parser(pm).parse_args(argv)
    config.pluginmanager = pm
    config.installed = installed
    return int(config.func(config) or 0)


# -- commands -------------------------------------------------------------------------------


def enabled_plugins(config: argparse.Namespace) -> list[str]:
    installed = config.installed
    names = plugins.resolve_enabled(config.enable, installed)
    for flag, name in RUN_ALIASES.items():
        switch = getattr(config, flag, None)
        if switch is True and name not in names:
            names = plugins.resolve_enabled([*names, name], installed)
        elif switch is False and name in names:
            names.remove(name)
    return names


def _prepare(config: argparse.Namespace) -> list[str]:
    """Resolve node name and enabled plugins, and let enabled plugins check their flags."""
    config.hostname_override = (
        config.hostname_override or os.environ.get("NODE_NAME") or socket.gethostname()
    )
    enabled = enabled_plugins(config)
    config.enabled = set(enabled)
    pm: pluggy.PluginManager = config.pluginmanager
    disabled = [p for n, p in pm.list_name_plugin() if n not in config.enabled]
    pm.subset_hook_caller("kube_router_configure", disabled)(config=config)
    return enabled


def cmd_run(config: argparse.Namespace) -> int:
    from kube_router.linux.memory import one_malloc_arena

    setup_logging(config.verbose)
    one_malloc_arena()  # before the health server's and the loop's threads start
    if config.cleanup_config:
        return run_cleanups(config)
    try:
        enabled = _prepare(config)
    except (PluginLoadError, UsageError) as exc:
        print(f"kube-router-py: {exc}", file=sys.stderr)
        return 2
    for name in enabled:
        info = config.installed.get(name)
        if info:
            log.info("plugin name=%s distribution=%s version=%s", name, info.distribution,
                     info.version)
    from kube_router.agent import Agent
    from kube_router.health import HealthServer
    from kube_router.kube.client import load_client

    try:
        api = load_client(config.kubeconfig, config.master)
    except Exception as exc:  # ConfigException, or an unreadable file: one line, no trace
        print(f"kube-router-py: cannot reach the API: {exc}", file=sys.stderr)
        return 1
    agent = Agent(config, config.pluginmanager, enabled)
    agent.build()
    servers = []
    if config.health_port:
        servers.append(HealthServer(config.health_addr, config.health_port,
                                    readiness=agent.readiness,
                                    registry=agent.metrics.registry))
    if config.metrics_port:
        servers.append(HealthServer(config.metrics_addr, config.metrics_port,
                                    readiness=agent.readiness, registry=agent.metrics.registry,
                                    metrics_path=config.metrics_path))
    for s in servers:
        s.start()
    try:
        asyncio.run(agent.run(api))
    finally:
        for s in servers:
            s.stop()
    return 0


def run_cleanups(config: argparse.Namespace) -> int:
    """Every installed plugin's cleanup, each isolated from the others' failures."""
    failed = 0
    for name, call in plugins.one_by_one(config.pluginmanager, "kube_router_cleanup"):
        try:
            call(config=config)
            log.info("cleanup done plugin=%s", name)
        except Exception:
            failed += 1
            log.exception("cleanup failed plugin=%s", name)
    return 1 if failed else 0


def cmd_plugins(config: argparse.Namespace) -> int:
    from kube_router.status import format_table

    enable = set(enabled_plugins(_defaults_for(config)))
    rows = [
        [i.name, i.distribution, i.version, "yes" if i.name in enable else "no",
         "agent" if i.agent else "command"]
        for i in config.installed.values()
    ]
    print("\n".join(format_table(["NAME", "DISTRIBUTION", "VERSION", "ENABLED", "KIND"], rows)))
    return 0


def _defaults_for(config: argparse.Namespace) -> argparse.Namespace:
    ns = argparse.Namespace(enable=None, installed=config.installed)
    for flag in RUN_ALIASES:
        setattr(ns, flag, None)
    return ns


def cmd_status(config: argparse.Namespace) -> int:
    try:
        _prepare(config)
    except (PluginLoadError, UsageError) as exc:
        print(f"kube-router-py: {exc}", file=sys.stderr)
        return 2
    sections = [agent_section(config)]
    for name, call in plugins.one_by_one(config.pluginmanager, "kube_router_status",
                                         among=config.enabled):
        try:
            for answer in call(config=config):
                sections.extend(answer or ())
        except Exception as exc:
            sections.append(StatusSection(name, [], note=f"error: {exc}"))
    print("\n\n".join(s.render() for s in sections))
    return 0


def agent_section(config: argparse.Namespace) -> StatusSection:
    host = "127.0.0.1" if config.health_addr in ("0.0.0.0", "::", "") else config.health_addr
    url = f"http://{host}:{config.health_port}/readyz"
    section = StatusSection(f"agent on {config.hostname_override}",
                            ["CONTROLLER", "SYNCED", "RESOURCE VERSION", "LAST ERROR"])
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            state = json.load(resp)
    except urllib.error.HTTPError as exc:  # 503 still carries the state
        state = json.load(exc)
    except OSError as exc:
        section.note = f"agent not answering at {url}: {exc}"
        return section
    # The agent knows its node name for sure; the name this command guessed may differ.
    section.title = f"agent on {state.get('node') or config.hostname_override}"
    section.note = f"ready: {'yes' if state.get('ready') else 'no'}"
    for name, c in state.get("controllers", {}).items():
        section.rows.append([name, "yes" if c["synced"] else "no", c["resourceVersion"] or "-",
                             c["lastError"] or "-"])
    for kind, i in state.get("informers", {}).items():
        section.rows.append([f"informer {kind}", "yes" if i["synced"] else "no",
                             i["resourceVersion"] or "-", i.get("lastError") or "-"])
    return section
