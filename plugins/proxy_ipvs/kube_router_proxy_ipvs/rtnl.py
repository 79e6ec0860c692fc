"""Pipelined rtnetlink batches for the addresses and local routes of ``kube-dummy-if``.

A cold start binds thousands of VIPs, each an address plus (with a node IP known) a
replaced local-table route: pyroute2's call-and-wait per message costs a round trip each.
Here every message is packed into one buffer, sent in large ``sendmsg`` chunks without
``NLM_F_ACK`` (the kernel then answers only failures, tagged with their sequence number),
and an ack requested on the last message closes the batch; the framing, the buffer and the
draining of errors are :mod:`kube_router.linux.netlink`'s.
"""

from __future__ import annotations

import socket
import struct
from array import array
from bisect import bisect_right
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from collections.abc import Set as AbstractSet

from kube_router.linux import netlink as nl

RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26
IFA_ADDRESS = 1
IFA_LOCAL = 2
RTA_DST = 1
RTA_OIF = 4
RTA_PRIORITY = 6
RTA_PREFSRC = 7
RTA_TABLE = 15
RT_TABLE_LOCAL = 255
RTN_LOCAL = 2
RTPROT_KERNEL = 2
RT_SCOPE_HOST = 254
RT_SCOPE_LINK = 253
RT_SCOPE_NOWHERE = 255  # in a delete: any scope
NLM_F_REPLACE = nl.NLM_F_REPLACE
NLM_F_CREATE = nl.NLM_F_CREATE

_NLMSG = nl.HEADER
_IFADDR = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_INT = struct.Struct("=i")
_AF_INET = socket.AF_INET
_inet_aton = socket.inet_aton

# IPv4 messages in one pack each: header, body, attributes (all 4-byte aligned).
_ADDR4 = struct.Struct("=IHHII" "BBBBI" "HH4s" "HH4s")
_ROUTE4 = struct.Struct("=IHHII" "BBBBBBBBI" "HH4s" "HH4s" "HHI")
_DELROUTE4 = struct.Struct("=IHHII" "BBBBBBBBI" "HH4s" "HHI")
_ADDR4_ROUTE4 = struct.Struct(_ADDR4.format + _ROUTE4.format[1:])
# The same pair with its constant runs as byte strings: only the two sequence numbers and
# the address (three times) are packed per VIP. Each "Ns" is a run of ``_ADDR4_ROUTE4``
# fields that stays the same for one link and source; the offsets are checked at import.
_PAIR4_VARYING = struct.Struct("=8sI16s4s4s4s8sI20s4s16s")
assert _PAIR4_VARYING.size == _ADDR4_ROUTE4.size
_ADD_FLAGS = nl.NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE


def _addr4_fields(mtype: int, flags: int, seq: int, index: int, raw: bytes) -> tuple:
    """The values of an ``_ADDR4`` message: ``raw`` as a host address on link ``index``."""
    return (_ADDR4.size, mtype, flags, seq, 0, _AF_INET, 32, 0, RT_SCOPE_LINK, index,
            8, IFA_LOCAL, raw, 8, IFA_ADDRESS, raw)


def _route4_fields(seq: int, index: int, dst: bytes, src: bytes) -> tuple:
    """The values of a ``_ROUTE4`` message: the local route of ``dst``, sourced ``src``."""
    return (_ROUTE4.size, RTM_NEWROUTE, _ADD_FLAGS, seq, 0, _AF_INET, 32, 0, 0,
            RT_TABLE_LOCAL, RTPROT_KERNEL, RT_SCOPE_HOST, RTN_LOCAL, 0, 8, RTA_DST, dst,
            8, RTA_PREFSRC, src, 8, RTA_OIF, index)

CHUNK_BYTES = nl.CHUNK_BYTES

# What each message did, for error reports.
ADD_ADDRESS = "add-address"
DEL_ADDRESS = "del-address"
SET_ROUTE = "set-route"
DEL_ROUTE = "del-route"
# What one entry of a batch sent: one message, or a new address and its route.
_KINDS: tuple[tuple[str, ...], ...] = (
    (ADD_ADDRESS,), (DEL_ADDRESS,), (SET_ROUTE,), (DEL_ROUTE,), (ADD_ADDRESS, SET_ROUTE))
