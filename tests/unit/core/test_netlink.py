"""The netlink base: framing, the chunk buffer, sequence numbers, and the draining of error
replies. Replies are fed through a datagram socket pair here; the kernel's own answers are
checked in tests/kernel (proxy_ipvs/test_ipvs_netlink.py, routing_bgp)."""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from kube_router.linux import netlink as nl


def _error(seq: int, code: int, flags: int = nl.NLM_F_REQUEST) -> bytes:
    """An NLMSG_ERROR reply to message ``seq`` (capped: only the request's header echoed)."""
    echoed = nl.HEADER.pack(20, 99, flags, seq, 0)
    return nl.frame(nl.NLMSG_ERROR, struct.pack("=i", -code) + echoed, seq)


def test_attributes_are_padded_and_parse_back() -> None:
    blob = nl.attr(1, b"abc") + nl.nested(2, nl.attr(3, b"\x01\x02\x03\x04"))
    assert len(blob) == 8 + 12
    attrs = nl.parse_attrs(blob)
    assert attrs[1] == b"abc"
    assert nl.parse_attrs(attrs[2]) == {3: b"\x01\x02\x03\x04"}  # NLA_F_NESTED masked off


def test_a_datagram_splits_into_its_messages() -> None:
    data = nl.frame(20, b"\0" * 8, 3, nl.NLM_F_REQUEST | nl.NLM_F_ACK) + _error(4, errno.EEXIST)
    msgs = list(nl.iter_messages(data))
    assert [(t, f, s, len(p)) for t, f, s, p in msgs] == [
        (20, nl.NLM_F_REQUEST | nl.NLM_F_ACK, 3, 8), (nl.NLMSG_ERROR, nl.NLM_F_REQUEST, 4, 20)]
    assert nl.error_code(msgs[1][3]) == errno.EEXIST
    assert nl.echoed_flags(msgs[1][3]) == nl.NLM_F_REQUEST


def test_the_chunk_buffer_sends_whole_messages_and_acks_the_last() -> None:
    sent: list[bytes] = []
    buf = nl.ChunkBuffer(64, lambda view: sent.append(bytes(view)), None)
    msgs = [nl.frame(24, bytes(8), seq) for seq in range(1, 6)]  # 24 bytes each
    for m in msgs:
        buf.put(m)
    # two fit in 64 bytes: the buffer went out twice, the fifth message waits
    assert sent == [msgs[0] + msgs[1], msgs[2] + msgs[3]]
    assert buf.ack_last()
    rest = buf.take_rest()
    assert rest is not None
    (_t, flags, seq, _p), = nl.iter_messages(bytes(rest))
    assert (seq, flags) == (5, nl.NLM_F_REQUEST | nl.NLM_F_ACK)
    assert buf.take_rest() is None and not buf.ack_last()  # nothing left to ack


def test_without_a_sink_the_chunks_are_kept_and_a_big_message_grows_the_buffer() -> None:
    buf = nl.ChunkBuffer(32, None, None)
    small, big = nl.frame(24, bytes(4), 1), nl.frame(24, bytes(60), 2)
    buf.put(small)
    buf.put(big)
    assert buf.chunks() == [small, big]


def test_reserved_sequence_numbers_are_consecutive_and_never_wrap() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        s = nl.Socket(nl.NETLINK_ROUTE, sock=a)
        assert s.reserve(3) == 1 and s.next_seq() == 4
        s._seq = 0xFFFFFFFF - 2
        assert s.reserve(5) == 1  # would cross 2**32: starts again at 1
        assert s.next_seq() == 6


def test_errors_are_drained_by_sequence_number_until_the_last_ack() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        s = nl.Socket(nl.NETLINK_ROUTE, sock=a)
        seen: list[tuple[int, int]] = []

        def on_reply(seq: int, code: int, _payload: bytes) -> bool:
            if code:
                seen.append((seq, code))
            return seq == 9

        assert not s.drain(on_reply, block=False)  # nothing waiting: back at once
        b.send(_error(2, errno.EEXIST) + _error(5, errno.ENOENT))
        b.send(_error(7, errno.EINVAL))
        b.send(_error(9, 0, nl.NLM_F_REQUEST | nl.NLM_F_ACK))  # the last message's ack
        b.send(_error(3, errno.EPERM))  # after the close: left for the next batch
        assert s.drain(on_reply, block=True)
        assert seen == [(2, errno.EEXIST), (5, errno.ENOENT), (7, errno.EINVAL)]


def test_a_dump_error_is_raised_not_taken_for_the_end() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        s = nl.Socket(nl.NETLINK_ROUTE, sock=a)
        seq = s._seq + 1
        b.send(nl.frame(24, b"one\0", seq, nl.NLM_F_MULTI)
               + nl.frame(24, b"old\0", seq - 1, nl.NLM_F_MULTI))  # another request's
        b.send(_error(seq, errno.EBUSY))
        got: list[bytes] = []
        with pytest.raises(nl.NetlinkError) as info:
            for _t, payload in s.dump(26, b"", "route dump"):
                got.append(payload)
        assert got == [b"one\0"]
        assert info.value.errno == errno.EBUSY and info.value.op == "route dump"
        assert "route dump" in str(info.value)


def test_a_dump_that_fails_on_the_way_ends_with_its_errno() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        s = nl.Socket(nl.NETLINK_ROUTE, sock=a)
        b.send(nl.frame(nl.NLMSG_DONE, struct.pack("=i", 0), 1, nl.NLM_F_MULTI))
        assert list(s.dump(22, b"", "address dump")) == []
        b.send(nl.frame(nl.NLMSG_DONE, struct.pack("=i", -errno.ENODEV), 2, nl.NLM_F_MULTI))
        with pytest.raises(nl.NetlinkError) as info:
            list(s.dump(22, b"", "address dump"))
        assert info.value.errno == errno.ENODEV


def test_a_request_raises_as_the_codec_asks() -> None:
    class CodecError(nl.NetlinkError):
        pass

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        s = nl.Socket(nl.NETLINK_ROUTE, sock=a)
        b.send(_error(1, 0))
        assert s.request(24, b"", "add") is None  # an ack
        b.send(_error(2, errno.EEXIST))
        with pytest.raises(CodecError):
            s.request(24, b"", "add", error=CodecError)
