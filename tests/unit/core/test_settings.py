"""Settings: built once from the parsed flags, frozen, and a bad flag named in one line."""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import FrozenInstanceError

import pytest

from kube_router import cli
from kube_router.errors import UsageError
from kube_router.settings import CoreSettings
from kube_router.settings import Flags
from kube_router.settings import parse


def test_the_cores_defaults() -> None:
    core = CoreSettings.from_flags(parse([]), ["proxy"], environ={"NODE_NAME": "n7"})
    assert core.node_name == "n7" and core.enabled == frozenset({"proxy"})
    assert core.service_cidrs == (ipaddress.ip_network("10.96.0.0/12"),)
    assert (core.ipv4, core.ipv6, core.families) == (True, False, (4,))
    assert core.nodeport_range == (30000, 32767)
    assert (core.health_addr, core.health_port, core.metrics_port) == ("0.0.0.0", 20244, 0)
    assert (core.kubeconfig is None or isinstance(core.kubeconfig, str)) and not core.cleanup


def test_shared_flags_are_the_cores() -> None:
    core = CoreSettings.from_flags(parse([
        "--hostname-override", "a", "--enable-ipv6", "--service-cluster-ip-range",
        "10.1.0.0/16,fd00::/108", "--service-cluster-ip-range", "10.2.0.0/16",
        "--service-node-port-range", "31000-31999"]), environ={"NODE_NAME": "b"})
    assert core.node_name == "a"  # the flag wins over the environment
    assert [str(n) for n in core.service_cidrs] == ["10.1.0.0/16", "fd00::/108", "10.2.0.0/16"]
    assert core.families == (4, 6) and core.nodeport_range == (31000, 31999)


@pytest.mark.parametrize(("argv", "flag"), [
    (["--health-port", "70000"], "--health-port"),
    (["--metrics-port", "-1"], "--metrics-port"),
    (["--metrics-path", "metrics"], "--metrics-path"),
    (["--enable-ipv4=false"], "--enable-ipv4"),
])
def test_a_bad_core_flag_is_named(argv: list[str], flag: str) -> None:
    with pytest.raises(UsageError) as err:
        CoreSettings.from_flags(parse(argv))
    assert str(err.value).startswith(flag) and "\n" not in str(err.value)


def test_settings_and_flags_are_frozen() -> None:
    flags = parse(["--hostname-override", "n1"])
    core = CoreSettings.from_flags(flags)
    with pytest.raises(FrozenInstanceError):
        core.node_name = "other"  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        flags.hostname_override = "other"
    with pytest.raises(FrozenInstanceError):
        del flags.hostname_override
    assert flags.hostname_override == "n1" and isinstance(flags, Flags)


@pytest.mark.parametrize(("argv", "flag"), [
    (["--health-port", "70000"], "--health-port"),
    (["--enable", "router", "--bgp-holdtime", "1s"], "--bgp-holdtime"),
    (["--enable", "router", "--peer-router-ips", "192.0.2.1"], "--peer-router-asns"),
    (["--enable", "proxy", "--ipvs-sync-period", "0s"], "--ipvs-sync-period"),
    (["--enable", "firewall", "--iptables-sync-period", "0"], "--iptables-sync-period"),
])
def test_a_bad_flag_stops_start_up_with_exit_2_and_one_line_naming_it(
        capsys: pytest.CaptureFixture[str], argv: list[str], flag: str) -> None:
    assert cli.main([*argv, "--hostname-override", "n1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kube-router-py: ") and flag in err


def test_every_plugin_builds_its_settings_once_and_gets_them_back() -> None:
    from kube_router import hookimpl
    from kube_router import plugins
    from kube_router.agent import Agent
    from kube_router.controller import Controller

    built: list[object] = []
    given: list[object] = []

    class Own:
        @hookimpl
        def kube_router_add_options(self, parser):
            parser.add_argument("--own-limit", type=int, default=3)

        @hookimpl
        def kube_router_settings(self, config, core):
            built.append((config.own_limit, core.node_name))
            return built[-1]

        @hookimpl
        def kube_router_controllers(self, agent, settings):
            given.append(settings)
            return []

    class Old:  # written before settings existed: its hooks take only what they name
        @hookimpl
        def kube_router_controllers(self, agent) -> list[Controller]:
            given.append(agent.config.own_limit)
            return []

    pm = plugins.new_manager()
    plugins.register(pm, "own", Own())
    plugins.register(pm, "old", Old())
    flags = Flags(cli.build_parser(pm).parse_args(["--own-limit", "5",
                                                   "--hostname-override", "n1"]))
    agent = Agent.from_flags(flags, pm, ["own", "old"])
    agent.build()
    assert built == [(5, "n1")] and sorted(map(str, given)) == ["(5, 'n1')", "5"]
    assert agent.startup.of("own") == (5, "n1") and agent.startup.of("old") is None


def _readme_plugin(monkeypatch: pytest.MonkeyPatch) -> object:
    """The plugin of the README's guide, exactly as written there."""
    import types
    from pathlib import Path

    readme = (Path(__file__).parents[3] / "README.md").read_text()
    start = readme.index("# kube_router_svclog.py")
    module = types.ModuleType("kube_router_svclog")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # as an import would
    exec(compile(readme[start:readme.index("```", start)], "README.md", "exec"),  # noqa: S102
         module.__dict__)
    return module


@pytest.mark.parametrize(("argv", "controllers"), [([], ["svclog"]), (["--svclog-quiet"], [])])
def test_the_readme_plugin_works_as_written(argv: list[str], controllers: list[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from kube_router import plugins
    from kube_router.agent import Agent

    pm = plugins.new_manager()
    plugins.register(pm, "svclog", _readme_plugin(monkeypatch))
    flags = Flags(cli.build_parser(pm).parse_args([*argv, "--hostname-override", "n1"]))
    agent = Agent.from_flags(flags, pm, ["svclog"])
    agent.build()
    assert [c.name for c in agent.controllers] == controllers
    with pytest.raises(FrozenInstanceError):
        agent.startup.of("svclog").quiet = True


def test_the_third_party_plugin_gets_its_settings() -> None:
    from kube_router import plugins
    from kube_router.agent import Agent

    pm = plugins.new_manager()
    plugins.load(pm)
    flags = Flags(cli.build_parser(pm).parse_args(["--hello-record", "/dev/null",
                                                   "--hostname-override", "n1"]))
    agent = Agent.from_flags(flags, pm, ["hello"])
    agent.build()
    assert [(c.name, c.record) for c in agent.controllers] == [("hello", "/dev/null")]