_KIND = {ops[0]: i for i, ops in enumerate(_KINDS) if len(ops) == 1}
_PAIR = len(_KINDS) - 1


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


class Batch(nl.ChunkBuffer):
    """Address and local-route changes on one link, encoded as they are added into a
    :class:`~kube_router.linux.netlink.ChunkBuffer`, sent whenever the next message
    would not fit.

    Messages carry sequence numbers 1, 2, ... Each call adds one entry: ``addrs[i]``, what
    it sent (``_KINDS[kinds[i]]``: one message, or an address and its route) and the
    sequence number of its first message (``starts[i]``). That is 13 bytes per VIP, where a
    list per message of each would be 32: at thousands of VIPs those are fresh pages.
    """

    def __init__(self, index: int, sink: Callable[[memoryview], None] | None = None,
                 buf: bytearray | None = None) -> None:
        super().__init__(CHUNK_BYTES, sink, buf)
        self.index = index
        self.addrs: list[str] = []
        self.kinds = bytearray()
        self.starts = array("I")
        self.messages = 0

    def __len__(self) -> int:
        return self.messages

    def op_of(self, seq: int) -> tuple[str, str]:
        """(op, address) of the message with sequence number ``seq``."""
        i = bisect_right(self.starts, seq) - 1
        return _KINDS[self.kinds[i]][seq - self.starts[i]], self.addrs[i]

    def ops(self) -> Iterator[tuple[str, str]]:
        """(op, address) of every message, in order."""
        for kind, addr in zip(self.kinds, self.addrs, strict=True):
            for op in _KINDS[kind]:
                yield op, addr

    @property
    def what(self) -> list[tuple[str, str]]:
        """:meth:`ops` as a list."""
        return list(self.ops())

    def _room(self, size: int) -> int:
        """Where a message of ``size`` bytes goes: the buffer is sent first if it is full
        (so the last message is always still in it, to be acked)."""
        if self.used + size > CHUNK_BYTES:
            self._flush()
        return self.used

    def _added(self, kind: int, addr: str, size: int, last: int = 0) -> None:
        """Record the entry just packed at ``used``: ``size`` bytes, its last message
        ``last`` bytes in."""
        self.addrs.append(addr)
        self.kinds.append(kind)
        self.starts.append(self.messages + 1)
        self.messages += len(_KINDS[kind])
        self._last = self.used + last
        self.used += size

    def _generic(self, mtype: int, flags: int, body: bytes, op: str, addr: str) -> None:
        size = _NLMSG.size + len(body)  # every body here is a multiple of 4 bytes
        at = self._room(size)
        _NLMSG.pack_into(self.buf, at, size, mtype, flags, self.messages + 1, 0)
        self.buf[at + _NLMSG.size : at + size] = body
        self._added(_KIND[op], addr, size)

    def address(self, addr: str, *, add: bool) -> None:
        """Add (or replace) / delete ``addr`` as a host address (/32, /128) on the link."""
        mtype = RTM_NEWADDR if add else RTM_DELADDR
        flags = _ADD_FLAGS if add else nl.NLM_F_REQUEST
        op = ADD_ADDRESS if add else DEL_ADDRESS
        if ":" not in addr:
            raw = _inet_aton(addr)
            _ADDR4.pack_into(self.buf, self._room(_ADDR4.size),
                             *_addr4_fields(mtype, flags, self.messages + 1, self.index, raw))
            self._added(_KIND[op], addr, _ADDR4.size)
        else:
            raw = socket.inet_pton(socket.AF_INET6, addr)
            body = (_IFADDR.pack(socket.AF_INET6, 128, 0, RT_SCOPE_LINK, self.index)
                    + nl.attr(IFA_LOCAL, raw) + nl.attr(IFA_ADDRESS, raw))
            self._generic(mtype, flags, body, op, addr)

    def address_with_route(self, addr: str, src: str) -> None:
        """Add ``addr`` and replace its local route by one sourced from ``src``: the two
        messages of every new VIP (for IPv4 in one pack)."""
        if ":" in addr or ":" in src:
            self.address(addr, add=True)
            self.local_route(addr, src)
            return
        raw = _inet_aton(addr)
        seq = self.messages + 1
        _ADDR4_ROUTE4.pack_into(
            self.buf, self._room(_ADDR4_ROUTE4.size),
            *_addr4_fields(RTM_NEWADDR, _ADD_FLAGS, seq, self.index, raw),
            *_route4_fields(seq + 1, self.index, raw, _inet_aton(src)))
        self._added(_PAIR, addr, _ADDR4_ROUTE4.size, last=_ADDR4.size)

    def addresses_with_routes(self, addrs: Sequence[str], src: str) -> None:
        """:meth:`address_with_route` of each of ``addrs`` (IPv4) in turn, all from one
        ``src``: the bulk of a cold start, packed from one template."""
        if ":" in src:
            for addr in addrs:
                self.address_with_route(addr, src)
            return
        size = _ADDR4_ROUTE4.size
        # the constant runs, cut from a pair packed with zeros where the VIP's fields go
        blank = _ADDR4_ROUTE4.pack(*_addr4_fields(RTM_NEWADDR, _ADD_FLAGS, 0, self.index,
                                                  bytes(4)),
                                   *_route4_fields(0, self.index, bytes(4), _inet_aton(src)))
        c0, _, c1, _, c2, _, c3, _, c4, _, c5 = _PAIR4_VARYING.unpack(blank)
        pack = _PAIR4_VARYING.pack_into
        pair = bytes((_PAIR,))
        i, total = 0, len(addrs)
        while i < total:
            room = (CHUNK_BYTES - self.used) // size
            if not room:
                self._flush()
                continue
            part = addrs[i : i + room]
            raws = list(map(_inet_aton, part))  # a bad address raises before any change
            buf, at, seq = self.buf, self.used, self.messages + 1
            for raw in raws:
                pack(buf, at, c0, seq, c1, raw, c2, raw, c3, seq + 1, c4, raw, c5)
                at += size
                seq += 2
            self.addrs += part
            self.kinds += pair * len(part)
            self.starts.extend(range(self.messages + 1, seq, 2))
            self.messages = seq - 1
            self._last = at - size + _ADDR4.size
            self.used = at
            i += len(part)

    def local_route(self, addr: str, src: str | None) -> None:
        """Replace the local-table route of ``addr`` by one whose preferred source is ``src``,
        or (``src`` None) delete it.

        Without this, a client on the node connecting to a VIP is given the VIP itself as
        its source address; with the node IP as source, replies from pods on other nodes
        come back to an address the node really owns.
        """
        fam = _family(addr)
        op = SET_ROUTE if src is not None else DEL_ROUTE
        if fam == _AF_INET and (src is None or ":" not in src):
            dst = _inet_aton(addr)
            seq = self.messages + 1
            if src is not None:
                _ROUTE4.pack_into(self.buf, self._room(_ROUTE4.size),
                                  *_route4_fields(seq, self.index, dst, _inet_aton(src)))
                self._added(_KIND[op], addr, _ROUTE4.size)
            else:
                _DELROUTE4.pack_into(
                    self.buf, self._room(_DELROUTE4.size), _DELROUTE4.size, RTM_DELROUTE,
                    nl.NLM_F_REQUEST, seq, 0,
                    _AF_INET, 32, 0, 0, RT_TABLE_LOCAL, 0, RT_SCOPE_NOWHERE, RTN_LOCAL, 0,
                    8, RTA_DST, dst, 8, RTA_OIF, self.index)
                self._added(_KIND[op], addr, _DELROUTE4.size)
            return
        plen = 128 if fam == socket.AF_INET6 else 32
        if src is not None:
            body = (_RTMSG.pack(fam, plen, 0, 0, RT_TABLE_LOCAL, RTPROT_KERNEL,
                                RT_SCOPE_HOST, RTN_LOCAL, 0)
                    + nl.attr(RTA_DST, socket.inet_pton(fam, addr))
                    + nl.attr(RTA_PREFSRC, socket.inet_pton(fam, src))
                    + nl.attr(RTA_OIF, struct.pack("=I", self.index)))
            self._generic(RTM_NEWROUTE, _ADD_FLAGS, body, op, addr)
        else:
            body = (_RTMSG.pack(fam, plen, 0, 0, RT_TABLE_LOCAL, 0, RT_SCOPE_NOWHERE,
                                RTN_LOCAL, 0)
                    + nl.attr(RTA_DST, socket.inet_pton(fam, addr))
                    + nl.attr(RTA_OIF, struct.pack("=I", self.index)))
            self._generic(RTM_DELROUTE, nl.NLM_F_REQUEST, body, op, addr)

    def send(self) -> dict[tuple[str, str], int]:
        """Send a prebuilt batch (no sink; blocking); return {(op, address): errno} for
        what failed."""
        if not self.messages:
            return {}
        self.ack_last()
        with Sender() as tx:
            for chunk in self.chunks():
                tx.send(chunk, self)
            return tx.finish(self)


