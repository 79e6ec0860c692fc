"""kube-dummy-if's batches against the kernel: thousands of VIPs, streamed in chunks."""

from __future__ import annotations

import asyncio
import errno
import subprocess
from collections.abc import Callable
from collections.abc import Iterator

import pytest

from kube_router_proxy_ipvs import rtnl
from kube_router_proxy_ipvs.dummy_if import DummyInterface
from kube_router_proxy_ipvs.dummy_if import delete_link

pytestmark = pytest.mark.kernel
LINK = "kt-dummy-many"
SRC_LINK = "kt-dummy-src"
SRC = "192.168.78.1"


@pytest.fixture
def dummy(sh: Callable[..., str]) -> Iterator[DummyInterface]:
    """kube-dummy-if under the name ``LINK``, loaded, beside a link holding the node
    address ``SRC``; both removed afterwards."""
    subprocess.run(["ip", "link", "add", SRC_LINK, "type", "dummy"], check=True)
    try:
        sh(["ip", "addr", "add", f"{SRC}/32", "dev", SRC_LINK])
        sh(["ip", "link", "set", SRC_LINK, "up"])
        link = DummyInterface(LINK)
        asyncio.run(link.load())
        yield link
    finally:
        asyncio.run(delete_link(LINK))
        subprocess.run(["ip", "link", "del", SRC_LINK], check=False)


def test_many_vips_span_chunks_and_come_back_exactly(dummy: DummyInterface,
                                                     sh: Callable[..., str]) -> None:
    vips = [f"10.99.{i // 250}.{i % 250 + 1}" for i in range(3000)]
    # two messages per VIP: more than one send buffer
    sizes = 3000 * (rtnl._ADDR4.size + rtnl._ROUTE4.size)
    assert sizes > rtnl.CHUNK_BYTES
    asyncio.run(dummy.update(set(vips), set(), {4: SRC}))
    assert dummy.sent == 6000 and not dummy.last_failures
    bound = sh(["ip", "-4", "-o", "addr", "show", "dev", LINK]).splitlines()
    assert len(bound) == 3000
    routes = sh(["ip", "-4", "route", "show", "table", "local", "dev", LINK]).splitlines()
    assert len(routes) == 3000 and all(f"src {SRC}" in r for r in routes)
    # a fresh instance reads the same state back: nothing left to send
    again = DummyInterface(LINK)
    asyncio.run(again.load())
    assert len(again.plan(set(vips), set(), {4: SRC})) == 0
    asyncio.run(again.update(set(), set(vips[:2500])))
    assert len(sh(["ip", "-4", "-o", "addr", "show", "dev", LINK]).splitlines()) == 500
    assert set(again.addrs) == set(vips[2500:])


def test_failures_are_reported_by_message_across_chunks(dummy: DummyInterface,
                                                        sh: Callable[..., str]) -> None:
    """Errors come back by sequence number: each names the message that failed, in a batch
    of several send buffers mixing single messages and address-and-route pairs."""
    assert dummy.index is not None
    batch = rtnl.Batch(dummy.index)
    for i in range(4000):
        vip = f"10.98.{i // 250}.{i % 250 + 1}"
        if i % 2:
            batch.address_with_route(vip, SRC)
        else:
            batch.address(vip, add=True)
        if i in (5, 2222, 3999):  # never bound: nothing to delete
            batch.address(f"10.97.0.{i % 250 + 1}", add=False)
    # a source the node does not have: the address goes in, its route fails
    batch.address_with_route("10.98.200.1", "192.0.2.99")
    assert batch.kept  # full send buffers already: more than one sendmsg
    failed = batch.send()
    assert failed == {(rtnl.DEL_ADDRESS, "10.97.0.6"): errno.EADDRNOTAVAIL,
                      (rtnl.DEL_ADDRESS, "10.97.0.223"): errno.EADDRNOTAVAIL,
                      (rtnl.DEL_ADDRESS, "10.97.0.250"): errno.EADDRNOTAVAIL,
                      (rtnl.SET_ROUTE, "10.98.200.1"): errno.EINVAL}
    assert len(sh(["ip", "-4", "-o", "addr", "show", "dev", LINK]).splitlines()) == 4001
