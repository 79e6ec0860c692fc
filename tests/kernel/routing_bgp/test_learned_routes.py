"""Learned BGP paths reach the kernel as proto 17 routes; withdrawals remove them; routes
of other protocols are never touched. Real gobgpd (and BIRD) in two namespaces."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from bgp_kernel_helpers import Pair
from bgp_kernel_helpers import ip

from kube_router_routing_bgp.gobgpd import Gobgpd
from kube_router_routing_bgp.gobgpd import PeerConfig
from kube_router_routing_bgp.gobgpd import PeerStatus
from kube_router_routing_bgp.kernel_routes import RouteTable
from kube_router_routing_bgp.route_sync import RouteInstaller

ASN = 64512


def proto17(ns: str) -> str:
    return ip("-n", ns, "route", "show", "proto", "17")


async def until(cond: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def start_speaker(ns: str, addr: str, workdir: str, asn: int = ASN,
                        graceful_restart: bool = False) -> Gobgpd:
    g = Gobgpd(api_host=f"unix://{workdir}/{ns}.sock", netns=ns,
               graceful_restart=graceful_restart)
    await g.spawn()
    await g.start_bgp(asn=asn, router_id=addr, listen_addresses=[addr],
                      graceful_restart=graceful_restart)
    return g


class Learner:
    """The receiving side as the controller wires it: watcher into the installer (and,
    with graceful restart, the peers' session states too)."""

    def __init__(self, gobgpd: Gobgpd, ns: str, hold_seconds: float = 0.0) -> None:
        self.table = RouteTable(netns=ns)
        self.installer = RouteInstaller(self.table)
        self.installer.hold_seconds = hold_seconds
        self.gobgpd = gobgpd
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.installer.load()
        self.tasks = [asyncio.create_task(self.installer.run()),
                      asyncio.create_task(self._watch())]

    async def _watch(self) -> None:
        def on_peer(p: PeerStatus) -> None:
            if self.installer.hold_seconds:
                self.installer.peer_state(p.address, p.state == "Establ")

        async for batch in self.gobgpd.watch_best(on_peer=on_peer):
            self.installer.update(batch)

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.table.close()


def test_gobgp_to_gobgp_routes_follow_paths(pair: Pair) -> None:
    async def main() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            a = await start_speaker(pair.a, pair.ip_a, tmp)
            b = await start_speaker(pair.b, pair.ip_b, tmp)
            learner = Learner(b, pair.b)
            try:
                await a.add_peer(PeerConfig(address=pair.ip_b, asn=ASN,
                                            local_address=pair.ip_a))
                await b.add_peer(PeerConfig(address=pair.ip_a, asn=ASN,
                                            local_address=pair.ip_b))
                # routes of other protocols on b that a path will collide with or lie beside
                ip("-n", pair.b, "route", "add", "10.9.9.0/24", "via", pair.ip_a,
                   "proto", "static")
                ip("-n", pair.b, "route", "add", "10.9.8.0/24", "via", pair.ip_a)
                await learner.start()
                await a.add_path("10.9.1.0/24", pair.ip_a)
                await a.add_path("10.9.2.0/24", pair.ip_a)
                await a.add_path("10.9.9.0/24", pair.ip_a)
                await until(lambda: "10.9.2.0/24" in proto17(pair.b), what="learned routes")
                routes = proto17(pair.b)
                assert f"10.9.1.0/24 via {pair.ip_a} dev eth0" in routes
                assert f"10.9.2.0/24 via {pair.ip_a} dev eth0" in routes
                # the static route for the same prefix is left alone, not replaced
                assert "10.9.9.0/24" not in routes
                assert "proto static" in ip("-n", pair.b, "route", "show", "10.9.9.0/24")
                # a's own paths are not installed on a
                assert proto17(pair.a) == ""

                # withdrawal removes the route, and nothing else
                t0 = time.monotonic()
                await a.delete_path("10.9.1.0/24", pair.ip_a)
                await until(lambda: "10.9.1.0/24" not in proto17(pair.b), what="withdrawal")
                withdraw_s = time.monotonic() - t0
                assert "10.9.2.0/24" in proto17(pair.b)
                assert withdraw_s < 10

                # the peer goes away entirely: its routes go with it
                await b.delete_peer(pair.ip_a)
                await until(lambda: proto17(pair.b) == "", what="peer removal")
                all_routes = ip("-n", pair.b, "route")
                assert "10.9.9.0/24 via 192.168.77.1 dev eth0 proto static" in all_routes
                assert "10.9.8.0/24 via 192.168.77.1 dev eth0" in all_routes
            finally:
                await learner.stop()
                await a.stop()
                await b.stop()

    asyncio.run(main())


def test_restarting_peer_keeps_its_route_through_a_refused_reconnect(pair: Pair) -> None:
    """a's gobgpd dies without a Cease (graceful restart) and its successor listens before
    it knows b, so b's next connection attempt is accepted and then closed. gobgpd on b then
    drops a's stale path at once; the route must stay in b's kernel until a is back."""

    async def main() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            gr = {"graceful_restart": True, "graceful_restart_time": 90}
            a = await start_speaker(pair.a, pair.ip_a, tmp, graceful_restart=True)
            b = await start_speaker(pair.b, pair.ip_b, tmp, graceful_restart=True)
            learner = Learner(b, pair.b, hold_seconds=90)
            again = None
            try:
                await a.add_peer(PeerConfig(address=pair.ip_b, asn=ASN,
                                            local_address=pair.ip_a, **gr))
                await b.add_peer(PeerConfig(address=pair.ip_a, asn=ASN,
                                            local_address=pair.ip_b, **gr))
                await learner.start()
                await a.add_path("10.9.1.0/24", pair.ip_a)
                await until(lambda: "10.9.1.0/24" in proto17(pair.b), what="learned route")

                await a.stop()  # killed: the session drops without a Cease
                later = Path(tmp) / "again"
                later.mkdir()
                again = await start_speaker(pair.a, pair.ip_a, str(later),
                                            graceful_restart=True)
                # b's retries now reach a speaker that does not know it yet
                deadline = time.monotonic() + 40
                while any(p.prefix == "10.9.1.0/24" for p in await b.best_paths()):
                    assert time.monotonic() < deadline, "gobgpd on b kept the stale path"
                    assert "10.9.1.0/24" in proto17(pair.b)
                    await asyncio.sleep(0.2)
                # gobgpd dropped it; the kernel still routes it
                await asyncio.sleep(1)
                assert f"10.9.1.0/24 via {pair.ip_a} dev eth0" in proto17(pair.b)
                assert "10.9.1.0/24" in learner.installer.held

                await again.add_peer(PeerConfig(address=pair.ip_b, asn=ASN,
                                                local_address=pair.ip_a, **gr))
                await again.add_path("10.9.1.0/24", pair.ip_a)
                # advertised again: an ordinary route once more
                await until(lambda: not learner.installer.held, what="the path again")
                assert learner.installer.learned["10.9.1.0/24"] == pair.ip_a
                assert f"10.9.1.0/24 via {pair.ip_a} dev eth0" in proto17(pair.b)
            finally:
                await learner.stop()
                for g in (a, b, again):
                    if g is not None:
                        await g.stop()

    asyncio.run(main())


def test_reconcile_repairs_drift_and_prunes_only_proto17(pair: Pair) -> None:
    async def main() -> None:
        table = RouteTable(netns=pair.b)
        inst = RouteInstaller(table)
        try:
            ip("-n", pair.b, "route", "add", "10.7.0.0/24", "via", pair.ip_a, "proto", "17")
            ip("-n", pair.b, "route", "add", "10.7.1.0/24", "via", pair.ip_a, "proto", "static")
            from kube_router_routing_bgp.gobgpd import LearnedPath

            inst.update([LearnedPath("10.7.2.0/24", pair.ip_a, False, pair.ip_a)])
            await inst.reconcile()
            # a stale proto 17 route stays until pruning is on (restarts keep traffic)
            assert "10.7.0.0/24" in proto17(pair.b)
            assert "10.7.2.0/24" in proto17(pair.b)
            ip("-n", pair.b, "route", "del", "10.7.2.0/24")  # drift
            inst.pruning = True
            await inst.reconcile()
            routes = proto17(pair.b)
            assert "10.7.2.0/24" in routes and "10.7.0.0/24" not in routes
            assert "proto static" in ip("-n", pair.b, "route", "show", "10.7.1.0/24")
            assert await inst.remove_all() == 1
            assert proto17(pair.b) == ""
            assert "10.7.1.0/24" in ip("-n", pair.b, "route")
        finally:
            table.close()

    asyncio.run(main())


@pytest.mark.skipif(not shutil.which("bird"), reason="bird2 is not installed")
def test_bird_to_gobgp(pair: Pair) -> None:
    """BIRD (eBGP, AS 64513) in a announces a static route; our side learns it, and BIRD
    learns our pod CIDR into its own table."""

    async def main() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            conf = Path(tmp) / "bird.conf"
            conf.write_text(
                f"router id {pair.ip_a};\n"
                "protocol device {}\n"
                # blackholes: BIRD then announces itself as the next hop
                "protocol static { ipv4; route 10.8.0.0/24 blackhole; "
                "route 0.0.0.0/0 blackhole; }\n"
                "protocol kernel { ipv4 { import none; export where source = RTS_BGP; }; }\n"
                f"protocol bgp n {{ local {pair.ip_a} as 64513; "
                f"neighbor {pair.ip_b} as {ASN}; connect retry time 2;\n"
                "  ipv4 { import all; export where source = RTS_STATIC; }; }\n")
            bird = subprocess.Popen(["ip", "netns", "exec", pair.a, "bird", "-f", "-c",
                                     str(conf), "-s", f"{tmp}/bird.ctl"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            b = await start_speaker(pair.b, pair.ip_b, tmp)
            learner = Learner(b, pair.b)
            # the controller's import filter: never a default route
            try:
                await learner.start()
                await b.add_peer(PeerConfig(address=pair.ip_a, asn=64513,
                                            local_address=pair.ip_b, external=True))
                await b.add_path("10.2.5.0/24", pair.ip_b)
                await until(lambda: "10.8.0.0/24" in proto17(pair.b), what="BIRD's route")
                assert f"10.8.0.0/24 via {pair.ip_a} dev eth0" in proto17(pair.b)
                assert "default" not in proto17(pair.b)
                await until(lambda: "10.2.5.0/24" in ip("-n", pair.a, "route"),
                            what="our path in BIRD's kernel table")
                assert "proto bird" in ip("-n", pair.a, "route", "show", "10.2.5.0/24")
            finally:
                await learner.stop()
                await b.stop()
                bird.terminate()
                bird.wait(5)

    asyncio.run(main())


def test_md5_password_session(pair: Pair) -> None:
    """TCP MD5: matching passwords establish; a wrong one never does."""

    async def established(g: Gobgpd) -> bool:
        return any(p.state == "Establ" for p in await g.list_peers())

    async def main() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            a = await start_speaker(pair.a, pair.ip_a, tmp)
            b = await start_speaker(pair.b, pair.ip_b, tmp, asn=64513)
            try:
                await a.add_peer(PeerConfig(address=pair.ip_b, asn=64513, password="s3cret",
                                            local_address=pair.ip_a, external=True))
                await b.add_peer(PeerConfig(address=pair.ip_a, asn=ASN, password="wrong",
                                            local_address=pair.ip_b, external=True))
                await asyncio.sleep(8)
                assert not await established(a)
                await b.delete_peer(pair.ip_a)
                await b.add_peer(PeerConfig(address=pair.ip_a, asn=ASN, password="s3cret",
                                            local_address=pair.ip_b, external=True))
                deadline = time.monotonic() + 60
                while not await established(a):
                    assert time.monotonic() < deadline, "MD5 session never established"
                    await asyncio.sleep(0.5)
            finally:
                await a.stop()
                await b.stop()

    asyncio.run(main())