class Sender:
    """A route socket sending batches' buffers as they fill (``Batch(sink=tx.sink(b))``),
    without waiting for answers: the kernel replies only to failures, and to the last
    message, which asks for an ack."""

    def __init__(self) -> None:
        self._nl: nl.Socket | None = None  # opened when there is something to send
        self.failed: dict[tuple[str, str], int] = {}
        self._closed = False  # the last message's ack was read

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._nl is not None:
            self._nl.close()

    @property
    def conn(self) -> nl.Socket:
        if self._nl is None:
            self._nl = _socket()
        return self._nl

    def sink(self, batch: Batch) -> Callable[[memoryview], None]:
        """What sends ``batch``'s full buffers (pass it as the batch's ``sink``)."""
        return lambda chunk: self.send(chunk, batch)

    def send(self, chunk: bytes | memoryview, batch: Batch) -> None:
        self.conn.send(chunk)
        self.conn.drain(self._on_reply(batch), block=False)

    def finish(self, batch: Batch) -> dict[tuple[str, str], int]:
        """Send what ``batch`` has left (its last message acked), wait for that ack, and
        return {(op, address): errno} for what failed."""
        batch.ack_last()
        rest = batch.take_rest()
        if rest is not None:
            self.conn.send(rest)
        if batch.messages and not self._closed:
            self.conn.drain(self._on_reply(batch), block=True)
        return self.failed

    def _on_reply(self, batch: Batch) -> nl.OnReply:
        last = batch.messages

        def on_reply(seq: int, code: int, _payload: bytes) -> bool:
            if code and 0 < seq <= last:
                self.failed[batch.op_of(seq)] = code
            if seq == last and batch.used == 0:  # the ack of a message already sent
                self._closed = True
                return True
            return False

        return on_reply


