"""Kernel routes of protocol 17, written in batches over a raw rtnetlink socket.

Learned BGP routes go into the main table with ``proto 17`` (the number kube-router uses,
"zebra" in /etc/iproute2/rt_protos), which is how we recognise ours: reads filter on it,
and deletes carry it so the kernel itself refuses to remove another protocol's route.

Why not one pyroute2 call per route: every call is a round trip plus pure-Python encoding,
and a system call costs ~75 us in the guest. Here thousands of messages go out in a few
``sendmsg`` calls without per-message acknowledgements (the kernel still answers every
failure with an NLMSG_ERROR carrying the failing message's sequence number), and only the
last message of a batch asks for an ack, which tells us the batch is done.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import logging
import os
import socket
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from kube_router.linux.memory import ReceiveBuffer

log = logging.getLogger(__name__)

PROTO_BGP = 17
RT_TABLE_MAIN = 254

_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_RTM_NEWROUTE = 24
_RTM_DELROUTE = 25
_RTM_GETROUTE = 26
_NLM_F_REQUEST = 0x1
_NLM_F_ACK = 0x4
_NLM_F_DUMP = 0x300
_NLM_F_REPLACE = 0x100
_NLM_F_EXCL = 0x200
_NLM_F_CREATE = 0x400
_RTA_DST = 1
_RTA_OIF = 4
_RTA_GATEWAY = 5
_RTA_PRIORITY = 6
_RTA_PREFSRC = 7
_RTA_TABLE = 15
_RTN_UNICAST = 1
_RT_SCOPE_UNIVERSE = 0
_RT_SCOPE_LINK = 253
_SOL_NETLINK = 270
_NETLINK_CAP_ACK = 10
_NETLINK_GET_STRICT_CHK = 12

_NLMSGHDR = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")

# Bytes per sendmsg: well under the socket's default send buffer.
_SEND_CHUNK = 48 * 1024


@dataclass(frozen=True, slots=True)
class Route:
    """A route this plugin owns: ``dst`` via ``gateway`` (or straight out of ``oif``)."""

    dst: str  # normalized network "10.2.1.0/24"
    gateway: str = ""
    oif: int = 0
    src: str = ""
    table: int = RT_TABLE_MAIN
    protocol: int = PROTO_BGP
    metric: int = 0


@dataclass(frozen=True, slots=True)
class RouteError:
    route: Route
    op: str  # "add", "replace" or "delete"
    errno: int

    def __str__(self) -> str:
        return f"{self.op} {self.route.dst}: {os.strerror(self.errno)}"


def _attr(kind: int, payload: bytes) -> bytes:
    length = _RTATTR.size + len(payload)
    return _RTATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def encode_route(msg_type: int, flags: int, seq: int, route: Route) -> bytes:
    """One RTM_NEWROUTE/RTM_DELROUTE message for ``route``."""
    net = ipaddress.ip_network(route.dst)
    family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    scope = _RT_SCOPE_UNIVERSE if route.gateway or msg_type == _RTM_DELROUTE else _RT_SCOPE_LINK
    table = route.table if route.table < 256 else 0
    body = _RTMSG.pack(family, net.prefixlen, 0, 0, table, route.protocol, scope,
                       _RTN_UNICAST, 0)
    body += _attr(_RTA_DST, net.network_address.packed)
    if route.table >= 256:
        body += _attr(_RTA_TABLE, _U32.pack(route.table))
    if msg_type == _RTM_NEWROUTE:
        if route.gateway:
            body += _attr(_RTA_GATEWAY, ipaddress.ip_address(route.gateway).packed)
        if route.oif:
            body += _attr(_RTA_OIF, _U32.pack(route.oif))
        if route.src:
            body += _attr(_RTA_PREFSRC, ipaddress.ip_address(route.src).packed)
    if route.metric:
        body += _attr(_RTA_PRIORITY, _U32.pack(route.metric))
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, flags, seq, 0) + body


def parse_routes(data: bytes) -> tuple[list[Route], bool, int]:
    """Decode a dump reply chunk: (routes, done, error)."""
    routes: list[Route] = []
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        length, mtype, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, off)
        if length < _NLMSGHDR.size:
            break
        if mtype == _NLMSG_DONE:
            return routes, True, 0
        if mtype == _NLMSG_ERROR:
            (err,) = struct.unpack_from("=i", data, off + _NLMSGHDR.size)
            return routes, True, -err
        if mtype == _RTM_NEWROUTE:
            r = _parse_route(data, off + _NLMSGHDR.size, off + length)
            if r is not None:
                routes.append(r)
        off += (length + 3) & ~3
    return routes, False, 0


def _parse_route(data: bytes, start: int, end: int) -> Route | None:
    family, dst_len, _s, _tos, table, proto, _scope, rtype, _fl = _RTMSG.unpack_from(data, start)
    if rtype != _RTN_UNICAST or family not in (socket.AF_INET, socket.AF_INET6):
        return None
    dst = gw = src = b""
    oif = metric = 0
    off = start + _RTMSG.size
    while off + _RTATTR.size <= end:
        alen, atype = _RTATTR.unpack_from(data, off)
        if alen < _RTATTR.size:
            break
        payload = data[off + _RTATTR.size: off + alen]
        if atype == _RTA_DST:
            dst = payload
        elif atype == _RTA_GATEWAY:
            gw = payload
        elif atype == _RTA_OIF:
            (oif,) = _U32.unpack(payload)
        elif atype == _RTA_TABLE:
            (table,) = _U32.unpack(payload)
        elif atype == _RTA_PRIORITY:
            (metric,) = _U32.unpack(payload)
        elif atype == _RTA_PREFSRC:
            src = payload
        off += (alen + 3) & ~3
    if family == socket.AF_INET:
        net: ipaddress.IPv4Network | ipaddress.IPv6Network = ipaddress.IPv4Network(
            (dst or bytes(4), dst_len))
        gw_s = str(ipaddress.IPv4Address(gw)) if gw else ""
        src_s = str(ipaddress.IPv4Address(src)) if src else ""
    else:
        net = ipaddress.IPv6Network((dst or bytes(16), dst_len))
        gw_s = str(ipaddress.IPv6Address(gw)) if gw else ""
        src_s = str(ipaddress.IPv6Address(src)) if src else ""
    return Route(dst=str(net), gateway=gw_s, oif=oif, src=src_s, table=table,
                 protocol=proto, metric=metric)


_CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    # os.setns exists only from Python 3.12.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def open_socket(netns: str | None = None) -> socket.socket:
    """An rtnetlink socket, inside the named network namespace (/run/netns/NAME) if given."""
    if netns is None:
        return _new_socket()
    result: list[socket.socket | BaseException] = []

    def inside() -> None:
        # setns changes only this thread's namespace; the socket stays bound to it.
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            result.append(_new_socket())
        except BaseException as exc:
            result.append(exc)

    t = threading.Thread(target=inside)
    t.start()
    t.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def _new_socket() -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                      socket.NETLINK_ROUTE)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    # Errors then echo only the failing message's header, not its whole body.
    s.setsockopt(_SOL_NETLINK, _NETLINK_CAP_ACK, 1)
    s.bind((0, 0))
    return s


class RouteTable:
    """Reads and writes our routes in one network namespace. Blocking: call it from a
    worker thread (asyncio.to_thread) for large batches."""

    def __init__(self, netns: str | None = None) -> None:
        self._sock = open_socket(netns)
        self._replies = ReceiveBuffer()  # used under the lock
        self._lock = threading.Lock()
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def dump(self, protocol: int | None = PROTO_BGP, family: int = socket.AF_INET
             ) -> list[Route]:
        """Every unicast route of ``protocol`` (all protocols with None), any table."""
        with self._lock:
            self._seq += 1
            seq = self._seq
            body = _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
            self._sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), _RTM_GETROUTE,
                                           _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0) + body)
            out: list[Route] = []
            while True:
                data = self._replies.recv(self._sock)
                routes, done, err = parse_routes(data)
                out.extend(r for r in routes if protocol is None or r.protocol == protocol)
                if err:
                    raise OSError(err, f"route dump: {os.strerror(err)}")
                if done:
                    return out

    def apply(self, add: Iterable[Route] = (), replace: Iterable[Route] = (),
              delete: Iterable[Route] = ()) -> list[RouteError]:
        """Send all changes in as few system calls as possible; return the failures.

        ``add`` fails with EEXIST when any route for that destination and metric exists:
        that is how a route of another protocol is left alone. ``replace`` is for routes
        already ours. A delete of a route already gone is not an error.
        """
        ops: list[tuple[str, Route, bytes]] = []
        with self._lock:
            seq0 = self._seq + 1
            for r in delete:
                self._seq += 1
                ops.append(("delete", r, encode_route(
                    _RTM_DELROUTE, _NLM_F_REQUEST, self._seq, r)))
            for r in add:
                self._seq += 1
                ops.append(("add", r, encode_route(
                    _RTM_NEWROUTE, _NLM_F_REQUEST | _NLM_F_CREATE | _NLM_F_EXCL,
                    self._seq, r)))
            for r in replace:
                self._seq += 1
                ops.append(("replace", r, encode_route(
                    _RTM_NEWROUTE, _NLM_F_REQUEST | _NLM_F_CREATE | _NLM_F_REPLACE,
                    self._seq, r)))
            if not ops:
                return []
            return self._send(ops, seq0)

    def _send(self, ops: list[tuple[str, Route, bytes]], seq0: int) -> list[RouteError]:
        errors: list[RouteError] = []
        i = 0
        while i < len(ops):
            # Gather one chunk; the last message of the chunk asks for an ack so we know
            # when the kernel is through with it (rtnetlink handles a send synchronously,
            # and in order, so every earlier error is queued before that ack).
            size, j = 0, i
            while j < len(ops) and (size == 0 or size + len(ops[j][2]) <= _SEND_CHUNK):
                size += len(ops[j][2])
                j += 1
            last = bytearray(ops[j - 1][2])
            flags = struct.unpack_from("=H", last, 6)[0] | _NLM_F_ACK
            struct.pack_into("=H", last, 6, flags)
            payload = b"".join(op[2] for op in ops[i:j - 1]) + bytes(last)
            self._sock.send(payload)
            last_seq = seq0 + j - 1
            done = False
            while not done:
                data = self._replies.recv(self._sock)
                off = 0
                while off + _NLMSGHDR.size <= len(data):
                    length, mtype, _f, seq, _p = _NLMSGHDR.unpack_from(data, off)
                    if length < _NLMSGHDR.size:
                        break
                    if mtype == _NLMSG_ERROR:
                        (err,) = struct.unpack_from("=i", data, off + _NLMSGHDR.size)
                        idx = seq - seq0
                        if err and 0 <= idx < len(ops):
                            op, route, _ = ops[idx]
                            if not (op == "delete" and -err in (errno.ESRCH, errno.ENOENT)):
                                errors.append(RouteError(route, op, -err))
                        if seq == last_seq:
                            done = True
                    off += (length + 3) & ~3
            i = j
        return errors
