"""The netlink base the plugins' codecs share: framing, the reusable chunk buffer, pipelined
sends and the draining of their errors, dumps, and sockets in a network namespace.

Internal to this project (its plugins' IPVS, address and route codecs), not an API. The
codecs encode their own messages; what they have in common lives here once:

- a batch is encoded into a :class:`ChunkBuffer` the size of one ``sendmsg``, sent whenever
  it fills, without ``NLM_F_ACK``: the kernel then answers only failures, each tagged with
  the failed message's sequence number;
- the last message asks for an ack (:meth:`ChunkBuffer.ack_last`): netlink handles a send in
  order, so its reply comes after every earlier error and closes the batch;
- :meth:`Socket.drain` reads those replies and hands each error to the codec, which maps
  the sequence number back to what it sent;
- a dump's or a request's error is raised as :class:`NetlinkError` (or a codec's own kind
  of it), never taken for the end of the dump.

The constants are the kernel's UAPI values from ``linux/netlink.h``.
"""

from __future__ import annotations

import ctypes
import functools
import os
import socket
import struct
import threading
from collections.abc import Callable
from collections.abc import Iterator
from typing import TypeVar

from kube_router.linux.memory import ReceiveBuffer

NETLINK_ROUTE = 0
NETLINK_GENERIC = 16
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_DUMP = 0x300
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33

HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
ATTR = struct.Struct("=HH")  # nlattr: length, type
_ERRNO = struct.Struct("=i")
_U16 = struct.Struct("=H")
T = TypeVar("T")

#: One sendmsg carries at most this many bytes of requests.
CHUNK_BYTES = 256 * 1024
#: Error replies are read one datagram at a time, each far below this.
_ERRBUF_BYTES = 64 * 1024


class NetlinkError(OSError):
    """A netlink request failed; ``op`` says which."""

    def __init__(self, code: int, op: str) -> None:
        super().__init__(code, f"{os.strerror(code)}: {op}")
        self.op = op


# -- framing ----------------------------------------------------------------------------


def frame(mtype: int, body: bytes, seq: int, flags: int = NLM_F_REQUEST) -> bytes:
    """One message: the netlink header before ``body`` (which must be 4-byte aligned)."""
    return HEADER.pack(HEADER.size + len(body), mtype, flags, seq, 0) + body