def _socket() -> nl.Socket:
    # Errors then carry only the failed request's header.
    return nl.Socket(nl.NETLINK_ROUTE, cap_ack=True)


def addresses(index: int) -> set[str]:
    """Every address on link ``index``, both families (blocking)."""
    return set(each_address(index))


def each_address(index: int) -> Iterator[str]:
    """Every address on link ``index``, both families, one at a time as read (blocking)."""
    with _socket() as sock:
        for mtype, payload in sock.dump(RTM_GETADDR, _IFADDR.pack(0, 0, 0, 0, index),
                                     f"address dump link={index}"):
            family, _plen, _flags, _scope, ifindex = _IFADDR.unpack_from(payload)
            if mtype != RTM_NEWADDR or ifindex != index:
                continue  # older kernels answer for every link
            attrs = nl.parse_attrs(payload, _IFADDR.size)
            raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            if raw:
                yield socket.inet_ntop(family, raw)


def addresses_except(skip: AbstractSet[int]) -> list[str]:
    """Every address of every link but those in ``skip`` (indexes), both families
    (blocking). A message's link is read before anything else in it, so the thousands of
    VIPs of a skipped link cost next to nothing."""
    out: list[str] = []
    with _socket() as sock:
        for mtype, payload in sock.dump(RTM_GETADDR, _IFADDR.pack(0, 0, 0, 0, 0),
                                     "address dump"):
            family, _plen, _flags, _scope, ifindex = _IFADDR.unpack_from(payload)
            if mtype != RTM_NEWADDR or ifindex in skip:
                continue
            attrs = nl.parse_attrs(payload, _IFADDR.size)
            raw = attrs.get(IFA_ADDRESS) or attrs.get(IFA_LOCAL)
            if raw:
                out.append(socket.inet_ntop(family, raw))
    return out


