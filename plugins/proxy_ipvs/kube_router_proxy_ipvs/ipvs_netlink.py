"""A lean generic-netlink codec for the few IPVS messages the proxy sends.

pyroute2 spends hundreds of microseconds encoding one IPVS message and waits for an ack
after each; a cold sync of thousands of services then takes many seconds. Here messages are
packed with :mod:`struct`, concatenated into large ``sendmsg`` batches without
``NLM_F_ACK`` (the kernel then answers only failures, tagged with their sequence number), and
one acked request closes each batch as a barrier. Errors are mapped back to the operation
that caused them by sequence number.

The constants are the kernel's UAPI values from ``linux/ip_vs.h`` and ``linux/netlink.h``.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from functools import lru_cache
from typing import Any
from typing import NamedTuple

from kube_router.linux import netlink
from kube_router.linux.netlink import ATTR as _NLA
from kube_router.linux.netlink import HEADER as _NLMSG
from kube_router.linux.netlink import NETLINK_GENERIC
from kube_router.linux.netlink import NLA_F_NESTED
from kube_router.linux.netlink import NLA_TYPE_MASK
from kube_router.linux.netlink import NLM_F_ACK
from kube_router.linux.netlink import NLM_F_REQUEST
from kube_router.linux.netlink import ChunkBuffer
from kube_router.linux.netlink import NetlinkError
from kube_router.linux.netlink import attr as _nla
from kube_router.linux.netlink import frame
from kube_router.linux.netlink import nested as _nested
from kube_router.linux.netlink import parse_attrs

# generic netlink controller
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2

# IPVS commands
IPVS_GENL_NAME = "IPVS"
IPVS_GENL_VERSION = 1
CMD_NEW_SERVICE = 1
CMD_SET_SERVICE = 2
CMD_DEL_SERVICE = 3
CMD_GET_SERVICE = 4
CMD_NEW_DEST = 5
CMD_SET_DEST = 6
CMD_DEL_DEST = 7
CMD_GET_DEST = 8
CMD_SET_CONFIG = 12
CMD_GET_CONFIG = 13
CMD_GET_INFO = 15
CMD_FLUSH = 17

# IPVS attributes
CMD_ATTR_SERVICE = 1
CMD_ATTR_DEST = 2
CMD_ATTR_TIMEOUT_TCP = 4
CMD_ATTR_TIMEOUT_TCP_FIN = 5
CMD_ATTR_TIMEOUT_UDP = 6

SVC_ATTR_AF = 1
SVC_ATTR_PROTOCOL = 2
SVC_ATTR_ADDR = 3
SVC_ATTR_PORT = 4
SVC_ATTR_FWMARK = 5
SVC_ATTR_SCHED_NAME = 6
SVC_ATTR_FLAGS = 7
SVC_ATTR_TIMEOUT = 8
SVC_ATTR_NETMASK = 9
SVC_ATTR_STATS = 10
SVC_ATTR_STATS64 = 12

DEST_ATTR_ADDR = 1
DEST_ATTR_PORT = 2
DEST_ATTR_FWD_METHOD = 3
DEST_ATTR_WEIGHT = 4
DEST_ATTR_U_THRESH = 5
DEST_ATTR_L_THRESH = 6
DEST_ATTR_ACTIVE_CONNS = 7
DEST_ATTR_INACT_CONNS = 8
DEST_ATTR_PERSIST_CONNS = 9
DEST_ATTR_STATS = 10
DEST_ATTR_ADDR_FAMILY = 11
DEST_ATTR_STATS64 = 12

# stats (STATS: u32 except bytes; STATS64: all u64)
STATS_CONNS = 1
STATS_INPKTS = 2
STATS_OUTPKTS = 3
STATS_INBYTES = 4
STATS_OUTBYTES = 5
STATS_CPS = 6
STATS_INPPS = 7
STATS_OUTPPS = 8
STATS_INBPS = 9
STATS_OUTBPS = 10

SVC_F_PERSISTENT = 0x1
SVC_F_HASHED = 0x2  # internal; the kernel reports it, we never set it
SVC_F_SCHED1 = 0x8
SVC_F_SCHED2 = 0x10
SVC_F_SCHED3 = 0x20
FWD_MASQ = 0

PROTOCOLS = {"TCP": socket.IPPROTO_TCP, "UDP": socket.IPPROTO_UDP, "SCTP": 132}
PROTOCOL_NAMES = {v: k for k, v in PROTOCOLS.items()}

_GENL = struct.Struct("=BBH")
_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")
_BE16 = struct.Struct("!H")
_FLAGS = struct.Struct("=II")

BATCH_BYTES = netlink.CHUNK_BYTES


class IPVSError(NetlinkError):
    """An IPVS request failed; ``op`` describes the operation."""


class ServiceKey(NamedTuple):
    """Identifies one IPVS virtual service (fwmark services are not managed here).

    A named tuple: a cold sync makes tens of thousands, and hashes them often.
    """

    af: int  # socket.AF_INET or AF_INET6
    protocol: int  # IPPROTO_*
    addr: str
    port: int

    def __str__(self) -> str:
        proto = PROTOCOL_NAMES.get(self.protocol, str(self.protocol))
        host = f"[{self.addr}]" if self.af == socket.AF_INET6 else self.addr
        return f"{proto}/{host}:{self.port}"


class ServiceAttrs(NamedTuple):
    """What may change in place on a virtual service (IPVS_CMD_SET_SERVICE)."""

    scheduler: str = "rr"
    flags: int = 0  # IP_VS_SVC_F_* without HASHED
    timeout: int = 0  # persistence timeout, seconds


@dataclass(frozen=True, slots=True)
class DestAttrs:
    weight: int = 1
    fwd_method: int = FWD_MASQ


@dataclass(slots=True)
class Stats:
    conns: int = 0
    inpkts: int = 0
    outpkts: int = 0
    inbytes: int = 0
    outbytes: int = 0
    cps: int = 0
    inpps: int = 0
    outpps: int = 0
    inbps: int = 0
    outbps: int = 0


@dataclass(slots=True)
class DumpedService:
    key: ServiceKey | None  # None for a fwmark service
    fwmark: int
    attrs: ServiceAttrs
    stats: Stats = field(default_factory=Stats)


@dataclass(slots=True)
class DumpedDest:
    addr: str
    port: int
    attrs: DestAttrs
    active_conns: int = 0
    inactive_conns: int = 0
    stats: Stats = field(default_factory=Stats)


# -- attribute packing ----------------------------------------------------------------


def _addr_bytes(af: int, addr: str) -> bytes:
    return socket.inet_pton(af, addr)


def _service_id(key: ServiceKey) -> bytes:
    return (
        _nla(SVC_ATTR_AF, _U16.pack(key.af))
        + _nla(SVC_ATTR_PROTOCOL, _U16.pack(key.protocol))
        + _nla(SVC_ATTR_ADDR, _addr_bytes(key.af, key.addr))
        + _nla(SVC_ATTR_PORT, _BE16.pack(key.port))
    )


def _service_full(key: ServiceKey, attrs: ServiceAttrs) -> bytes:
    netmask = 0xFFFFFFFF if key.af == socket.AF_INET else 128
    # The kernel rejects NEW/SET without all four of these.
    return (
        _service_id(key)
        + _nla(SVC_ATTR_SCHED_NAME, attrs.scheduler.encode() + b"\0")
        + _nla(SVC_ATTR_FLAGS, _FLAGS.pack(attrs.flags, 0xFFFFFFFF))
        + _nla(SVC_ATTR_TIMEOUT, _U32.pack(attrs.timeout))
        + _nla(SVC_ATTR_NETMASK, _U32.pack(netmask))
    )


def _dest_id(af: int, addr: str, port: int) -> bytes:
    return (
        _nla(DEST_ATTR_ADDR, _addr_bytes(af, addr))
        + _nla(DEST_ATTR_PORT, _BE16.pack(port))
        + _nla(DEST_ATTR_ADDR_FAMILY, _U16.pack(af))
    )


def _dest_full(af: int, addr: str, port: int, attrs: DestAttrs) -> bytes:
    return (
        _dest_id(af, addr, port)
        + _nla(DEST_ATTR_FWD_METHOD, _U32.pack(attrs.fwd_method))
        + _nla(DEST_ATTR_WEIGHT, _U32.pack(attrs.weight))
        + _nla(DEST_ATTR_U_THRESH, _U32.pack(0))
        + _nla(DEST_ATTR_L_THRESH, _U32.pack(0))
    )


# -- messages -------------------------------------------------------------------------


class Op(NamedTuple):
    """One IPVS request, encoded except for its netlink header.

    A named tuple rather than a dataclass: a cold sync builds tens of thousands of them.
    """

    cmd: int
    body: bytes  # genl header + attributes
    key: ServiceKey
    dest: tuple[str, int] | None = None

    @property
    def desc(self) -> str:
        """What this operation was, for error messages."""
        what = f"{_CMD_NAMES[self.cmd]} {self.key}"
        if self.dest is not None:
            host = f"[{self.dest[0]}]" if self.key.af == socket.AF_INET6 else self.dest[0]
            what += f" -> {host}:{self.dest[1]}"
        return what


_CMD_NAMES = {
    CMD_NEW_SERVICE: "add-service", CMD_SET_SERVICE: "set-service",
    CMD_DEL_SERVICE: "del-service", CMD_NEW_DEST: "add-dest", CMD_SET_DEST: "set-dest",
    CMD_DEL_DEST: "del-dest",
}
_GENL_HDR = {cmd: _GENL.pack(cmd, IPVS_GENL_VERSION, 0) for cmd in _CMD_NAMES}


@lru_cache(maxsize=64)
def _attrs_tail(attrs: ServiceAttrs, af: int) -> bytes:
    """SCHED_NAME, FLAGS, TIMEOUT and NETMASK: few distinct values in a whole cluster."""
    netmask = 0xFFFFFFFF if af == socket.AF_INET else 128
    return (_nla(SVC_ATTR_SCHED_NAME, attrs.scheduler.encode() + b"\0")
            + _nla(SVC_ATTR_FLAGS, _FLAGS.pack(attrs.flags, 0xFFFFFFFF))
            + _nla(SVC_ATTR_TIMEOUT, _U32.pack(attrs.timeout))
            + _nla(SVC_ATTR_NETMASK, _U32.pack(netmask)))


# An IPv4 service's identity attributes (AF, PROTOCOL, ADDR, PORT, each with its header
# and padding: 32 bytes), packed once per service between constant runs.
_SVC4_ID = struct.Struct("=8s" "8s" "4s" "4s" "8s")
_SVC4_AF_ATTR = struct.pack("=HHH2x", 6, SVC_ATTR_AF, socket.AF_INET)
_SVC_PROTO_ATTRS = {p: struct.pack("=HHH2x", 6, SVC_ATTR_PROTOCOL, p)
                    for p in PROTOCOLS.values()}
_SVC4_ADDR_HDR = _NLA.pack(8, SVC_ATTR_ADDR)
_SVC_PORT_ATTRS: dict[int, bytes] = {}  # at most 65,536 entries of 8 bytes
_SVC4_NEST_LEN = 4 + _SVC4_ID.size


def _svc4_id(protocol: int, addr: str, port: int) -> bytes:
    port_attr = _SVC_PORT_ATTRS.get(port)
    if port_attr is None:
        port_attr = _SVC_PORT_ATTRS[port] = struct.pack("=HH2s2x", 6, SVC_ATTR_PORT,
                                                         _BE16.pack(port))
    proto_attr = _SVC_PROTO_ATTRS.get(protocol) or struct.pack(
        "=HHH2x", 6, SVC_ATTR_PROTOCOL, protocol)
    return _SVC4_ID.pack(_SVC4_AF_ATTR, proto_attr, _SVC4_ADDR_HDR, socket.inet_aton(addr),
                         port_attr)


def _service_nest(key: ServiceKey) -> bytes:
    """The nested SERVICE attribute identifying ``key``; every dest message repeats it.
    Not cached globally: a cache of every service would outweigh the service itself (a
    batch remembers the last one, which its next call usually repeats)."""
    if key.af == socket.AF_INET:
        return _NLA.pack(_SVC4_NEST_LEN, CMD_ATTR_SERVICE | NLA_F_NESTED) + _svc4_id(
            key.protocol, key.addr, key.port)
    return _nested(CMD_ATTR_SERVICE, _service_id(key))


# An IPv4 dest in one pack: ADDR(4) PORT(2, network order) AF(2) FWD WEIGHT U_THRESH L_THRESH,
# each with its attribute header, inside the nested DEST attribute (its length is 60).
_DEST4 = struct.Struct("=HH" "HH4s" "HHH2x" "HHH2x" "HHI" "HHI" "HHI" "HHI")
_DEST_NESTED = CMD_ATTR_DEST | NLA_F_NESTED
_inet_aton = socket.inet_aton
_htons = socket.htons
_AF_INET = socket.AF_INET
_DEST4_ID = struct.Struct("=HH" "HH4s" "HHH2x" "HHH2x")


def new_service(key: ServiceKey, attrs: ServiceAttrs) -> Op:
    body = _nested(CMD_ATTR_SERVICE, _service_full(key, attrs))
    return Op(CMD_NEW_SERVICE, _GENL_HDR[CMD_NEW_SERVICE] + body, key)


def set_service(key: ServiceKey, attrs: ServiceAttrs) -> Op:
    body = _nested(CMD_ATTR_SERVICE, _service_full(key, attrs))
    return Op(CMD_SET_SERVICE, _GENL_HDR[CMD_SET_SERVICE] + body, key)


def del_service(key: ServiceKey) -> Op:
    return Op(CMD_DEL_SERVICE, _GENL_HDR[CMD_DEL_SERVICE] + _service_nest(key), key)


def _dest_op(cmd: int, key: ServiceKey, addr: str, port: int, attrs: DestAttrs) -> Op:
    if key.af == socket.AF_INET:
        # the hot path of a cold sync: one pack, no helper calls
        return Op(cmd, _GENL_HDR[cmd] + _service_nest(key) + _DEST4.pack(
            60, _DEST_NESTED, 8, DEST_ATTR_ADDR, _inet_aton(addr), 6, DEST_ATTR_PORT,
            _htons(port), 6, DEST_ATTR_ADDR_FAMILY, _AF_INET, 8, DEST_ATTR_FWD_METHOD,
            attrs.fwd_method, 8, DEST_ATTR_WEIGHT, attrs.weight, 8, DEST_ATTR_U_THRESH, 0,
            8, DEST_ATTR_L_THRESH, 0), key, (addr, port))
    dest = _nested(CMD_ATTR_DEST, _dest_full(key.af, addr, port, attrs))
    return Op(cmd, _GENL_HDR[cmd] + _service_nest(key) + dest, key, (addr, port))


def new_dest(key: ServiceKey, addr: str, port: int, attrs: DestAttrs) -> Op:
    return _dest_op(CMD_NEW_DEST, key, addr, port, attrs)


def set_dest(key: ServiceKey, addr: str, port: int, attrs: DestAttrs) -> Op:
    return _dest_op(CMD_SET_DEST, key, addr, port, attrs)


def del_dest(key: ServiceKey, addr: str, port: int) -> Op:
    if key.af == socket.AF_INET:
        dest = _DEST4_ID.pack(
            _DEST4_ID.size, CMD_ATTR_DEST | NLA_F_NESTED,
            8, DEST_ATTR_ADDR, socket.inet_aton(addr),
            6, DEST_ATTR_PORT, socket.htons(port),
            6, DEST_ATTR_ADDR_FAMILY, socket.AF_INET,
        )
    else:
        dest = _nested(CMD_ATTR_DEST, _dest_id(key.af, addr, port))
    return Op(CMD_DEL_DEST, _GENL_HDR[CMD_DEL_DEST] + _service_nest(key) + dest, key,
              (addr, port))


# -- batches encoded in place -----------------------------------------------------------

# A whole IPv4 dest message in one pack of ten values: what varies (sequence number,
# address, port) between constant runs prebuilt once per service and command.
#   [nlmsghdr 16][genl 4][service nest 36][DEST nest hdr 4][ADDR hdr 4] = prefix 48 after
#   the header; [ip 4][PORT hdr 4][port 2 + pad 2][AF 8][FWD 8][WEIGHT 8][U 8][L 8]
_DEST4_MSG = struct.Struct("=IHHII" "48s" "4s" "6s" "42s")
_DEST4_DEL_MSG = struct.Struct("=IHHII" "48s" "4s" "6s" "10s")
_PORT_HDR = _NLA.pack(6, DEST_ATTR_PORT)
_PORT_ATTRS: dict[int, bytes] = {}  # at most 65,536 entries of 6 bytes
_AF4_ATTR = struct.pack("=HHH2x", 6, DEST_ATTR_ADDR_FAMILY, socket.AF_INET)
_DEST_CMDS = frozenset((CMD_NEW_DEST, CMD_SET_DEST, CMD_DEL_DEST))


# A new IPv4 service's request, and each of its dests', around the service's identity.
_NEW_DEST4_OPEN = _GENL.pack(CMD_NEW_DEST, IPVS_GENL_VERSION, 0) + _NLA.pack(
    _SVC4_NEST_LEN, CMD_ATTR_SERVICE | NLA_F_NESTED)


@lru_cache(maxsize=64)
def _new_svc4_parts(attrs: ServiceAttrs) -> tuple[bytes, bytes]:
    """A new IPv4 service's genl header and nest opening, and its attributes after the
    identity: few distinct values in a whole cluster."""
    tail = _attrs_tail(attrs, socket.AF_INET)
    return (_GENL.pack(CMD_NEW_SERVICE, IPVS_GENL_VERSION, 0)
            + _NLA.pack(_SVC4_NEST_LEN + len(tail), CMD_ATTR_SERVICE | NLA_F_NESTED)), tail


# the DEST nest's header and its ADDR attribute's, by the nest's length (60: with the
# weights and forwarding method, 28: a delete's identity alone)
_DEST4_OPEN = {n: _NLA.pack(n, _DEST_NESTED) + _NLA.pack(8, DEST_ATTR_ADDR) for n in (28, 60)}


def _dest4_prefix(cmd: int, nest: bytes, nested_len: int) -> bytes:
    """What precedes the address in an IPv4 dest message of the service ``nest`` names."""
    return _GENL_HDR[cmd] + nest + _DEST4_OPEN[nested_len]


@lru_cache(maxsize=256)
def _dest4_suffix(weight: int) -> bytes:
    """After the port: 2 pad bytes, then AF, FWD (masq), WEIGHT, U_THRESH, L_THRESH."""
    return (b"\0\0" + _AF4_ATTR + struct.pack("=HHI", 8, DEST_ATTR_FWD_METHOD, FWD_MASQ)
            + struct.pack("=HHI", 8, DEST_ATTR_WEIGHT, weight)
            + struct.pack("=HHIHHI", 8, DEST_ATTR_U_THRESH, 0, 8, DEST_ATTR_L_THRESH, 0))


def _port_attr(port: int) -> bytes:
    attr = _PORT_ATTRS.get(port)
    if attr is None:
        attr = _PORT_ATTRS[port] = _PORT_HDR + _BE16.pack(port)
    return attr


def echoed_dest(payload: bytes, af: int) -> tuple[str, int] | None:
    """The dest of the request an error reply echoes (its payload: the error code, the
    request's netlink header, its genl header, its attributes), or None."""
    start = 4 + _NLMSG.size + _GENL.size
    if len(payload) <= start:
        return None
    end = min(len(payload), 4 + _U32.unpack_from(payload, 4)[0])
    nested = parse_attrs(payload, start, end).get(CMD_ATTR_DEST)
    if nested is None:
        return None
    a = parse_attrs(nested)
    if DEST_ATTR_ADDR not in a or DEST_ATTR_PORT not in a:
        return None
    return _addr(af, a[DEST_ATTR_ADDR]), _BE16.unpack(a[DEST_ATTR_PORT][:2])[0]


class Batch(ChunkBuffer):
    """IPVS requests encoded in place, as they are planned, into one reused buffer.

    A cold sync of 10,000 services sends 110,000 messages; where memory is costly to touch
    (every fresh page is a fault, and in a User-Mode Linux guest a slow one), a buffer the
    size of one ``sendmsg`` is filled, handed to ``sink`` when full, and filled again.
    Without a sink (prebuilt batches, tests) full buffers are kept as chunks.

    Nothing is kept per message. Each call is a segment (one service request, the dests of
    one service under one command, or a new service with its dests) and all its messages
    carry the segment's number (1-based) as their sequence number; an error reply echoes
    the failed request, so its command and dest are read back from the reply (see
    :meth:`op`). ``len()`` counts messages.
    """

    def __init__(self, family: int, sink: Callable[[memoryview], None] | None = None,
                 size: int = BATCH_BYTES, buf: bytearray | None = None) -> None:
        # ``buf``: a buffer to reuse (its pages are already mapped)
        super().__init__(size + _MAX_MSG, sink, buf)
        self.family = family
        self.limit = size
        self.count = 0
        self._cmds: list[int] = []  # per segment
        self._keys: list[ServiceKey] = []
        self._nest: tuple[ServiceKey | None, bytes] = (None, b"")  # the last one encoded

    def __len__(self) -> int:
        return self.count

    @property
    def segments(self) -> int:
        return len(self._cmds)

    def _service_nest(self, key: ServiceKey) -> bytes:
        last, nest = self._nest
        if last != key:
            nest = _service_nest(key)
            self._nest = (key, nest)
        return nest

    def _segment(self, cmd: int, key: ServiceKey) -> int:
        self._cmds.append(cmd)
        self._keys.append(key)
        return len(self._cmds)

    def _put(self, body: bytes, seq: int) -> None:
        """Append one message (``body``: genl header and attributes) numbered ``seq``."""
        length = _NLMSG.size + len(body)
        if self.used + length > self.limit:
            self._flush()
        if length > len(self.buf):
            self.buf.extend(bytes(length - len(self.buf)))
        _NLMSG.pack_into(self.buf, self.used, length, self.family, NLM_F_REQUEST, seq, 0)
        self.buf[self.used + _NLMSG.size : self.used + length] = body
        self._last = self.used
        self.used += (length + 3) & ~3
        self.count += 1

    def _put_run(self, first: bytes, head: bytes, items: Sequence[bytes], tail: bytes,
                 size: int) -> None:
        """Append the message ``first`` (if any), then ``head + item + tail`` for each item,
        messages of ``size`` bytes, in as few joins as the buffer allows (one, for any
        usual Service)."""
        per = self.limit // size or 1
        if len(items) > per:  # more than a buffer holds: a run per buffer
            for i in range(0, len(items), per):
                self._put_run(b"" if i else first, head, items[i : i + per], tail, size)
            return
        blob = first + head + (tail + head).join(items) + tail if items else first
        if self.used + len(blob) > self.limit:
            self._flush()
        used = self.used + len(blob)
        self.buf[self.used : used] = blob
        self.used = used
        self._last = used - (size if items else len(blob))
        self.count += len(items)

    def add(self, cmd: int, body: bytes, key: ServiceKey) -> None:
        """Append one request whose genl header and attributes are ``body``."""
        self._put(body, self._segment(cmd, key))

    def add_op(self, op: Op) -> None:
        self.add(op.cmd, op.body, op.key)

    @staticmethod
    def _service_body(cmd: int, nest: bytes, attrs: ServiceAttrs, af: int) -> bytes:
        # the identity's nest reopened to hold the attrs' bytes too
        tail = _attrs_tail(attrs, af)
        return (_GENL_HDR[cmd] + _NLA.pack(len(nest) + len(tail),
                                           CMD_ATTR_SERVICE | NLA_F_NESTED)
                + nest[4:] + tail)

    def service(self, cmd: int, key: ServiceKey, attrs: ServiceAttrs | None = None) -> None:
        """NEW_SERVICE or SET_SERVICE (with ``attrs``), DEL_SERVICE (without)."""
        if attrs is None:
            self.add(cmd, _GENL_HDR[cmd] + self._service_nest(key), key)
        else:
            self.add(cmd, self._service_body(cmd, self._service_nest(key), attrs, key.af), key)

    def new_service(self, key: ServiceKey, attrs: ServiceAttrs, ips: Sequence[str],
                    port: int, weight: int) -> None:
        """NEW_SERVICE, then NEW_DEST of every address in ``ips``, all on ``port`` with
        ``weight``: a new Service's virtual server, the bulk of a cold sync, in one segment.
        The dest messages differ only in the address, so they are one join of the packed
        addresses between constant runs."""
        if key.af != _AF_INET:
            self.service(CMD_NEW_SERVICE, key, attrs)
            self.dests(CMD_NEW_DEST, key, [((ip, port), weight) for ip in ips])
            return
        seq = self._segment(CMD_NEW_SERVICE, key)
        ident = _svc4_id(key.protocol, key.addr, key.port)
        opening, tail = _new_svc4_parts(attrs)
        family = self.family
        head = _NLMSG.pack(_DEST4_MSG.size, family, NLM_F_REQUEST, seq, 0) + _NEW_DEST4_OPEN \
            + ident + _DEST4_OPEN[60]
        dest_tail = _port_attr(port) + _dest4_suffix(weight)
        first = _NLMSG.pack(_NLMSG.size + len(opening) + len(ident) + len(tail), family,
                            NLM_F_REQUEST, seq, 0) + opening + ident + tail
        self.count += 1
        self._put_run(first, head, list(map(_inet_aton, ips)), dest_tail, _DEST4_MSG.size)

    def dests(self, cmd: int, key: ServiceKey, dests: Iterable[tuple[tuple[str, int], Any]]
              ) -> None:
        """NEW_DEST or SET_DEST of ((ip, port), weight) pairs; DEL_DEST (weights ignored)."""
        seq = self._segment(cmd, key)
        if key.af != _AF_INET:
            for dkey, weight in dests:
                if cmd == CMD_DEL_DEST:
                    op = del_dest(key, dkey[0], dkey[1])
                else:
                    op = _dest_op(cmd, key, dkey[0], dkey[1], _weight_attrs(weight))
                self._put(op.body, seq)
            return
        if self.used + _MAX_MSG > self.limit:
            self._flush()
        buf, family, aton = self.buf, self.family, _inet_aton
        req, limit, used, count = NLM_F_REQUEST, self.limit, self.used, self.count
        posts: dict[Any, bytes] | None = None  # weight -> the bytes after the port
        if cmd == CMD_DEL_DEST:
            pack, size = _DEST4_DEL_MSG.pack_into, _DEST4_DEL_MSG.size
            pre, post = _dest4_prefix(cmd, self._service_nest(key), 28), b"\0\0" + _AF4_ATTR
        else:
            pack, size = _DEST4_MSG.pack_into, _DEST4_MSG.size
            pre, post, posts = _dest4_prefix(cmd, self._service_nest(key), 60), b"", {}
        for dkey, weight in dests:
            if posts is not None:
                post = posts.get(weight) or posts.setdefault(weight, _dest4_suffix(weight))
            pack(buf, used, size, family, req, seq, 0, pre, aton(dkey[0]),
                 _port_attr(dkey[1]), post)
            used += size
            count += 1
            if used > limit:
                self.used = used
                self._flush()
                used = 0
        if count > self.count:
            self._last = used - size if used else -1
        self.used, self.count = used, count

    def op(self, seq: int, echo: bytes | None = None) -> Op:
        """The request of segment ``seq`` (its body is not kept), described; with ``echo``,
        the error reply's payload, the very request: its command and dest are read back."""
        cmd, key = self._cmds[seq - 1], self._keys[seq - 1]
        at = 4 + _NLMSG.size  # the echoed request's genl header
        if echo is not None and len(echo) > at:
            cmd = echo[at]
        dest = echoed_dest(echo, key.af) if echo is not None and cmd in _DEST_CMDS else None
        return Op(cmd, b"", key, dest)

#: Room kept free at the end of a buffer: larger than any one message built here.
_MAX_MSG = 1024


_WEIGHT_ATTRS: dict[int, DestAttrs] = {}


def _weight_attrs(weight: int) -> DestAttrs:
    attrs = _WEIGHT_ATTRS.get(weight)
    if attrs is None:
        attrs = _WEIGHT_ATTRS[weight] = DestAttrs(weight=weight)
    return attrs


# -- attribute parsing ----------------------------------------------------------------


def _u32(attrs: dict, key: int, default: int = 0) -> int:
    v = attrs.get(key)
    return _U32.unpack(v[:4])[0] if v else default


def _addr(af: int, raw: bytes) -> str:
    if af == socket.AF_INET6:
        return str(ipaddress.IPv6Address(raw[:16]))
    return socket.inet_ntop(socket.AF_INET, raw[:4])


def _parse_stats(raw: bytes | None) -> Stats:
    st = Stats()
    if not raw:
        return st
    a = parse_attrs(raw)
    names = ("conns", "inpkts", "outpkts", "inbytes", "outbytes", "cps", "inpps",
             "outpps", "inbps", "outbps")
    for i, name in enumerate(names, start=1):
        v = a.get(i)
        if v is None:
            continue
        if len(v) >= 8:
            setattr(st, name, _U64.unpack(v[:8])[0])
        elif len(v) >= 4:
            setattr(st, name, _U32.unpack(v[:4])[0])
    return st


def decode_service(payload: bytes, stats: bool = True) -> DumpedService:
    """One dumped service; ``stats=False`` leaves its counters at zero (cheaper)."""
    outer = parse_attrs(payload)
    a = parse_attrs(outer.get(CMD_ATTR_SERVICE, b""))
    af = _U16.unpack(a[SVC_ATTR_AF][:2])[0] if SVC_ATTR_AF in a else socket.AF_INET
    fwmark = _u32(a, SVC_ATTR_FWMARK)
    flags = _FLAGS.unpack(a[SVC_ATTR_FLAGS][:8])[0] if SVC_ATTR_FLAGS in a else 0
    sched = a.get(SVC_ATTR_SCHED_NAME, b"").split(b"\0", 1)[0].decode()
    attrs = ServiceAttrs(scheduler=sched, flags=flags & ~SVC_F_HASHED,
                         timeout=_u32(a, SVC_ATTR_TIMEOUT))
    key = None
    if SVC_ATTR_ADDR in a and not fwmark:
        key = ServiceKey(
            af=af,
            protocol=_U16.unpack(a[SVC_ATTR_PROTOCOL][:2])[0],
            addr=_addr(af, a[SVC_ATTR_ADDR]),
            port=_BE16.unpack(a[SVC_ATTR_PORT][:2])[0],
        )
    if not stats:
        return DumpedService(key=key, fwmark=fwmark, attrs=attrs)
    raw = a.get(SVC_ATTR_STATS64)
    counters = _parse_stats(raw if raw else a.get(SVC_ATTR_STATS))
    return DumpedService(key=key, fwmark=fwmark, attrs=attrs, stats=counters)


def decode_dest(payload: bytes, af: int, stats: bool = True) -> DumpedDest:
    """One dumped real server; ``stats=False`` leaves its counters at zero (cheaper: they
    are most of the work, and reading the table back at start needs none)."""
    outer = parse_attrs(payload)
    a = parse_attrs(outer.get(CMD_ATTR_DEST, b""))
    if DEST_ATTR_ADDR_FAMILY in a:
        af = _U16.unpack(a[DEST_ATTR_ADDR_FAMILY][:2])[0]
    counters = Stats()
    if stats:
        raw = a.get(DEST_ATTR_STATS64)
        counters = _parse_stats(raw if raw else a.get(DEST_ATTR_STATS))
    return DumpedDest(
        addr=_addr(af, a[DEST_ATTR_ADDR]),
        port=_BE16.unpack(a[DEST_ATTR_PORT][:2])[0],
        attrs=DestAttrs(weight=_u32(a, DEST_ATTR_WEIGHT),
                        fwd_method=_u32(a, DEST_ATTR_FWD_METHOD) & 0x7),
        active_conns=_u32(a, DEST_ATTR_ACTIVE_CONNS),
        inactive_conns=_u32(a, DEST_ATTR_INACT_CONNS),
        stats=counters,
    )


def dest_weight(payload: bytes, af: int) -> tuple[str, int, int]:
    """(address, port, weight) of one dumped real server, reading none of its other
    attributes: what a restarted agent needs of each of thousands (see :func:`decode_dest`
    for the whole of one)."""
    end = min(len(payload), _NLA.unpack_from(payload)[0])  # the DEST nest, its only attribute
    offset, raw, port, weight = 4, b"", 0, 0
    while offset + 4 <= end:
        length, atype = _NLA.unpack_from(payload, offset)
        if length < 4:
            break
        atype &= NLA_TYPE_MASK
        if atype == DEST_ATTR_ADDR:
            raw = payload[offset + 4 : offset + length]
        elif atype == DEST_ATTR_PORT:
            port = _BE16.unpack_from(payload, offset + 4)[0]
        elif atype == DEST_ATTR_WEIGHT:
            weight = _U32.unpack_from(payload, offset + 4)[0]
        elif atype == DEST_ATTR_ADDR_FAMILY:
            af = _U16.unpack_from(payload, offset + 4)[0]
        offset += (length + 3) & ~3
    return _addr(af, raw), port, weight


def _get_dests(key: ServiceKey) -> bytes:
    """The GET_DEST dump request of ``key``'s real servers."""
    return _GENL.pack(CMD_GET_DEST, IPVS_GENL_VERSION, 0) + _nested(CMD_ATTR_SERVICE,
                                                                   _service_id(key))


# -- the socket -----------------------------------------------------------------------

#: (segment, operation, error) of each failed request of a batch
Failures = list[tuple[int, Op, IPVSError]]


class IPVSSocket:
    """A generic-netlink socket bound to the IPVS family. Blocking; not thread-safe."""

    def __init__(self) -> None:
        # Acks are not capped: an error reply echoes the whole failed request, which names
        # the dest a batch's message was for (see Batch).
        self.nl = netlink.Socket(NETLINK_GENERIC)
        self.family = self._resolve_family()
        # Made once with the socket and reused: the send buffer of every stream.
        self.buffer = bytearray(BATCH_BYTES + _MAX_MSG)

    def close(self) -> None:
        self.nl.close()

    def __enter__(self) -> IPVSSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _resolve_family(self) -> int:
        body = _GENL.pack(CTRL_CMD_GETFAMILY, 1, 0) + _nla(
            CTRL_ATTR_FAMILY_NAME, IPVS_GENL_NAME.encode() + b"\0")
        what = "resolve generic netlink family IPVS"
        payload = self.nl.request(GENL_ID_CTRL, body, what, ack=False, error=IPVSError)
        if payload is None:
            raise IPVSError(errno.ENOENT, what)
        attrs = parse_attrs(payload, _GENL.size)
        return _U16.unpack(attrs[CTRL_ATTR_FAMILY_ID][:2])[0]

    # -- batches ------------------------------------------------------------------------

    def batch(self) -> Batch:
        """An empty batch for this socket's IPVS family."""
        return Batch(self.family)

    def apply(self, ops: Iterable[Op]) -> list[tuple[Op, IPVSError]]:
        """Send every operation, pipelined; return the ones that failed with their error."""
        batch = self.batch()
        ops = list(ops)
        for op in ops:
            batch.add_op(op)  # one segment each: segment n is ops[n - 1]
        failures: Failures = []
        self._send_chunks(batch, failures)
        return [(ops[seq - 1], err) for seq, _, err in failures]

    def send(self, batch: Batch) -> list[tuple[Op, IPVSError]]:
        """Send a prebuilt batch (no sink), pipelined; return the requests that failed with
        their error. Failures do not stop the batch: each message is independent."""
        failures: Failures = []
        self._send_chunks(batch, failures)
        return [(op, err) for _, op, err in failures]

    def _send_chunks(self, batch: Batch, failures: Failures) -> None:
        acked = batch.ack_last()
        chunks = batch.chunks()
        for i, chunk in enumerate(chunks):
            self.nl.send(chunk)
            if i < len(chunks) - 1:
                self.nl.drain(self._on_reply(batch, failures, 0), block=False)
        self._close(batch, failures, acked)

    def _close(self, batch: Batch, failures: Failures, acked: bool) -> None:
        """Collect the errors of a sent batch up to its end: the ack of its last message,
        or (that one went out with an earlier chunk) the ack of a barrier request."""
        if not batch.count:
            return
        if acked:
            self.nl.drain(self._on_reply(batch, failures, batch.segments, last=True),
                          block=True)
            return
        # An acked GET_INFO: its reply comes after every earlier error.
        barrier = batch.segments + 1
        self.nl.send(frame(batch.family, _GENL.pack(CMD_GET_INFO, IPVS_GENL_VERSION, 0),
                           barrier, NLM_F_REQUEST | NLM_F_ACK))
        self.nl.drain(self._on_reply(batch, failures, barrier), block=True)

    def stream(self) -> Stream:
        """A batch sent as it fills: encode into it, then :meth:`Stream.finish`."""
        return Stream(self)

    @staticmethod
    def _on_reply(batch: Batch, failures: Failures, end: int, last: bool = False
                  ) -> netlink.OnReply:
        """What reads a batch's replies: each error becomes a failure of its segment; the
        reply to ``end`` (the barrier request, or with ``last`` the batch's last message,
        whose echoed flags carry NLM_F_ACK) closes the batch."""
        segments = batch.segments

        def on_reply(seq: int, code: int, payload: bytes) -> bool:
            closed = False
            if seq == end and last and netlink.echoed_flags(payload) & NLM_F_ACK:
                closed = True  # the last message's own reply: an ack or its error
            elif seq == end and end and not last:
                if code:
                    raise IPVSError(code, "IPVS barrier request")
                return True
            if code and 0 < seq <= segments:
                op = batch.op(seq, payload)
                failures.append((seq, op, IPVSError(code, op.desc)))
            return closed

        return on_reply

    # -- dumps --------------------------------------------------------------------------

    def _dump(self, body: bytes, what: str) -> list[bytes]:
        return [payload[_GENL.size :]
                for _t, payload in self.nl.dump(self.family, body, what, IPVSError)]

    def _request(self, body: bytes, what: str, *, ack: bool) -> bytes | None:
        return self.nl.request(self.family, body, what, ack=ack, error=IPVSError)

    def timeouts(self) -> tuple[int, int, int]:
        """The IPVS connection timeouts (tcp, tcpfin, udp), in seconds."""
        what = "get IPVS timeouts"
        payload = self._request(_GENL.pack(CMD_GET_CONFIG, IPVS_GENL_VERSION, 0), what,
                                ack=False)
        if payload is None:
            raise IPVSError(errno.EIO, what)
        a = parse_attrs(payload, _GENL.size)
        return (_u32(a, CMD_ATTR_TIMEOUT_TCP), _u32(a, CMD_ATTR_TIMEOUT_TCP_FIN),
                _u32(a, CMD_ATTR_TIMEOUT_UDP))

    def set_timeouts(self, tcp: int = 0, tcpfin: int = 0, udp: int = 0) -> None:
        """Set the IPVS connection timeouts in seconds; 0 leaves that one as it is (the
        kernel's own rule for these attributes)."""
        body = (_GENL.pack(CMD_SET_CONFIG, IPVS_GENL_VERSION, 0)
                + _nla(CMD_ATTR_TIMEOUT_TCP, _U32.pack(tcp))
                + _nla(CMD_ATTR_TIMEOUT_TCP_FIN, _U32.pack(tcpfin))
                + _nla(CMD_ATTR_TIMEOUT_UDP, _U32.pack(udp)))
        self._request(body, f"set IPVS timeouts tcp={tcp} tcpfin={tcpfin} udp={udp}",
                      ack=True)

    def services(self, stats: bool = True) -> list[DumpedService]:
        return list(self.each_service(stats))

    def each_service(self, stats: bool = True) -> Iterator[DumpedService]:
        """The dumped services one at a time, as they are read: a caller that looks at
        each and keeps none never holds the whole table."""
        body = _GENL.pack(CMD_GET_SERVICE, IPVS_GENL_VERSION, 0)
        for _t, payload in self.nl.dump(self.family, body, "IPVS service dump", IPVSError):
            yield decode_service(payload[_GENL.size :], stats)

    def dests(self, key: ServiceKey, stats: bool = True) -> list[DumpedDest]:
        return [decode_dest(p, key.af, stats)
                for p in self._dump(_get_dests(key), f"IPVS dest dump {key}")]

    def dest_weights(self, key: ServiceKey) -> dict[tuple[str, int], int]:
        """The real servers of ``key`` as {(address, port): weight}."""
        out: dict[tuple[str, int], int] = {}
        for payload in self._dump(_get_dests(key), f"IPVS dest dump {key}"):
            addr, port, weight = dest_weight(payload, key.af)
            out[(addr, port)] = weight
        return out


class Stream(Batch):
    """A batch bound to a socket: each full buffer is sent at once, and the errors it drew
    so far are collected, while the rest is still being encoded."""

    def __init__(self, sock: IPVSSocket) -> None:
        self.socket = sock
        self.failures: Failures = []
        super().__init__(sock.family, self._send_chunk, buf=sock.buffer)

    def _send_chunk(self, view: memoryview) -> None:
        self.socket.nl.send(view)
        self.socket.nl.drain(IPVSSocket._on_reply(self, self.failures, 0), block=False)

    def finish(self) -> list[tuple[Op, IPVSError]]:
        """Send what is left, wait for the end of the batch, return every failure."""
        acked = self.ack_last()
        rest = self.take_rest()
        if rest is not None:
            self.socket.nl.send(rest)
        self.socket._close(self, self.failures, acked)
        return [(op, err) for _, op, err in self.failures]


def service_key(af: int, protocol: str, addr: str, port: int) -> ServiceKey:
    """Build a key from API-style values ("TCP", "10.96.0.1", 80)."""
    return ServiceKey(af=af, protocol=PROTOCOLS[protocol.upper()],
                      addr=str(ipaddress.ip_address(addr)), port=port)
