import pytest

from kube_router import cli


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


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], ["run"]),
        (["--enable", "proxy"], ["run", "--enable", "proxy"]),
        (["plugins"], ["plugins"]),
        (["--disable-plugin", "x", "status"], ["--disable-plugin", "x", "status"]),
        (["--disable-plugin=x", "-v"], ["--disable-plugin=x", "run", "-v"]),
        (["--version"], ["--version"]),
    ],
)
def test_run_is_the_default_command(argv, expected):
    assert cli._with_default_command(argv, cli.COMMANDS) == expected


def _config(enable=None, **switches):
    ns = cli._defaults_for(type("C", (), {"installed": None})())
    ns.installed = {
        n: cli.plugins.PluginInfo(n, "d", "1", "m", agent=True)
        for n in ("proxy", "router", "firewall")
    }
    ns.enable = enable
    for k, v in switches.items():
        setattr(ns, k, v)
    return ns


def test_kube_routers_switches_turn_plugins_off_and_on():
    assert cli.enabled_plugins(_config(run_router=False)) == ["proxy", "firewall"]
    assert cli.enabled_plugins(_config(enable=["proxy"], run_firewall=True)) == [
        "proxy", "firewall"]


def test_a_switch_for_an_uninstalled_plugin_is_an_error():
    ns = _config(enable=["proxy"], run_router=True)
    del ns.installed["router"]
    with pytest.raises(cli.PluginLoadError, match="router"):
        cli.enabled_plugins(ns)


def test_a_missing_kubeconfig_is_one_clear_line(capsys, tmp_path):
    missing = tmp_path / "nope"
    assert cli.main(["--enable", "hello", "--kubeconfig", str(missing),
                     "--hostname-override", "n1", "--health-port", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(missing) in err
