"""Graceful restart as the helper: a restarting peer's routes outlive gobgpd's early drop."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from kube_router_routing_bgp import route_sync
from kube_router_routing_bgp.gobgpd import LearnedPath
from kube_router_routing_bgp.kernel_routes import RouteTable
from kube_router_routing_bgp.route_sync import RouteInstaller

PEER = "192.168.10.101"
PREFIX = "10.2.1.0/24"


@pytest.fixture
def inst() -> Iterator[RouteInstaller]:
    table = RouteTable()  # only a socket: these tests never flush
    installer = RouteInstaller(table)
    installer.hold_seconds = 90
    installer.update([LearnedPath(PREFIX, PEER, False, PEER)])
    installer.peer_state(PEER, established=True)
    yield installer
    table.close()


def _withdraw(inst: RouteInstaller) -> None:
    inst.update([LearnedPath(PREFIX, PEER, True, PEER)])


def test_a_withdrawal_over_an_established_session_removes_the_route(inst) -> None:
    _withdraw(inst)
    assert PREFIX not in inst.desired and not inst.held


def test_a_withdrawal_while_the_session_is_down_is_held_until_advertised_again(inst) -> None:
    inst.peer_state(PEER, established=False)
    _withdraw(inst)
    assert inst.desired[PREFIX].gateway == PEER
    assert inst.held[PREFIX][0] == PEER
    # the full table without it (the periodic resync) keeps it too
    inst.replace_all([])
    assert PREFIX in inst.desired
    inst.peer_state(PEER, established=True)
    inst.update([LearnedPath(PREFIX, PEER, False, PEER)])
    assert not inst.held and inst.desired[PREFIX].gateway == PEER
    _withdraw(inst)
    assert PREFIX not in inst.desired


def test_without_graceful_restart_nothing_is_held(inst) -> None:
    inst.hold_seconds = 0
    inst.peer_state(PEER, established=False)
    _withdraw(inst)
    assert PREFIX not in inst.desired and not inst.held


def test_a_peer_back_without_the_prefix_lets_it_go(inst, monkeypatch) -> None:
    inst.peer_state(PEER, established=False)
    _withdraw(inst)
    inst.expire_held()
    assert PREFIX in inst.desired  # its restart time is not up
    monkeypatch.setattr(route_sync, "HELD_AFTER_RECONNECT", 0.0)
    inst.peer_state(PEER, established=True)
    inst.expire_held()
    assert PREFIX not in inst.desired and not inst.held


def test_the_restart_time_bounds_the_hold(inst) -> None:
    inst.hold_seconds = 0.05
    inst.peer_state(PEER, established=False)
    _withdraw(inst)
    assert PREFIX in inst.held
    time.sleep(0.06)
    inst.expire_held()
    assert PREFIX not in inst.desired and not inst.held


def test_a_withdrawal_after_the_restart_time_is_not_held(inst) -> None:
    inst.peer_state(PEER, established=False)
    inst._down_since[PEER] -= 91  # the session went down longer ago than the restart time
    _withdraw(inst)
    assert PREFIX not in inst.desired and not inst.held


def test_a_deconfigured_peer_takes_its_held_routes(inst) -> None:
    inst.peer_state(PEER, established=False)
    _withdraw(inst)
    inst.release_peer(PEER)
    assert PREFIX not in inst.desired and not inst.held
