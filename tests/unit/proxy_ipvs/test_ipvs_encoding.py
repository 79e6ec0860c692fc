"""Byte-level checks of the IPVS encoder, against layouts worked out from linux/ip_vs.h."""

from __future__ import annotations

import socket
import struct

from kube_router_proxy_ipvs import ipvs_netlink as nl


def _attrs(blob: bytes) -> list[tuple[int, bytes]]:
    out, off = [], 0
    while off < len(blob):
        length, atype = struct.unpack_from("=HH", blob, off)
        out.append((atype, blob[off + 4 : off + length]))
        off += (length + 3) & ~3
    return out


def test_new_service_layout() -> None:
    key = nl.service_key(socket.AF_INET, "tcp", "10.96.0.1", 443)
    op = nl.new_service(key, nl.ServiceAttrs("rr", nl.SVC_F_PERSISTENT, 10800))
    assert op.body[:4] == bytes([nl.CMD_NEW_SERVICE, 1, 0, 0])
    [(outer_type, inner)] = _attrs(op.body[4:])
    assert outer_type == nl.CMD_ATTR_SERVICE | nl.NLA_F_NESTED
    attrs = dict(_attrs(inner))
    assert attrs[nl.SVC_ATTR_AF] == struct.pack("=H", socket.AF_INET)
    assert attrs[nl.SVC_ATTR_PROTOCOL] == struct.pack("=H", 6)
    assert attrs[nl.SVC_ATTR_ADDR] == bytes([10, 96, 0, 1])
    assert attrs[nl.SVC_ATTR_PORT] == b"\x01\xbb"  # network byte order
    assert attrs[nl.SVC_ATTR_SCHED_NAME] == b"rr\0"
    assert attrs[nl.SVC_ATTR_FLAGS] == struct.pack("=II", 1, 0xFFFFFFFF)
    assert attrs[nl.SVC_ATTR_TIMEOUT] == struct.pack("=I", 10800)
    assert attrs[nl.SVC_ATTR_NETMASK] == struct.pack("=I", 0xFFFFFFFF)
    assert op.desc == "add-service TCP/10.96.0.1:443"


def test_attributes_are_padded_to_four_bytes() -> None:
    key = nl.service_key(socket.AF_INET, "UDP", "10.96.0.10", 53)
    op = nl.new_service(key, nl.ServiceAttrs("wlc"))  # "wlc\0" and "rr\0" pad differently
    assert len(op.body) % 4 == 0
    inner = dict(_attrs(dict(_attrs(op.body[4:]))[nl.CMD_ATTR_SERVICE | nl.NLA_F_NESTED]))
    assert inner[nl.SVC_ATTR_SCHED_NAME] == b"wlc\0"


def test_new_dest_is_masq_with_thresholds() -> None:
    key = nl.service_key(socket.AF_INET6, "TCP", "fd00::1", 80)
    op = nl.new_dest(key, "fd01::5", 8080, nl.DestAttrs(weight=2))
    outer = dict(_attrs(op.body[4:]))
    svc = dict(_attrs(outer[nl.CMD_ATTR_SERVICE | nl.NLA_F_NESTED]))
    assert svc[nl.SVC_ATTR_ADDR] == socket.inet_pton(socket.AF_INET6, "fd00::1")
    assert nl.SVC_ATTR_SCHED_NAME not in svc  # the service is only identified
    dest = dict(_attrs(outer[nl.CMD_ATTR_DEST | nl.NLA_F_NESTED]))
    assert dest[nl.DEST_ATTR_ADDR] == socket.inet_pton(socket.AF_INET6, "fd01::5")
    assert dest[nl.DEST_ATTR_PORT] == struct.pack("!H", 8080)
    assert dest[nl.DEST_ATTR_FWD_METHOD] == struct.pack("=I", 0)
    assert dest[nl.DEST_ATTR_WEIGHT] == struct.pack("=I", 2)
    assert dest[nl.DEST_ATTR_U_THRESH] == dest[nl.DEST_ATTR_L_THRESH] == b"\0\0\0\0"
    assert dest[nl.DEST_ATTR_ADDR_FAMILY] == struct.pack("=H", socket.AF_INET6)


def test_del_dest_carries_only_identity() -> None:
    key = nl.service_key(socket.AF_INET, "TCP", "10.96.0.1", 80)
    op = nl.del_dest(key, "10.2.0.3", 8080)
    outer = dict(_attrs(op.body[4:]))
    dest = dict(_attrs(outer[nl.CMD_ATTR_DEST | nl.NLA_F_NESTED]))
    assert set(dest) == {nl.DEST_ATTR_ADDR, nl.DEST_ATTR_PORT, nl.DEST_ATTR_ADDR_FAMILY}
    assert op.desc == "del-dest TCP/10.96.0.1:80 -> 10.2.0.3:8080"


