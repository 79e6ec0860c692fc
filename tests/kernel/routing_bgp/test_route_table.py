"""The route codec on the shared netlink base, against the kernel: pipelined writes with
errors mapped back to their route, dumps, and a dump's error raised."""

from __future__ import annotations

import errno
import socket
import struct

import pytest
from bgp_kernel_helpers import Pair
from bgp_kernel_helpers import ip

from kube_router.linux import netlink
from kube_router_routing_bgp.kernel_routes import Route
from kube_router_routing_bgp.kernel_routes import RouteTable

pytestmark = pytest.mark.kernel


def test_writes_span_chunks_and_errors_name_their_route(pair: Pair) -> None:
    ip("-n", pair.b, "route", "add", "10.99.0.0/24", "via", pair.ip_a, "proto", "static")
    table = RouteTable(netns=pair.b)
    try:
        many = [Route(dst=f"10.{50 + i // 256}.{i % 256}.0/24", gateway=pair.ip_a)
                for i in range(2000)]  # 2000 messages: several sendmsg chunks
        foreign = Route(dst="10.99.0.0/24", gateway=pair.ip_a)
        gone = Route(dst="10.98.0.0/24", gateway=pair.ip_a)
        errors = table.apply(add=[*many[:1000], foreign, *many[1000:]], delete=[gone])
        # the static route is not ours: its add fails, and only its add; a delete of a
        # route already gone is no error
        assert [(e.op, e.route.dst, e.errno) for e in errors] == [
            ("add", "10.99.0.0/24", errno.EEXIST)]
        assert {r.dst for r in table.dump()} == {r.dst for r in many}
        assert "proto static" in ip("-n", pair.b, "route", "show", "10.99.0.0/24")
        moved = [Route(dst=r.dst, gateway=pair.ip_a, metric=0) for r in many[:3]]
        assert table.apply(replace=moved, delete=many[3:]) == []
        assert sorted(r.dst for r in table.dump()) == sorted(r.dst for r in many[:3])
    finally:
        table.close()


def test_a_dump_error_is_raised(pair: Pair) -> None:
    """A dump the kernel fails on the way ends with NLMSG_DONE carrying the errno; one it
    refuses at the start answers NLMSG_ERROR: both are raised, neither is an empty table."""
    sock = netlink.Socket(netlink.NETLINK_ROUTE, netns=pair.b)
    try:
        sock.sock.setsockopt(netlink.SOL_NETLINK, 12, 1)  # NETLINK_GET_STRICT_CHK
        bad_header = struct.pack("=BBBBI", socket.AF_INET, 8, 0, 0, 0)  # a prefix length
        with pytest.raises(netlink.NetlinkError) as info:
            list(sock.dump(22, bad_header, "address dump"))  # RTM_GETADDR
        assert info.value.errno == errno.EINVAL
        no_link = struct.pack("=BBBBI", socket.AF_INET, 0, 0, 0, 999999)
        with pytest.raises(netlink.NetlinkError) as info:
            list(sock.dump(22, no_link, "address dump"))
        assert info.value.errno == errno.ENODEV
        # the socket stays usable
        assert list(sock.dump(22, struct.pack("=BBBBI", socket.AF_INET, 0, 0, 0, 0), "ok"))
    finally:
        sock.close()
    with netlink.Socket(netlink.NETLINK_GENERIC) as gen:
        with pytest.raises(netlink.NetlinkError) as info:
            list(gen.dump(0xFFF0, struct.pack("=BBH", 1, 1, 0), "no such family"))
        assert info.value.errno == errno.ENOENT
