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

import errno
import ipaddress
import logging
import os
import socket
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from kube_router.linux import netlink
from kube_router.linux.netlink import NLM_F_CREATE
from kube_router.linux.netlink import NLM_F_EXCL
from kube_router.linux.netlink import NLM_F_REPLACE
from kube_router.linux.netlink import NLM_F_REQUEST

log = logging.getLogger(__name__)

PROTO_BGP = 17
RT_TABLE_MAIN = 254

_RTM_NEWROUTE = 24
_RTM_DELROUTE = 25
_RTM_GETROUTE = 26
_RTA_DST = 1
_RTA_OIF = 4
_RTA_GATEWAY = 5
_RTA_PRIORITY = 6
_RTA_PREFSRC = 7
_RTA_TABLE = 15
_RTN_UNICAST = 1
_RT_SCOPE_UNIVERSE = 0
_RT_SCOPE_LINK = 253

_NLMSGHDR = netlink.HEADER
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTATTR = netlink.ATTR
_U32 = struct.Struct("=I")

# Bytes per sendmsg: well under the socket's send buffer.
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


def encode_route(msg_type: int, flags: int, seq: int, route: Route) -> bytes:
    """One RTM_NEWROUTE/RTM_DELROUTE message for ``route``."""
    net = ipaddress.ip_network(route.dst)
    family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    scope = _RT_SCOPE_UNIVERSE if route.gateway or msg_type == _RTM_DELROUTE else _RT_SCOPE_LINK
    table = route.table if route.table < 256 else 0
    body = _RTMSG.pack(family, net.prefixlen, 0, 0, table, route.protocol, scope,
                       _RTN_UNICAST, 0)
    body += netlink.attr(_RTA_DST, net.network_address.packed)
    if route.table >= 256:
        body += netlink.attr(_RTA_TABLE, _U32.pack(route.table))
    if msg_type == _RTM_NEWROUTE:
        if route.gateway:
            body += netlink.attr(_RTA_GATEWAY, ipaddress.ip_address(route.gateway).packed)
        if route.oif:
            body += netlink.attr(_RTA_OIF, _U32.pack(route.oif))
        if route.src:
            body += netlink.attr(_RTA_PREFSRC, ipaddress.ip_address(route.src).packed)
    if route.metric:
        body += netlink.attr(_RTA_PRIORITY, _U32.pack(route.metric))
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, flags, seq, 0) + body


def decode_route(payload: bytes) -> Route | None:
    """The route of one RTM_NEWROUTE payload; None for one that is not unicast IP."""
    return _parse_route(payload, 0, len(payload))


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


class RouteTable:
    """Reads and writes our routes in one network namespace. Blocking: call it from a
    worker thread (asyncio.to_thread) for large batches."""

    def __init__(self, netns: str | None = None) -> None:
        # Errors then echo only the failing message's header, not its whole body.
        self._nl = netlink.Socket(netlink.NETLINK_ROUTE, netns=netns, cap_ack=True,
                                  sndbuf=1 << 20, rcvbuf=4 << 20)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._nl.close()

    def dump(self, protocol: int | None = PROTO_BGP, family: int = socket.AF_INET
             ) -> list[Route]:
        """Every unicast route of ``protocol`` (all protocols with None), any table."""
        body = _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
        with self._lock:
            out: list[Route] = []
            for mtype, payload in self._nl.dump(_RTM_GETROUTE, body, "route dump"):
                if mtype != _RTM_NEWROUTE:
                    continue
                r = decode_route(payload)
                if r is not None and (protocol is None or r.protocol == protocol):
                    out.append(r)
            return out

    def apply(self, add: Iterable[Route] = (), replace: Iterable[Route] = (),
              delete: Iterable[Route] = ()) -> list[RouteError]:
        """Send all changes in as few system calls as possible; return the failures.

        ``add`` fails with EEXIST when any route for that destination and metric exists:
        that is how a route of another protocol is left alone. ``replace`` is for routes
        already ours. A delete of a route already gone is not an error.
        """
        ops: list[tuple[str, int, int, Route]] = []
        for op, msg_type, flags, routes in (
                ("delete", _RTM_DELROUTE, NLM_F_REQUEST, delete),
                ("add", _RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL, add),
                ("replace", _RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE,
                 replace)):
            ops.extend((op, msg_type, flags, r) for r in routes)
        if not ops:
            return []
        with self._lock:
            first = self._nl.reserve(len(ops))
            last = first + len(ops) - 1
            buf = netlink.ChunkBuffer(_SEND_CHUNK, None, None)
            for i, (_op, msg_type, flags, r) in enumerate(ops):
                buf.put(encode_route(msg_type, flags, first + i, r))
            # rtnetlink handles a send in order: the last message's ack (it asks for one)
            # comes after every earlier error.
            buf.ack_last()
            errors: list[RouteError] = []

            def on_reply(seq: int, code: int, _payload: bytes) -> bool:
                idx = seq - first
                if code and 0 <= idx < len(ops):
                    op, _t, _f, route = ops[idx]
                    if not (op == "delete" and code in (errno.ESRCH, errno.ENOENT)):
                        errors.append(RouteError(route, op, code))
                return seq == last

            self._nl.send_chunks(buf.chunks(), on_reply)
            return errors
