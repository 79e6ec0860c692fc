"""The ``kube-router-py`` command: ``run`` (the default), ``plugins``, ``status``, and the
subcommands plugins add."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pluggy

from kube_router import __version__
from kube_router import plugins
from kube_router import settings
from kube_router.errors import PluginLoadError
from kube_router.errors import UsageError
from kube_router.flags import boolean
from kube_router.hookcall import one_by_one
from kube_router.settings import Flags
from kube_router.settings import Startup
from kube_router.status import StatusSection

log = logging.getLogger("kube_router")

#: kube-router's own switches, and the plugin each one stands for.
RUN_ALIASES = {"run_service_proxy": "proxy", "run_router": "router", "run_firewall": "firewall"}


class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser. With ``inherits`` (the agent's flag names), a flag left out
    after the command sets nothing, so it does not undo one given before the command
    (argparse copies every value of a subcommand's namespace, defaults included)."""

    def __init__(self, *args: Any, inherits: frozenset[str] = frozenset(), **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.inherits = inherits

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None,
    ) -> tuple[argparse.Namespace, list[str]]:
        if namespace is not None or not self.inherits:
            return super().parse_known_args(args, namespace)
        # Present (as None), a flag gets no default; parsed flags never come out as None.
        ns, rest = super().parse_known_args(args, argparse.Namespace(
            **dict.fromkeys(self.inherits)))
        for name in self.inherits:
            if getattr(ns, name) is None:
                delattr(ns, name)
        return ns, rest


def _agent_options(pm: pluggy.PluginManager) -> _CommandParser:
    """Flags shared by ``run`` and ``status``: the core's and every installed plugin's, each
    plugin's in its own group."""
    p = _CommandParser(add_help=False)
    g = p.add_argument_group("core")
    g.add_argument("--enable", type=lambda s: [n.strip() for n in s.split(",") if n.strip()],
                   help="comma-separated plugins to run (default: every installed plugin)")
    for flag, name in RUN_ALIASES.items():
        g.add_argument("--" + flag.replace("_", "-"), type=boolean, nargs="?", const=True,
                       help=f"kube-router's switch for the {name!r} plugin (true/false)")
    settings.add_to_group(g)
    pm.hook.kube_router_add_options(parser=p)
    return p


def _add_disable_plugin(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--disable-plugin", action="append", default=[], metavar="NAME",
                        help="do not load this installed plugin at all")


def build_parser(pm: pluggy.PluginManager) -> argparse.ArgumentParser:
    """The agent's flags at the top, as ``run`` is the default command; the commands after."""
    opts = _agent_options(pm)
    parser = argparse.ArgumentParser(
        prog="kube-router-py", parents=[opts],
        usage="%(prog)s [FLAG ...] [COMMAND [ARG ...]]",
        description="Kubernetes networking agent: service proxy, pod routing, firewall. "
                    "Without a command, runs the agent with the flags below.",
    )
    parser.add_argument("--version", action="version", version=f"kube-router-py {__version__}")
    _add_disable_plugin(parser)
    parser.set_defaults(func=cmd_run)
    sub = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND",
                                prog=parser.prog, parser_class=_CommandParser)
    agent_flags = frozenset(vars(opts.parse_args([])))
    sub.add_parser("run", parents=[opts], help="run the agent (the default command)",
                   description="Run the agent on this node.", inherits=agent_flags,
                   ).set_defaults(func=cmd_run)
    sub.add_parser("plugins", help="list the installed plugins").set_defaults(func=cmd_plugins)
    sub.add_parser("status", parents=[opts], help="show this node's state",
                   description="Show the agent's health and each enabled plugin's state.",
                   inherits=agent_flags).set_defaults(func=cmd_status)
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


@dataclass(frozen=True, slots=True)
class Invocation:
    """A core command's input: the read-only flags and the plugins found."""

    flags: Flags
    pm: pluggy.PluginManager
    installed: Mapping[str, plugins.PluginInfo]


#: The core's own commands take an :class:`Invocation`; plugins' commands the flags.
CoreCommand = Callable[[Invocation], int]


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
    flags = Flags(build_parser(pm).parse_args(argv))
    if flags.func in _CORE_COMMANDS:
        return int(flags.func(Invocation(flags, pm, installed)) or 0)
    return int(flags.func(flags) or 0)


# -- commands -------------------------------------------------------------------------------


def enabled_plugins(flags: argparse.Namespace, installed: Mapping[str, plugins.PluginInfo]
                    ) -> list[str]:
    """The plugins to run: ``--enable`` (default: every installed agent plugin), then each
    of kube-router's ``--run-*`` switches adding or removing its plugin."""
    names = plugins.resolve_enabled(flags.enable, dict(installed))
    for flag, name in RUN_ALIASES.items():
        switch = getattr(flags, flag)
        if switch is True and name not in names:
            names = plugins.resolve_enabled([*names, name], dict(installed))
        elif switch is False and name in names:
            names.remove(name)
    return names


def _startup(inv: Invocation) -> Startup:
    """The enabled plugins, the core's settings and each enabled plugin's, built once."""
    return settings.configure(inv.pm, inv.flags, enabled_plugins(inv.flags, inv.installed))


