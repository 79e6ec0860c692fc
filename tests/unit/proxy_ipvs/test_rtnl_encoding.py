"""The rtnetlink batch of kube-dummy-if: the one-pack encodings match the general ones."""

from __future__ import annotations

import pytest

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
        batch._ack_last()
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
    seqs = [seq for _t, _f, seq, _p in rtnl.nl.iter_messages(b"".join(batch.chunks()))]
    assert seqs == list(range(1, 9))