def attr(atype: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    length = ATTR.size + len(payload)
    return ATTR.pack(length, atype) + payload + b"\0" * (-length & 3)


def nested(atype: int, payload: bytes) -> bytes:
    return attr(atype | NLA_F_NESTED, payload)


def parse_attrs(data: bytes | memoryview, offset: int = 0, end: int | None = None
                ) -> dict[int, bytes]:
    """A flat attribute stream as {type: payload}."""
    out: dict[int, bytes] = {}
    end = len(data) if end is None else end
    while offset + ATTR.size <= end:
        length, atype = ATTR.unpack_from(data, offset)
        if length < ATTR.size:
            break
        out[atype & NLA_TYPE_MASK] = bytes(data[offset + ATTR.size : offset + length])
        offset += (length + 3) & ~3
    return out


def iter_messages(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, flags, seq, payload) of each message in one datagram."""
    offset = 0
    while offset + HEADER.size <= len(data):
        length, mtype, flags, seq, _pid = HEADER.unpack_from(data, offset)
        if length < HEADER.size:
            break
        yield mtype, flags, seq, data[offset + HEADER.size : offset + length]
        offset += (length + 3) & ~3


def error_code(payload: bytes) -> int:
    """The (positive) errno of an NLMSG_ERROR payload; 0 for an ack."""
    code: int = _ERRNO.unpack_from(payload)[0]
    return -code


def echoed_flags(payload: bytes) -> int:
    """The flags of the request an NLMSG_ERROR payload echoes (0 if it is cut short)."""
    if len(payload) < 4 + 8:
        return 0
    flags: int = _U16.unpack_from(payload, 4 + 6)[0]
    return flags


# -- the chunk buffer ---------------------------------------------------------------------


class ChunkBuffer:
    """A send buffer of one ``sendmsg``'s size: when full it goes to ``sink`` (or, without
    one, is kept as a chunk) and is filled again, so memory stays bounded however many
    messages a batch holds, and a reused buffer touches no fresh pages.

    A codec packs messages at ``used`` and records where the last one starts in ``_last``
    (-1 once it has been sent), for :meth:`ack_last`.
    """

    def __init__(self, size: int, sink: Callable[[memoryview], None] | None,
                 buf: bytearray | None) -> None:
        self.sink = sink
        self.buf = buf if buf is not None and len(buf) >= size else bytearray(size)
        self.used = 0
        self.kept: list[bytes] = []  # full buffers, without a sink
        self._last = -1

    def _flush(self) -> None:
        if not self.used:
            return
        view = memoryview(self.buf)[: self.used]
        if self.sink is not None:
            self.sink(view)
        else:
            self.kept.append(bytes(view))
        self.used = 0
        self._last = -1

    def chunks(self) -> list[bytes]:
        """Without a sink: every encoded byte, in sendmsg-sized chunks."""
        self._flush()
        return self.kept

    def ack_last(self) -> bool:
        """Ask for an ack of the last message, if it is still in the buffer: its reply (an
        ack, or its error) comes after every other, and echoes NLM_F_ACK in its flags."""
        if self._last < 0:
            return False
        at = self._last + 6  # nlmsg_flags
        _U16.pack_into(self.buf, at, _U16.unpack_from(self.buf, at)[0] | NLM_F_ACK)
        return True

    def put(self, msg: bytes) -> None:
        """Append one framed message (its length a multiple of 4)."""
        if self.used + len(msg) > len(self.buf):
            self._flush()
            if len(msg) > len(self.buf):
                self.buf.extend(bytes(len(msg) - len(self.buf)))
        end = self.used + len(msg)
        self.buf[self.used : end] = msg
        self._last, self.used = self.used, end

    def take_rest(self) -> memoryview | None:
        """What is left unsent (the buffer is then empty), or None."""
        if not self.used:
            return None
        view = memoryview(self.buf)[: self.used]
        self.used, self._last = 0, -1
        return view


# -- sockets ------------------------------------------------------------------------------

_CLONE_NEWNET = 0x40000000


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace ``fd`` refers to."""
    if hasattr(os, "setns"):  # Python 3.12 and later
        os.setns(fd, _CLONE_NEWNET)
        return
    if _libc().setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def in_netns(netns: str, make: Callable[[], T]) -> T:
    """``make()`` run inside the named namespace (/run/netns/NAME), on a thread of its own:
    setns changes only that thread, and a socket made there stays bound to the namespace."""
    result: list[T] = []
    failed: list[BaseException] = []

    def inside() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                setns(fd)
            finally:
                os.close(fd)
            result.append(make())
        except BaseException as exc:  # handed to the caller's thread
            failed.append(exc)

    t = threading.Thread(target=inside, name=f"netns-{netns}")
    t.start()
    t.join()
    if failed:
        raise failed[0]
    return result[0]


def open_socket(protocol: int, *, netns: str | None = None, cap_ack: bool = False,
                rcvbuf: int = 8 << 20, sndbuf: int = 4 << 20,
                groups: int = 0) -> socket.socket:
    """A bound netlink socket of ``protocol``, in the named namespace if given, a member of
    the multicast ``groups`` (a bit mask) if given.

    Its buffers are forced large (as root) so a batch's burst of error replies is not
    dropped. ``cap_ack``: an error then echoes only the failed request's header (its
    sequence number says which); without, the whole request comes back (IPVS reads the
    dest out of it)."""
    if netns is not None:
        return in_netns(netns, lambda: open_socket(protocol, cap_ack=cap_ack, rcvbuf=rcvbuf,
                                                   sndbuf=sndbuf, groups=groups))
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, sndbuf)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    if cap_ack:
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
    sock.bind((0, groups))
    return sock


#: Called with (seq, errno, payload) for each error reply a batch draws; returns True when
#: that reply closes the batch (the last message's own reply, or a barrier's).
OnReply = Callable[[int, int, bytes], bool]