def cmd_run(inv: Invocation) -> int:
    from kube_router.linux.memory import one_malloc_arena

    setup_logging(inv.flags.verbose)
    one_malloc_arena()  # before the health server's and the loop's threads start
    try:
        if inv.flags.cleanup_config:
            return run_cleanups(inv.pm, settings.CoreSettings.from_flags(inv.flags), inv.flags)
        startup = _startup(inv)
    except (PluginLoadError, UsageError) as exc:
        print(f"kube-router-py: {exc}", file=sys.stderr)
        return 2
    for name in startup.enabled:
        info = inv.installed.get(name)
        if info:
            log.info("plugin name=%s distribution=%s version=%s", name, info.distribution,
                     info.version)
    from kube_router.agent import Agent
    from kube_router.health import HealthServer
    from kube_router.kube.client import load_client

    core = startup.core
    try:
        api = load_client(core.kubeconfig, core.master)
    except Exception as exc:  # ConfigException, or an unreadable file: one line, no trace
        print(f"kube-router-py: cannot reach the API: {exc}", file=sys.stderr)
        return 1
    agent = Agent(startup, inv.pm)
    agent.build()
    servers = []
    if core.health_port:
        servers.append(HealthServer(core.health_addr, core.health_port,
                                    readiness=agent.readiness,
                                    registry=agent.metrics.registry))
    if core.metrics_port:
        servers.append(HealthServer(core.metrics_addr, core.metrics_port,
                                    readiness=agent.readiness, registry=agent.metrics.registry,
                                    metrics_path=core.metrics_path))
    for s in servers:
        s.start()
    try:
        asyncio.run(agent.run(api))
    finally:
        for s in servers:
            s.stop()
    return 0


def run_cleanups(pm: pluggy.PluginManager, core: settings.CoreSettings,
                 flags: argparse.Namespace) -> int:
    """Every installed plugin's cleanup, each isolated from the others' failures."""
    failed = 0
    for name, call in one_by_one(pm, "kube_router_cleanup"):
        try:
            call(config=flags, core=core)
            log.info("cleanup done plugin=%s", name)
        except Exception:
            failed += 1
            log.exception("cleanup failed plugin=%s", name)
    return 1 if failed else 0


def cmd_plugins(inv: Invocation) -> int:
    from kube_router.status import format_table

    # What a bare `run` would enable, whatever flags came with this command.
    bare = Flags({"enable": None, **dict.fromkeys(RUN_ALIASES)})
    enable = set(enabled_plugins(bare, inv.installed))
    rows = [
        [i.name, i.distribution, i.version, "yes" if i.name in enable else "no",
         "agent" if i.agent else "command"]
        for i in inv.installed.values()
    ]
    print("\n".join(format_table(["NAME", "DISTRIBUTION", "VERSION", "ENABLED", "KIND"], rows)))
    return 0


def cmd_status(inv: Invocation) -> int:
    try:
        startup = _startup(inv)
    except (PluginLoadError, UsageError) as exc:
        print(f"kube-router-py: {exc}", file=sys.stderr)
        return 2
    sections = [agent_section(startup.core)]
    for name, call in one_by_one(inv.pm, "kube_router_status", among=startup.enabled):
        try:
            for answer in call(config=startup.flags, core=startup.core,
                               settings=startup.of(name)):
                sections.extend(answer or ())
        except Exception as exc:
            sections.append(StatusSection(name, [], note=f"error: {exc}"))
    print("\n\n".join(s.render() for s in sections))
    return 0


_CORE_COMMANDS: frozenset[CoreCommand] = frozenset({cmd_run, cmd_plugins, cmd_status})


def agent_section(core: settings.CoreSettings) -> StatusSection:
    host = "127.0.0.1" if core.health_addr in ("0.0.0.0", "::", "") else core.health_addr
    url = f"http://{host}:{core.health_port}/readyz"
    section = StatusSection(f"agent on {core.node_name}",
                            ["CONTROLLER", "SYNCED", "RESOURCE VERSIONS", "LAST ERROR"])
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            state = json.load(resp)
    except urllib.error.HTTPError as exc:  # 503 still carries the state
        state = json.load(exc)
    except OSError as exc:
        section.note = f"agent not answering at {url}: {exc}"
        return section
    # The agent knows its node name for sure; the name this command guessed may differ.
    section.title = f"agent on {state.get('node') or core.node_name}"
    section.note = f"ready: {'yes' if state.get('ready') else 'no'}"
    for name, c in state.get("controllers", {}).items():
        # Each kind's version apart: versions of different kinds do not compare.
        versions = ",".join(f"{k}={v}" for k, v in sorted((c.get("resourceVersions")
                                                            or {}).items()) if v)
        section.rows.append([name, "yes" if c["synced"] else "no", versions or "-",
                             c["lastError"] or "-"])
    for kind, i in state.get("informers", {}).items():
        section.rows.append([f"informer {kind}", "yes" if i["synced"] else "no",
                             i["resourceVersion"] or "-", i.get("lastError") or "-"])
    return section