def test_frame_header() -> None:
    msg = nl.frame(0x1F, b"\x01\x01\x00\x00", 7)
    assert struct.unpack("=IHHII", msg[:16]) == (20, 0x1F, nl.NLM_F_REQUEST, 7, 0)


def test_decode_round_trip_of_a_dumped_service() -> None:
    key = nl.service_key(socket.AF_INET, "TCP", "10.96.0.1", 80)
    # a dump reply carries the address as 16 bytes and the HASHED flag
    inner = (
        nl._nla(nl.SVC_ATTR_AF, struct.pack("=H", socket.AF_INET))
        + nl._nla(nl.SVC_ATTR_PROTOCOL, struct.pack("=H", 6))
        + nl._nla(nl.SVC_ATTR_ADDR, bytes([10, 96, 0, 1]) + b"\0" * 12)
        + nl._nla(nl.SVC_ATTR_PORT, struct.pack("!H", 80))
        + nl._nla(nl.SVC_ATTR_SCHED_NAME, b"lc\0")
        + nl._nla(nl.SVC_ATTR_FLAGS, struct.pack("=II", 3, 0xFFFFFFFF))
        + nl._nla(nl.SVC_ATTR_TIMEOUT, struct.pack("=I", 60))
        + nl._nla(nl.SVC_ATTR_STATS64 | nl.NLA_F_NESTED,
                  nl._nla(nl.STATS_CONNS, struct.pack("=Q", 5))
                  + nl._nla(nl.STATS_INBYTES, struct.pack("=Q", 1 << 40)))
    )
    dumped = nl.decode_service(nl._nla(nl.CMD_ATTR_SERVICE | nl.NLA_F_NESTED, inner))
    assert dumped.key == key
    assert dumped.attrs == nl.ServiceAttrs("lc", nl.SVC_F_PERSISTENT, 60)
    assert dumped.stats.conns == 5 and dumped.stats.inbytes == 1 << 40


def _dumped_dest(raw: bytes, port: int, weight: int, af: int | None) -> bytes:
    """A real server as a dump reply lays it out: the address in 16 bytes, every counter,
    the statistics nests, and (kernels since 4.x) the address family."""
    inner = (nl._nla(nl.DEST_ATTR_ADDR, raw + bytes(16 - len(raw)))
             + nl._nla(nl.DEST_ATTR_PORT, struct.pack("!H", port))
             + nl._nla(nl.DEST_ATTR_FWD_METHOD, struct.pack("=I", nl.FWD_MASQ))
             + nl._nla(nl.DEST_ATTR_WEIGHT, struct.pack("=I", weight))
             + nl._nla(nl.DEST_ATTR_U_THRESH, bytes(4)) + nl._nla(nl.DEST_ATTR_L_THRESH, bytes(4))
             + nl._nla(nl.DEST_ATTR_ACTIVE_CONNS, struct.pack("=I", 3))
             + nl._nla(nl.DEST_ATTR_INACT_CONNS, struct.pack("=I", 4))
             + nl._nla(nl.DEST_ATTR_PERSIST_CONNS, bytes(4)))
    if af is not None:
        inner += nl._nla(nl.DEST_ATTR_ADDR_FAMILY, struct.pack("=H", af))
    inner += nl._nla(nl.DEST_ATTR_STATS64 | nl.NLA_F_NESTED,
                     nl._nla(nl.STATS_CONNS, struct.pack("=Q", 5)))
    return nl._nla(nl.CMD_ATTR_DEST | nl.NLA_F_NESTED, inner)


def test_the_lean_dest_reader_agrees_with_the_full_one() -> None:
    cases = [(socket.inet_aton("10.2.0.5"), 8080, 1, socket.AF_INET, socket.AF_INET),
             (socket.inet_aton("10.2.0.6"), 53, 0, None, socket.AF_INET),  # no AF: the service's
             (socket.inet_pton(socket.AF_INET6, "fd00::5"), 80, 7, socket.AF_INET6,
              socket.AF_INET6),
             # a tunnelled IPv6 real server of an IPv4 service: the attribute decides
             (socket.inet_pton(socket.AF_INET6, "fd00::6"), 80, 2, socket.AF_INET6,
              socket.AF_INET)]
    for raw, port, weight, af, svc_af in cases:
        payload = _dumped_dest(raw, port, weight, af)
        full = nl.decode_dest(payload, svc_af)
        assert nl.dest_weight(payload, svc_af) == (full.addr, full.port, full.attrs.weight)
        assert nl.dest_weight(payload, svc_af)[1:] == (port, weight)


