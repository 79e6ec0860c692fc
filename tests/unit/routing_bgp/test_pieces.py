"""Pure pieces: flags, the CNI config, route message encoding, GoBGP path building."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time

import pytest

from kube_router.flags import duration
from kube_router_routing_bgp import kernel_routes as kr
from kube_router_routing_bgp import pod_network
from kube_router_routing_bgp.gobgpd import Gobgpd
from kube_router_routing_bgp.gobgpd import GobgpError
from kube_router_routing_bgp.gobgpd import PeerConfig
from kube_router_routing_bgp.gobgpd import admin_target


@pytest.mark.parametrize("text,seconds", [("5m", 300), ("90s", 90), ("1h30m", 5400),
                                          ("250ms", 0.25), ("60", 60)])
def test_duration(text: str, seconds: float) -> None:
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["5x", "m5", "", "5m junk"])
def test_bad_duration(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)


def test_conflist_shape() -> None:
    doc = pod_network.conflist(["10.2.1.0/24"], 1450, "/tmp/ipam")
    assert doc["name"] == "kubernetes"
    (bridge,) = doc["plugins"]
    assert bridge["type"] == "bridge" and bridge["bridge"] == "kube-bridge"
    assert bridge["isDefaultGateway"] is True and bridge["hairpinMode"] is True
    assert bridge["mtu"] == 1450
    assert bridge["ipam"] == {"type": "host-local", "ranges": [[{"subnet": "10.2.1.0/24"}]],
                              "dataDir": "/tmp/ipam"}
    dual = pod_network.conflist(["10.2.1.0/24", "fd00:1::/64"], None)
    assert dual["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.2.1.0/24"}],
                                                   [{"subnet": "fd00:1::/64"}]]
    assert "mtu" not in dual["plugins"][0] and "dataDir" not in dual["plugins"][0]["ipam"]


def test_conflist_written_atomically_and_only_on_change(tmp_path) -> None:
    path = tmp_path / "net.d" / "10-kuberouter.conflist"
    doc = pod_network.conflist(["10.2.1.0/24"], 1500)
    assert pod_network.write_if_changed(path, doc) is True
    mtime = path.stat().st_mtime_ns
    assert pod_network.write_if_changed(path, doc) is False
    assert path.stat().st_mtime_ns == mtime
    assert json.loads(path.read_text()) == doc
    assert pod_network.write_if_changed(path, pod_network.conflist(["10.2.2.0/24"], 1500))
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


def test_gateway_addresses() -> None:
    assert pod_network.gateway_addresses(["10.2.1.0/24", "fd00:1::/64"]) == [
        "10.2.1.1/24", "fd00:1::1/64"]


def test_route_message_round_trip() -> None:
    r = kr.Route(dst="10.2.1.0/24", gateway="192.168.10.101")
    msg = kr.encode_route(kr._RTM_NEWROUTE, 0x1, 7, r)
    length, mtype, _flags, seq, _pid = kr._NLMSGHDR.unpack_from(msg)
    assert (length, mtype, seq) == (len(msg), kr._RTM_NEWROUTE, 7)
    assert kr.decode_route(msg[kr._NLMSGHDR.size:]) == kr.Route(
        dst="10.2.1.0/24", gateway="192.168.10.101", protocol=17)
    six = kr.Route(dst="fd00:2::/64", gateway="fd00::1", metric=5, table=1000)
    back = kr.decode_route(kr.encode_route(kr._RTM_NEWROUTE, 0x1, 8, six)[kr._NLMSGHDR.size:])
    assert back == six
    family = msg[kr._NLMSGHDR.size]
    assert family == socket.AF_INET


def test_path_building_validates_prefixes() -> None:
    client = Gobgpd()
    path = client.path_msg("10.2.1.0/24", "192.168.10.101")
    assert client.learned(path).prefix == "10.2.1.0/24"
    assert client.learned(path).next_hop == "192.168.10.101"
    assert client.learned(path).neighbor == ""
    # gobgpd would take these and advertise 0.0.0.0/24: refuse them here
    for bad in ("10.256.0.0/24", "garbage", "10.2.0.0/33"):
        with pytest.raises(ValueError):
            client.path_msg(bad, "192.168.10.101")
    with pytest.raises(ValueError):
        client.path_msg("10.2.1.0/24", "not-an-ip")


def test_peer_message() -> None:
    client = Gobgpd()
    msg = client._peer_msg(PeerConfig(address="192.168.10.50", asn=64513, port=1179,
                                      password="pw", multihop_ttl=3, external=True,
                                      local_address="192.168.10.100"))
    assert msg.conf.neighbor_address == "192.168.10.50" and msg.conf.peer_asn == 64513
    assert msg.conf.auth_password == "pw" and msg.transport.remote_port == 1179
    assert msg.ebgp_multihop.enabled and msg.ebgp_multihop.multihop_ttl == 3
    assert msg.transport.local_address == "192.168.10.100"


def test_admin_target() -> None:
    assert admin_target("127.0.0.1", 50051, "/run/x") == "127.0.0.1:50051"
    assert admin_target("::1", 50051, "/run/x") == "[::1]:50051"
    assert admin_target("127.0.0.1", 0, "/run/x") == "unix:///run/x/gobgpd.sock"


def test_the_service_cidrs_come_from_the_core_not_from_another_plugins_flag() -> None:
    import argparse

    from kube_router.settings import CoreSettings
    from kube_router.settings import parse
    from kube_router_routing_bgp import settings

    # The router declares no such flag, and reads no flag it does not declare.
    own = argparse.ArgumentParser()
    settings.add_options(own)
    with pytest.raises(SystemExit):
        own.parse_args(["--service-cluster-ip-range", "10.1.0.0/16"])
    flags = parse(["--service-cluster-ip-range", "10.96.0.0/12,fd00::/108",
                   "--service-cluster-ip-range", "10.1.0.0/16"], settings.add_options)
    core = CoreSettings.from_flags(flags)
    router = settings.RouterSettings.from_flags(flags, core)
    assert [str(n) for n in router.service_cidrs] == ["10.96.0.0/12", "fd00::/108",
                                                       "10.1.0.0/16"]
    assert router.service_cidrs == core.service_cidrs


def test_a_gobgpd_that_never_answers_is_ended_so_the_next_sync_starts_afresh(
        tmp_path) -> None:
    # A stand-in that starts and then never serves the API (as a hung gobgpd would).
    hung = tmp_path / "hung-gobgpd"
    hung.write_text("#!/bin/sh\nexec sleep 60\n")
    hung.chmod(0o755)
    client = Gobgpd(api_host=f"unix://{tmp_path}/api.sock", binary=str(hung))

    async def go() -> None:
        with pytest.raises(GobgpError, match="not answering after 1 s"):
            await client.spawn(timeout=1.0)
        assert client.proc is not None and client.proc.returncode is not None
        assert not client.running()

    asyncio.run(go())


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # exited, unreaped
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("graceful_restart", [False, True])
def test_gobgpd_does_not_outlive_a_killed_agent(tmp_path, graceful_restart: bool) -> None:
    # A stand-in gobgpd that records its pid and waits; the "agent" is a child Python
    # process spawning it, then killed with SIGKILL (no chance to stop it itself).
    pidfile = tmp_path / "pid"
    stand_in = tmp_path / "gobgpd"
    stand_in.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 60\n")
    stand_in.chmod(0o755)
    agent = subprocess.Popen([sys.executable, "-c", (
        "import asyncio\n"
        "from kube_router_routing_bgp.gobgpd import Gobgpd\n"
        f"g = Gobgpd(api_host='unix://{tmp_path}/api.sock', binary='{stand_in}', "
        f"graceful_restart={graceful_restart})\n"
        "asyncio.run(g.spawn(timeout=60))\n")])
    try:
        deadline = time.monotonic() + 20
        while not (pidfile.exists() and pidfile.read_text().strip()):
            assert time.monotonic() < deadline, "the stand-in never started"
            time.sleep(0.05)
        pid = int(pidfile.read_text())
        assert not _gone(pid)
    finally:
        agent.kill()
        agent.wait()
    deadline = time.monotonic() + 5
    while not _gone(pid):
        assert time.monotonic() < deadline, "gobgpd outlived the agent"
        time.sleep(0.05)
