"""The rtnetlink batch of kube-dummy-if: the one-pack encodings match the general ones."""

from __future__ import annotations

import pytest

from kube_router.linux import netlink
from kube_router_proxy_ipvs import rtnl


def _encoded(batch: rtnl.Batch) -> bytes:
    return b"".join(batch.chunks())


@pytest.mark.parametrize(("vip", "src"), [("10.96.0.10", "192.168.1.5"),
                                          ("fd00::10", "fd00:1::5")])
def test_address_with_route_is_the_address_then_the_route(vip: str, src: str) -> None:
    paired, apart = rtnl.Batch(7), rtnl.Batch(7)
    for batch in (paired, apart):
        batch.address("10.96.0.1", add=True)  # something before: sequence numbers go on
    paired.address_with_route(vip, src)
    apart.address(vip, add=True)
    apart.local_route(vip, src)
    assert _encoded(paired) == _encoded(apart)
    assert paired.what == apart.what == [(rtnl.ADD_ADDRESS, "10.96.0.1"),
                                         (rtnl.ADD_ADDRESS, vip), (rtnl.SET_ROUTE, vip)]


def test_the_last_message_of_a_pair_is_the_one_acked() -> None:
    paired, apart = rtnl.Batch(7), rtnl.Batch(7)
    paired.address_with_route("10.96.0.10", "192.168.1.5")
    apart.address("10.96.0.10", add=True)
    apart.local_route("10.96.0.10", "192.168.1.5")
    for batch in (paired, apart):
        batch.ack_last()
    assert _encoded(paired) == _encoded(apart)


def test_each_sequence_number_names_its_message() -> None:
    """A failure is reported by sequence number: each must map to its own (op, address)."""
    batch = rtnl.Batch(7)
    batch.address("10.96.0.1", add=True)
    batch.address_with_route("10.96.0.2", "192.168.1.5")
    batch.address_with_route("fd00::2", "fd00:1::5")
    batch.local_route("10.96.0.3", None)
    batch.address("10.96.0.3", add=False)
    batch.local_route("10.96.0.4", "192.168.1.5")
    assert len(batch) == 8
    assert [batch.op_of(seq) for seq in range(1, 9)] == batch.what == [
        (rtnl.ADD_ADDRESS, "10.96.0.1"), (rtnl.ADD_ADDRESS, "10.96.0.2"),
        (rtnl.SET_ROUTE, "10.96.0.2"), (rtnl.ADD_ADDRESS, "fd00::2"),
        (rtnl.SET_ROUTE, "fd00::2"), (rtnl.DEL_ROUTE, "10.96.0.3"),
        (rtnl.DEL_ADDRESS, "10.96.0.3"), (rtnl.SET_ROUTE, "10.96.0.4")]
    # and the sequence numbers written into the messages are those
    seqs = [seq for _t, _f, seq, _p in netlink.iter_messages(b"".join(batch.chunks()))]
    assert seqs == list(range(1, 9))


@pytest.mark.parametrize("src", ["192.168.1.5", "fd00:1::5"])
def test_a_run_of_pairs_is_the_pairs_one_by_one(src: str) -> None:
    """Enough VIPs to fill several send buffers, after a message already in the first: the
    same bytes, the same sequence numbers naming the same messages, the same one acked."""
    vips = [f"10.96.{i // 250}.{i % 250 + 1}" for i in range(6000)]
    if ":" in src:
        vips = [f"fd00::{i + 1:x}" for i in range(300)]
    run, one_by_one = rtnl.Batch(7), rtnl.Batch(7)
    for batch in (run, one_by_one):
        batch.address("10.97.0.1", add=True)
    run.addresses_with_routes(vips, src)
    for vip in vips:
        one_by_one.address_with_route(vip, src)
    assert len(run) == len(one_by_one) == 1 + 2 * len(vips)
    for batch in (run, one_by_one):
        batch.ack_last()
    assert len(run.chunks()) == len(one_by_one.chunks())
    assert run.chunks() == one_by_one.chunks()
    assert run.what == one_by_one.what
    assert [run.op_of(s) for s in (1, 2, 3, 2 * len(vips) + 1)] == [
        (rtnl.ADD_ADDRESS, "10.97.0.1"), (rtnl.ADD_ADDRESS, vips[0]),
        (rtnl.SET_ROUTE, vips[0]), (rtnl.SET_ROUTE, vips[-1])]


def test_a_bad_address_in_a_run_changes_nothing() -> None:
    batch = rtnl.Batch(7)
    batch.address_with_route("10.96.0.1", "192.168.1.5")
    before = (b"".join(batch.chunks()), batch.what)
    with pytest.raises(OSError):
        batch.addresses_with_routes(["10.96.0.2", "not-an-ip"], "192.168.1.5")
    assert (b"".join(batch.chunks()), batch.what) == before