class Socket:
    """A netlink socket with its sequence numbers, its dump buffer and its error buffer.
    Blocking; not thread-safe (one user at a time)."""

    def __init__(self, protocol: int, *, netns: str | None = None, cap_ack: bool = False,
                 rcvbuf: int = 8 << 20, sndbuf: int = 4 << 20,
                 sock: socket.socket | None = None) -> None:
        # ``sock``: a datagram socket opened elsewhere, used as it is
        self.sock = sock if sock is not None else open_socket(
            protocol, netns=netns, cap_ack=cap_ack, rcvbuf=rcvbuf, sndbuf=sndbuf)
        self._seq = 0
        self._replies: ReceiveBuffer | None = None  # mapped at the first dump
        self._errbuf = bytearray(_ERRBUF_BYTES)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Socket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def next_seq(self) -> int:
        return self.reserve(1)

    def reserve(self, count: int) -> int:
        """The first of ``count`` consecutive sequence numbers (never 0, never wrapping)."""
        first = self._seq + 1
        if first + count > 0xFFFFFFFF:
            first = 1
        self._seq = first + count - 1
        return first

    def send(self, data: bytes | memoryview) -> None:
        self.sock.send(data)

    def recv(self) -> bytes:
        """One datagram of replies, into the reused dump buffer."""
        if self._replies is None:
            self._replies = ReceiveBuffer()
        return self._replies.recv(self.sock)

    # -- pipelined batches --------------------------------------------------------------

    def drain(self, on_reply: OnReply, *, block: bool) -> bool:
        """Read the error replies (and acks) waiting: each goes to ``on_reply``. Blocking,
        until one of them closes the batch; else until none is left. True once closed."""
        flags = 0 if block else socket.MSG_DONTWAIT
        view = memoryview(self._errbuf)
        while True:
            try:
                n = self.sock.recv_into(view, 0, flags)
            except BlockingIOError:
                return False
            closed = False
            for mtype, _flags, seq, payload in iter_messages(bytes(view[:n])):
                if mtype == NLMSG_ERROR and on_reply(seq, error_code(payload), payload):
                    closed = True
            if closed:
                return True

    def send_chunks(self, chunks: list[bytes], on_reply: OnReply) -> None:
        """Send a prebuilt batch whose last message asks for an ack, collecting errors as
        chunks go out, then every one up to that ack."""
        for chunk in chunks[:-1]:
            self.send(chunk)
            self.drain(on_reply, block=False)
        if chunks:
            self.send(chunks[-1])
            self.drain(on_reply, block=True)

    # -- requests and dumps ---------------------------------------------------------------

    def dump(self, mtype: int, body: bytes, what: str,
             error: type[NetlinkError] = NetlinkError) -> Iterator[tuple[int, bytes]]:
        """(type, payload) of every answer to one dump request; its error is raised (as
        ``error``, a codec's own kind of NetlinkError)."""
        seq = self.next_seq()
        self.send(frame(mtype, body, seq, NLM_F_REQUEST | NLM_F_DUMP))
        while True:
            for rtype, _flags, rseq, payload in iter_messages(self.recv()):
                if rseq != seq:
                    continue
                if rtype in (NLMSG_DONE, NLMSG_ERROR):
                    # a dump refused at its start answers NLMSG_ERROR; one failing on
                    # the way ends with NLMSG_DONE carrying the errno
                    code = error_code(payload) if len(payload) >= 4 else 0
                    if code > 0:
                        raise error(code, what)
                    return
                yield rtype, payload

    def request(self, mtype: int, body: bytes, what: str, *, ack: bool = True,
                error: type[NetlinkError] = NetlinkError) -> bytes | None:
        """One request and its reply: the answer's payload, or None for an ack. An error
        is raised as ``error`` (``ack=False`` suits a GET that answers with a message)."""
        seq = self.next_seq()
        self.send(frame(mtype, body, seq, NLM_F_REQUEST | (NLM_F_ACK if ack else 0)))
        while True:
            for rtype, _flags, rseq, payload in iter_messages(self.recv()):
                if rseq != seq:
                    continue
                if rtype == NLMSG_ERROR:
                    code = error_code(payload)
                    if code:
                        raise error(code, what)
                    return None
                return payload