def _dump_local(sock: nl.Socket, index: int, fam: int) -> Iterator[tuple[str, str, int]]:
    """(destination, preferred source or "", metric) of the local-table host routes
    through link ``index`` in one family."""
    body = _RTMSG.pack(fam, 0, 0, 0, RT_TABLE_LOCAL, 0, 0, 0, 0)
    for mtype, payload in sock.dump(RTM_GETROUTE, body, f"local route dump link={index}"):
        if mtype != RTM_NEWROUTE:
            continue
        family, plen, _s, _t, table, _p, _sc, rtype, _fl = _RTMSG.unpack_from(payload)
        attrs = nl.parse_attrs(payload, _RTMSG.size)
        table = _INT.unpack(attrs[RTA_TABLE][:4])[0] if RTA_TABLE in attrs else table
        if table != RT_TABLE_LOCAL or rtype != RTN_LOCAL:
            continue
        if RTA_OIF not in attrs or _INT.unpack(attrs[RTA_OIF][:4])[0] != index:
            continue
        if RTA_DST not in attrs or plen != (32 if family == _AF_INET else 128):
            continue
        dst = socket.inet_ntop(family, attrs[RTA_DST])
        src = socket.inet_ntop(family, attrs[RTA_PREFSRC]) if RTA_PREFSRC in attrs else ""
        metric = _INT.unpack(attrs[RTA_PRIORITY][:4])[0] if RTA_PRIORITY in attrs else 0
        yield dst, src, metric


def each_local_route(index: int, fam: int) -> Iterator[tuple[str, str, int]]:
    """(destination, preferred source or "", metric) of the local-table host routes
    through link ``index`` in one family, one at a time as read (blocking)."""
    with _socket() as sock:
        yield from _dump_local(sock, index, fam)


def local_routes(index: int) -> dict[str, str]:
    """{destination: preferred source} of the local-table host routes through link ``index``
    (both families; blocking). Of two IPv6 routes to one address, the one lookups use (the
    lowest metric) counts."""
    out: dict[str, str] = {}
    best: dict[str, int] = {}
    with _socket() as sock:
        for fam in (socket.AF_INET, socket.AF_INET6):
            for dst, src, metric in _dump_local(sock, index, fam):
                if dst not in best or metric < best[dst]:
                    best[dst] = metric
                    out[dst] = src
    return out


def drop_kernel_routes6(index: int, addrs: set[str], new: set[str],
                        wait: float = 0.2) -> set[str]:
    """Delete the kernel's own metric-0 local routes of the IPv6 ``addrs`` on link ``index``,
    so that ours (sourced from the node IP) is the one lookups use; returns those deleted.

    A request cannot ask for metric 0 (it means the default, 1024), so ours cannot replace
    the kernel's route; and the kernel adds that route from a work queue after the address,
    so for the ``new`` addresses of this batch it may not be there yet: wait for it up to
    ``wait`` seconds. A delete without a metric takes the lowest, the kernel's.
    """
    import time

    pending, deleted = set(addrs), set()
    deadline = time.monotonic() + wait
    with _socket() as sock:
        while pending:
            kernel = {dst for dst, src, metric in _dump_local(sock, index, socket.AF_INET6)
                      if metric == 0 and dst in pending}
            for dst in kernel:
                body = (_RTMSG.pack(socket.AF_INET6, 128, 0, 0, RT_TABLE_LOCAL, 0,
                                    RT_SCOPE_NOWHERE, RTN_LOCAL, 0)
                        + nl.attr(RTA_DST, socket.inet_pton(socket.AF_INET6, dst))
                        + nl.attr(RTA_OIF, struct.pack("=I", index)))
                try:
                    sock.request(RTM_DELROUTE, body, f"delete kernel route {dst}")
                except nl.NetlinkError:
                    continue  # gone already, or not the kernel's: left as it is
                deleted.add(dst)
            pending -= kernel
            # an address that was already there has no kernel route left to wait for
            pending &= new
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(0.005)
    return deleted