def test_fast_paths_encode_like_the_generic_encoder() -> None:
    key = nl.service_key(socket.AF_INET, "TCP", "10.96.0.1", 80)
    attrs = nl.DestAttrs(weight=3)
    generic = (nl._GENL_HDR[nl.CMD_NEW_DEST]
               + nl._nested(nl.CMD_ATTR_SERVICE, nl._service_id(key))
               + nl._nested(nl.CMD_ATTR_DEST, nl._dest_full(key.af, "10.2.0.9", 8080, attrs)))
    assert nl.new_dest(key, "10.2.0.9", 8080, attrs).body == generic
    generic_del = (nl._GENL_HDR[nl.CMD_DEL_DEST]
                   + nl._nested(nl.CMD_ATTR_SERVICE, nl._service_id(key))
                   + nl._nested(nl.CMD_ATTR_DEST, nl._dest_id(key.af, "10.2.0.9", 8080)))
    assert nl.del_dest(key, "10.2.0.9", 8080).body == generic_del


def _generic_stream(family: int, bodies: list[tuple[int, bytes]]) -> bytes:
    return b"".join(nl.frame(family, body, seq) for seq, body in bodies)


def _echo(msg: bytes, code: int = -17) -> bytes:
    """An error reply's payload for ``msg``, as the kernel sends it without capped acks."""
    return struct.pack("=i", code) + msg


def _messages(stream: bytes) -> list[bytes]:
    out, off = [], 0
    while off < len(stream):
        (length,) = struct.unpack_from("=I", stream, off)
        out.append(stream[off : off + length])
        off += (length + 3) & ~3
    return out


def test_batch_encodes_in_place_like_the_generic_encoder() -> None:
    key = nl.service_key(socket.AF_INET, "TCP", "10.96.0.1", 80)
    v6 = nl.service_key(socket.AF_INET6, "UDP", "fd00::1", 53)
    attrs = nl.ServiceAttrs("lc", nl.SVC_F_PERSISTENT, 600)
    dests = {("10.2.0.9", 8080): 1, ("10.2.0.10", 8080): 0, ("10.2.0.11", 9090): 7}
    batch = nl.Batch(0x22)
    batch.service(nl.CMD_NEW_SERVICE, key, attrs)
    batch.dests(nl.CMD_NEW_DEST, key, dests.items())
    batch.dests(nl.CMD_SET_DEST, key, [(("10.2.0.9", 8080), 5)])
    batch.dests(nl.CMD_DEL_DEST, key, [(("10.2.0.10", 8080), None)])
    batch.service(nl.CMD_SET_SERVICE, key, nl.ServiceAttrs())
    batch.dests(nl.CMD_NEW_DEST, v6, [(("fd01::5", 5353), 2)])
    batch.service(nl.CMD_DEL_SERVICE, key)
    # every message of one call (a segment) carries that call's number
    bodies = [(1, nl.new_service(key, attrs).body)]
    bodies += [(2, nl.new_dest(key, ip, port, nl.DestAttrs(weight=w)).body)
               for (ip, port), w in dests.items()]
    bodies.append((3, nl.set_dest(key, "10.2.0.9", 8080, nl.DestAttrs(weight=5)).body))
    bodies.append((4, nl.del_dest(key, "10.2.0.10", 8080).body))
    bodies.append((5, nl.set_service(key, nl.ServiceAttrs()).body))
    bodies.append((6, nl.new_dest(v6, "fd01::5", 5353, nl.DestAttrs(weight=2)).body))
    bodies.append((7, nl.del_service(key).body))
    assert len(batch) == len(bodies) and batch.segments == 7
    stream = b"".join(batch.chunks())
    assert stream == _generic_stream(0x22, bodies)
    # a failure is named from its segment, and its dest from the request the reply echoes
    msgs = _messages(stream)
    assert batch.op(1, _echo(msgs[0])).desc == "add-service TCP/10.96.0.1:80"
    assert batch.op(2, _echo(msgs[2])).desc == "add-dest TCP/10.96.0.1:80 -> 10.2.0.10:8080"
    assert batch.op(2, _echo(msgs[3])).desc == "add-dest TCP/10.96.0.1:80 -> 10.2.0.11:9090"
    assert batch.op(4, _echo(msgs[5])).desc == "del-dest TCP/10.96.0.1:80 -> 10.2.0.10:8080"
    assert batch.op(6, _echo(msgs[7])).desc == "add-dest UDP/[fd00::1]:53 -> [fd01::5]:5353"
    assert batch.op(7, _echo(msgs[8])).desc == "del-service TCP/10.96.0.1:80"
    # a capped reply (header only) still names the service
    assert batch.op(2, _echo(msgs[2][:16])).desc == "add-dest TCP/10.96.0.1:80"


