"""ipset members over netlink: the bytes of known messages, laid out field by field from the
kernel's UAPI (linux/netfilter/ipset/ip_set.h), and a batch's replies mapped back to the
member that failed. Replies come through a datagram socket pair here; the kernel's own
answers are checked in tests/kernel/core/test_ipset_members.py."""

from __future__ import annotations

import asyncio
import errno
import socket
import struct

import pytest

from kube_router.linux import ipset
from kube_router.linux import netlink as nl


def _hdr(length: int, cmd: int, seq: int) -> bytes:
    # nlmsghdr: NFNL_SUBSYS_IPSET (6) << 8 | cmd, NLM_F_REQUEST only (no NLM_F_EXCL)
    return struct.pack("=IHHII", length, (6 << 8) | cmd, 0x1, seq, 0)


def _common(family: int, name: bytes) -> bytes:
    return (bytes((family, 0)) + b"\0\0"  # nfgenmsg: family, version 0, res_id 0
            + bytes.fromhex("05000100" "06000000")  # IPSET_ATTR_PROTOCOL = 6
            + struct.pack("=HH", 4 + len(name) + 1, 2) + name + b"\0"
            + b"\0" * (-(len(name) + 1) % 4))  # IPSET_ATTR_SETNAME, NUL, padding


def test_an_ipv4_add() -> None:
    data = (bytes.fromhex("10000780")  # IPSET_ATTR_DATA, nested, 16 bytes
            + bytes.fromhex("0c000180")  # IPSET_ATTR_IP, nested
            + bytes.fromhex("08000140") + bytes((10, 1, 2, 3)))  # IPADDR_IPV4, net order
    body = _common(socket.AF_INET, b"s1") + data
    want = _hdr(16 + len(body), 9, 7) + body
    assert ipset.encode_change("s1", "10.1.2.3", add=True, seq=7) == want
    assert len(want) == 16 + 4 + 8 + 8 + 16


def test_an_ipv6_delete() -> None:
    addr = socket.inet_pton(socket.AF_INET6, "fd00::1")
    data = (bytes.fromhex("1c000780") + bytes.fromhex("18000180")
            + bytes.fromhex("14000240") + addr)  # IPADDR_IPV6, net order
    body = _common(socket.AF_INET6, b"inet6:svc") + data
    want = _hdr(16 + len(body), 10, 1) + body
    assert ipset.encode_change("inet6:svc", "fd00::1", add=False, seq=1) == want


@pytest.mark.parametrize(("proto", "number"), [("tcp", 6), ("udp", 17), ("sctp", 132)])
def test_an_address_and_port(proto: str, number: int) -> None:
    data = (bytes.fromhex("20000780") + bytes.fromhex("0c000180") + bytes.fromhex("08000140")
            + bytes((10, 96, 0, 1))
            + bytes.fromhex("06000440") + b"\x1f\x90" + b"\0\0"  # IPSET_ATTR_PORT 8080, be16
            + bytes.fromhex("05000700") + bytes((number,)) + b"\0\0\0")  # IPSET_ATTR_PROTO
    body = _common(socket.AF_INET, b"KUBE-SVC-PRT") + data
    want = _hdr(16 + len(body), 9, 3) + body
    assert ipset.encode_change("KUBE-SVC-PRT", f"10.96.0.1,{proto}:8080", add=True,
                               seq=3) == want


def test_a_prefix_carries_its_length() -> None:
    msg = ipset.encode_change("n", "10.1.0.0/16", add=True, seq=1)
    # IPSET_ATTR_CIDR (3), one byte, after the address
    assert msg.endswith(bytes.fromhex("08000140") + bytes((10, 1, 0, 0))
                        + bytes.fromhex("05000300") + b"\x10\0\0\0")


@pytest.mark.parametrize("member", ["10.1.2", "10.1.2.3,icmp:0", "10.1.2.3,tcp:70000",
                                    "10.1.0.0/33", "fd00::/129", "10.1.2.3,tcp:"])
def test_a_member_it_cannot_carry(member: str) -> None:
    with pytest.raises(ValueError, match=r"member|address|prefix"):
        ipset.encode_change("s", member, add=True, seq=1)


def test_a_name_too_long() -> None:
    with pytest.raises(ValueError, match="name"):
        ipset.encode_change("x" * 32, "10.1.2.3", add=True, seq=1)
    ipset.encode_change("x" * 31, "10.1.2.3", add=True, seq=1)


def _reply(seq: int, code: int) -> bytes:
    echoed = nl.HEADER.pack(20, (6 << 8) | 9, nl.NLM_F_REQUEST, seq, 0)
    return nl.frame(nl.NLMSG_ERROR, struct.pack("=i", -code) + echoed, seq)


def _wired() -> tuple[ipset.MemberSocket, socket.socket]:
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    members = ipset.MemberSocket()
    members._nl = nl.Socket(0, sock=ours)
    return members, kernel


def test_a_batch_goes_out_in_one_send_and_only_its_last_message_asks_for_an_ack() -> None:
    members, kernel = _wired()
    kernel.send(_reply(3, 0))  # the ack of the third (last) message
    moves = [("a", "10.0.0.1", True), ("a", "10.0.0.2", False), ("b", "fd00::1", True)]
    asyncio.run(members.change_many(moves))
    sent = kernel.recv(65536)
    msgs = list(nl.iter_messages(sent))
    assert [(t & 0xFF, f & nl.NLM_F_ACK, s) for t, f, s, _ in msgs] == [
        (9, 0, 1), (10, 0, 2), (9, nl.NLM_F_ACK, 3)]
    assert members._nl is not None  # kept for the next batch
    members.close()
    kernel.close()


def test_a_refusal_names_the_set_and_member_and_the_socket_is_replaced() -> None:
    members, kernel = _wired()
    kernel.send(_reply(2, errno.ENOENT) + _reply(3, ipset.IPSET_ERR_EXIST + 1))
    moves = [("a", "10.0.0.1", True), ("gone", "10.0.0.2", False), ("a", "10.0.0.0/8", True)]
    with pytest.raises(ipset.MemberError) as caught:
        members.change_sync(moves)
    err = caught.value
    assert (err.errno, err.name, err.member, err.add, err.others) == (
        errno.ENOENT, "gone", "10.0.0.2", False, 1)
    assert str(err) == ("ipset del gone 10.0.0.2: no such set (errno 2) "
                        "(and 1 more failed in the same batch)")
    assert members._nl is None  # a fresh socket next time
    kernel.close()


def test_a_bad_member_sends_nothing() -> None:
    members, kernel = _wired()
    with pytest.raises(ValueError):
        members.change_sync([("a", "10.0.0.1", True), ("a", "nonsense", True)])
    kernel.setblocking(False)
    with pytest.raises(BlockingIOError):
        kernel.recv(100)
    kernel.close()
