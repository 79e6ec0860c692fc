import os
import subprocess
import sys
from pathlib import Path

import pytest

from kube_router import cli
from kube_router import hookimpl
from kube_router.hookcall import one_by_one
from kube_router.settings import CoreSettings
from kube_router.settings import parse


def test_plugins_lists_every_installed_plugin_with_its_distribution(capsys):
    assert cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["NAME", "DISTRIBUTION", "VERSION", "ENABLED", "KIND"]
    hello = next(line.split() for line in out.splitlines() if line.startswith("hello "))
    assert hello == ["hello", "kube-router-hello", "1.2.3", "yes", "agent"]


def test_an_unknown_plugin_exits_2_listing_the_installed_ones(capsys):
    assert cli.main(["--enable", "nosuch", "--hostname-override", "n1"]) == 2
    err = capsys.readouterr().err
    assert "nosuch" in err
    assert "installed plugins:" in err and "hello" in err


def test_a_disabled_plugin_is_not_loaded_at_all(capsys):
    assert cli.main(["--disable-plugin", "hello", "plugins"]) == 0
    assert "hello" not in capsys.readouterr().out


def test_plugin_flags_exist_whether_or_not_the_plugin_is_enabled():
    pm = cli.plugins.new_manager()
    cli.plugins.load(pm)
    parser = cli.build_parser(pm)
    ns = parser.parse_args(["run", "--enable", "", "--hello-record", "/dev/null"])
    assert ns.hello_record == "/dev/null"


def _parse(argv):
    pm = cli.plugins.new_manager()
    cli.plugins.load(pm)
    return cli.build_parser(pm).parse_args(argv)


@pytest.mark.parametrize(
    ("argv", "func", "enable"),
    [
        ([], cli.cmd_run, None),
        (["--enable", "proxy"], cli.cmd_run, ["proxy"]),
        (["run", "--enable", "proxy"], cli.cmd_run, ["proxy"]),
        (["--enable", "proxy", "run"], cli.cmd_run, ["proxy"]),
        (["--disable-plugin", "x", "status"], cli.cmd_status, None),
        (["--disable-plugin=x", "-v"], cli.cmd_run, None),
        (["plugins"], cli.cmd_plugins, None),
    ],
)
def test_run_is_the_default_command(argv, func, enable):
    ns = _parse(argv)
    assert (ns.func, ns.enable) == (func, enable)


def test_a_flag_before_the_command_is_kept_and_one_after_it_wins():
    ns = _parse(["--health-port", "1", "-v", "status", "--hostname-override", "n1"])
    assert (ns.health_port, ns.verbose, ns.hostname_override) == (1, 1, "n1")
    assert _parse(["--health-port", "1", "run", "--health-port", "2"]).health_port == 2


def test_help_shows_the_agents_flags_by_plugin_then_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    sections = [line.rstrip(":") for line in out.splitlines()
                if line.endswith(":") and not line.startswith(" ")]
    assert sections[:2] == ["options", "core"]
    assert sections[-1] == "commands"
    assert {"hello", "default-scheduler"} <= set(sections)
    assert out.index("--enable") < out.index("--hello-record") < out.index("\ncommands:")
    commands = out[out.index("\ncommands:"):]
    assert all(f"    {c} " in commands for c in ("run", "plugins", "status"))


def test_a_plugin_that_fails_to_import_stops_start_up_naming_it(tmp_path):
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('no such kernel')\n")
    dist = tmp_path / "broken_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[kube_router.plugins]\nbroken = broken_plugin\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    krp = [str(Path(sys.executable).with_name("kube-router-py"))]
    failed = subprocess.run([*krp, "plugins"], capture_output=True, text=True, env=env)
    assert failed.returncode == 2
    assert "'broken'" in failed.stderr and "RuntimeError: no such kernel" in failed.stderr
    # Blocked, it is not even imported (importing it would fail as above).
    blocked = subprocess.run([*krp, "--disable-plugin", "broken", "plugins"],
                             capture_output=True, text=True, env=env)
    assert blocked.returncode == 0, blocked.stderr
    assert "broken" not in blocked.stdout and "hello" in blocked.stdout


def test_autoload_can_be_turned_off(capsys, monkeypatch):
    monkeypatch.setenv(cli.plugins.DISABLE_AUTOLOAD_ENV, "1")
    assert cli.main(["plugins"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == []


_INSTALLED = {n: cli.plugins.PluginInfo(n, "d", "1", "m", agent=True)
              for n in ("proxy", "router", "firewall")}


def _flags(enable=None, **switches):
    return cli.Flags({"enable": enable, **dict.fromkeys(cli.RUN_ALIASES), **switches})


def test_kube_routers_switches_turn_plugins_off_and_on():
    assert cli.enabled_plugins(_flags(run_router=False), _INSTALLED) == ["proxy", "firewall"]
    assert cli.enabled_plugins(_flags(enable=["proxy"], run_firewall=True), _INSTALLED) == [
        "proxy", "firewall"]


def test_a_switch_for_an_uninstalled_plugin_is_an_error():
    installed = {n: i for n, i in _INSTALLED.items() if n != "router"}
    with pytest.raises(cli.PluginLoadError, match="router"):
        cli.enabled_plugins(_flags(enable=["proxy"], run_router=True), installed)


def test_a_missing_kubeconfig_is_one_clear_line(capsys, tmp_path):
    missing = tmp_path / "nope"
    assert cli.main(["--enable", "hello", "--kubeconfig", str(missing),
                     "--hostname-override", "n1", "--health-port", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(missing) in err


def test_each_plugins_cleanup_runs_through_pluggy_whatever_the_others_do(monkeypatch):
    monkeypatch.setenv(cli.plugins.DISABLE_AUTOLOAD_ENV, "1")
    done = []

    class Fails:
        @hookimpl
        def kube_router_cleanup(self, config):
            raise RuntimeError("boom")

    class Works:
        @hookimpl
        def kube_router_cleanup(self, core):
            done.append(core.node_name)

    pm = cli.plugins.new_manager()
    cli.plugins.register(pm, "works", Works())
    cli.plugins.register(pm, "fails", Fails())
    flags = parse(["--hostname-override", "n1"])
    assert cli.run_cleanups(pm, CoreSettings.from_flags(flags), flags) == 1
    assert done == ["n1"]
    assert [name for name, _ in one_by_one(pm, "kube_router_cleanup",
                                           among={"works"})] == ["works"]