def test_batch_hands_full_buffers_to_its_sink() -> None:
    key = nl.service_key(socket.AF_INET, "TCP", "10.96.0.1", 80)
    dests = [((f"10.3.{i // 250}.{i % 250}", 80), 1) for i in range(5000)]
    sent: list[bytes] = []
    batch = nl.Batch(0x22, sink=lambda view: sent.append(bytes(view)), size=4096)
    batch.dests(nl.CMD_NEW_DEST, key, dests)
    batch._flush()
    assert len(sent) > 100 and all(len(c) <= 4096 + nl._MAX_MSG for c in sent)
    expected = _generic_stream(0x22, [(1, nl.new_dest(key, ip, port, nl.DestAttrs()).body)
                                      for (ip, port), _ in dests])
    stream = b"".join(sent)
    assert stream == expected
    assert batch.op(1, _echo(_messages(stream)[4320])).dest == dests[4320][0]


def test_new_service_with_dests_encodes_like_the_generic_encoder() -> None:
    key = nl.service_key(socket.AF_INET, "TCP", "10.96.0.1", 80)
    attrs = nl.ServiceAttrs("rr", nl.SVC_F_PERSISTENT, 10800)
    ips = ("10.2.0.9", "10.2.0.10")
    batch = nl.Batch(0x22)
    batch.new_service(key, attrs, ips, 8080, 3)
    batch.new_service(nl.service_key(socket.AF_INET, "UDP", "10.96.0.2", 53), attrs, (), 53, 1)
    bodies = [(1, nl.new_service(key, attrs).body)]
    bodies += [(1, nl.new_dest(key, ip, 8080, nl.DestAttrs(weight=3)).body) for ip in ips]
    bodies.append((2, nl.new_service(nl.service_key(socket.AF_INET, "UDP", "10.96.0.2", 53),
                                     attrs).body))
    stream = b"".join(batch.chunks())
    assert stream == _generic_stream(0x22, bodies)
    assert len(batch) == 4 and batch.segments == 2
    msgs = _messages(stream)
    # one segment, but the echoed request tells which message failed
    assert batch.op(1, _echo(msgs[0])).desc == "add-service TCP/10.96.0.1:80"
    assert batch.op(1, _echo(msgs[2])).desc == "add-dest TCP/10.96.0.1:80 -> 10.2.0.10:8080"


def test_new_service_in_ipv6_encodes_like_the_generic_encoder() -> None:
    key = nl.service_key(socket.AF_INET6, "TCP", "fd00::1", 80)
    batch = nl.Batch(0x22)
    batch.new_service(key, nl.ServiceAttrs(), ("fd01::5", "fd01::6"), 8080, 1)
    bodies = [(1, nl.new_service(key, nl.ServiceAttrs()).body)]
    bodies += [(2, nl.new_dest(key, ip, 8080, nl.DestAttrs()).body)
               for ip in ("fd01::5", "fd01::6")]
    assert b"".join(batch.chunks()) == _generic_stream(0x22, bodies)


def test_new_service_dests_split_across_buffers() -> None:
    key = nl.service_key(socket.AF_INET, "TCP", "10.96.0.1", 80)
    ips = tuple(f"10.4.{i // 250}.{i % 250}" for i in range(1000))
    sent: list[bytes] = []
    batch = nl.Batch(0x22, sink=lambda view: sent.append(bytes(view)), size=4096)
    batch.new_service(key, nl.ServiceAttrs(), ips, 80, 1)
    batch._flush()
    assert len(sent) > 20 and all(len(c) <= 4096 + nl._MAX_MSG for c in sent)
    bodies = [(1, nl.new_service(key, nl.ServiceAttrs()).body)]
    bodies += [(1, nl.new_dest(key, ip, 80, nl.DestAttrs()).body) for ip in ips]
    assert b"".join(sent) == _generic_stream(0x22, bodies)
    assert len(batch) == 1001
