"""ipsets through ``ipset restore`` batches, swapping a rebuilt set into place.

A set that a rule uses is never flushed in place (its members would vanish for a moment);
the new members go into a temporary set that is swapped with the live one, atomically.
A few members that come and go are added and deleted over netlink (:class:`MemberSocket`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import struct
import threading
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from typing import TypeVar

from kube_router.errors import TemporaryError
from kube_router.linux import netlink
from kube_router.linux.run import RestoreError
from kube_router.linux.run import restore as run_restore
from kube_router.linux.run import restore_text
from kube_router.linux.run import run
from kube_router.linux.run import run_sync

_Members = TypeVar("_Members", bound=AbstractSet[str])


def swap_script(name: str, settype: str, members: Iterable[str], *, family: str = "inet",
                options: str = "", tmp_suffix: str = "-tmp") -> list[str]:
    """``ipset restore`` lines replacing the members of ``name`` (created if missing).

    ``tmp_suffix`` keeps temporary names per owner, so two plugins never share one.
    The name must leave room for the suffix (ipset names hold 31 characters).
    """
    tmp = (name + tmp_suffix)[:31]
    opts = f"family {family} {options}".strip()
    lines = [f"create {name} {settype} {opts} -exist",
             f"create {tmp} {settype} {opts} -exist",
             f"flush {tmp}"]
    lines += [f"add {tmp} {m} -exist" for m in members]
    lines += [f"swap {tmp} {name}", f"destroy {tmp}"]
    return lines


class SetBusy(TemporaryError):
    """The kernel refused to swap two sets with EBUSY: another program (or another plugin
    of this agent) was dumping one of them at that moment (``ipset save`` or ``list``
    holds the sets it reads). Nothing is wrong with the batch, whose lines are all safe to
    run again: the next try passes."""

    def __init__(self, err: RestoreError) -> None:
        super().__init__(f"ipset busy (being read by another program) at {err.lines}",
                         delay=1.0)


def _busy(exc: RestoreError) -> bool:
    return ("Device or resource busy" in exc.stderr and bool(exc.lines)
            and all(line.split(": ", 1)[-1].startswith("swap ") for line in exc.lines))


async def restore(lines: list[str], *, timeout: float | None = None) -> None:
    """Run a batch; :class:`SetBusy` (retry soon) when a swap met a set being read at that
    moment, :class:`RestoreError` for any other refusal."""
    argv = ["ipset", "restore"]
    try:
        await run_restore(argv, restore_text(lines), timeout=timeout)
    except RestoreError as exc:
        if _busy(exc):
            raise SetBusy(exc) from None
        raise


def names_sync() -> set[str]:
    _, out, _ = run_sync(["ipset", "list", "-n"])
    return {line.strip() for line in out.splitlines() if line.strip()}


def destroy_sync(name: str) -> bool:
    """Destroy a set; False when it did not exist or is still referenced."""
    rc, _, _ = run_sync(["ipset", "destroy", name], check=False)
    return rc == 0


def swap_via(name: str, tmp: str, settype: str, members: Iterable[str], *,
             family: str = "inet") -> list[str]:
    """Like :func:`swap_script`, through a temporary set the caller names and keeps.

    The temporary set must exist (``create tmp ... -exist``) with the same type and family;
    it is flushed before and after, so one temporary set serves any number of swaps in a
    batch. For names too long for a suffix (``inet6:`` plus 25 characters).
    """
    lines = [f"create {name} {settype} family {family} -exist", f"flush {tmp}"]
    lines += [f"add {tmp} {m} -exist" for m in members]
    lines += [f"swap {tmp} {name}", f"flush {tmp}"]
    return lines


async def save() -> str:
    _, out, _ = await run(["ipset", "save"])
    return out


def save_sync() -> str:
    _, out, _ = run_sync(["ipset", "save"])
    return out


def parse_save(text: str, wanted: Callable[[str], bool],
               held: Mapping[str, _Members] | None = None,
               ) -> dict[str, tuple[str, set[str] | _Members]]:
    """name -> (type, members) for the sets ``wanted`` accepts, from ``ipset save``.

    A member keeps its options as saved (``10.1.0.0/16 nomatch``); ipset prints a host
    prefix (/32, /128) of a hash:net member as the bare address. ``ipset save`` prints
    each set's ``add`` lines right after its ``create`` line.

    Where ``held`` has a set's members as the kernel has them, that very object comes
    back instead of a copy, and the sets not wanted are skipped unread: a periodic read
    of tens of thousands of members otherwise makes as many short-lived strings, and the
    objects other threads allocate meanwhile keep their memory from being given back.
    """
    sets: dict[str, tuple[str, set[str] | _Members]] = {}
    pos, end = 0, len(text)
    while pos < end:
        eol = text.find("\n", pos)
        if eol < 0:
            eol = end
        verb, _, rest = text[pos:eol].partition(" ")
        nxt = text.find("\ncreate ", eol)  # the next set's first line, or the end
        stop = end if nxt < 0 else nxt
        name, _, tail = rest.partition(" ")
        if verb == "create" and wanted(name):
            stype, prefix = tail.split(" ", 1)[0], f"add {name} "
            old = held.get(name) if held is not None else None
            if old is not None and _same(_members(text, eol + 1, stop, prefix), old):
                sets[name] = (stype, old)
            else:
                sets[name] = (stype, set(_members(text, eol + 1, stop, prefix)))
        pos = stop + 1
    return sets


def _members(text: str, start: int, stop: int, prefix: str) -> Iterator[str]:
    """The members on the lines of text[start:stop] that begin with ``prefix``."""
    skip = len(prefix)
    while start < stop:
        eol = text.find("\n", start, stop)
        if eol < 0:
            eol = stop
        if text.startswith(prefix, start, eol):
            yield text[start + skip:eol].strip()
        start = eol + 1


def _same(members: Iterator[str], held: AbstractSet[str]) -> bool:
    count = 0
    for m in members:
        if m not in held:
            return False
        count += 1
    return count == len(held)


#: Protocols of hash:ip,port members, by the name ``ipset save`` prints.
PORT_PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP,
                  "sctp": socket.IPPROTO_SCTP}

# ipset over netlink: the kernel's UAPI values (linux/netfilter/nfnetlink.h and
# linux/netfilter/ipset/ip_set.h).
NETLINK_NETFILTER = 12
_NFNL_SUBSYS_IPSET = 6
IPSET_CMD_ADD = 9
IPSET_CMD_DEL = 10
#: Kernels of ipset protocol 6 want exactly 6; those of 7 take 6 as their minimum.
IPSET_PROTOCOL = 6
_ATTR_PROTOCOL = 1
_ATTR_SETNAME = 2
_ATTR_DATA = 7
_ATTR_IP = 1
_ATTR_CIDR = 3
_ATTR_PORT = 4
_ATTR_PROTO = 7
_ATTR_IPADDR_IPV4 = 1
_ATTR_IPADDR_IPV6 = 2
_NLA_F_NET_BYTEORDER = 0x4000
_MAXNAMELEN = 32  # with the NUL
IPSET_ERR_PROTOCOL = 4097
IPSET_ERR_EXIST = 4103
#: The kernel's own reasons for its ipset error numbers (os.strerror knows none of them).
_REASONS = {
    errno.ENOENT: "no such set",
    IPSET_ERR_PROTOCOL: "the kernel refused the message (protocol error)",
    4098: "set type not found",
    4100: "set busy",
    4102: "type mismatch",
    IPSET_ERR_EXIST: "member already there, or already gone",
    4104: "invalid CIDR prefix",
    4106: "invalid address family",
    4109: "invalid IPv4 address",
    4110: "invalid IPv6 address",
    # the hash types' own (bitmap and list sets give these numbers other meanings)
    4352: "set is full",
    4353: "null-valued member",
    4354: "invalid protocol",
    4355: "protocol missing",
}

_NFGENMSG = struct.Struct("=BBH")  # family, version, res_id (big endian, 0)
_BE16 = struct.Struct(">H")
#: Above this many changes the batch is sent from a worker thread; below, the few system
#: calls cost less than the hop to one.
BULK_CHANGES = 256


def _data(member: str) -> tuple[int, bytes]:
    """(family, IPSET_ATTR_DATA payload) of a member as ``ipset save`` prints it: an
    address, a prefix (hash:net) or ``address,proto:port`` (hash:ip,port)."""
    addr, sep, rest = member.partition(",")
    addr, slash, prefix = addr.partition("/")
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    kind = _ATTR_IPADDR_IPV6 if family == socket.AF_INET6 else _ATTR_IPADDR_IPV4
    try:
        packed = socket.inet_pton(family, addr)
    except OSError:
        raise ValueError(f"not an address: {member!r}") from None
    out = netlink.nested(_ATTR_IP, netlink.attr(kind | _NLA_F_NET_BYTEORDER, packed))
    if slash:
        if not prefix.isdigit() or int(prefix) > len(packed) * 8:
            raise ValueError(f"not a prefix: {member!r}")
        out += netlink.attr(_ATTR_CIDR, bytes((int(prefix),)))
    if sep:
        proto, _, port = rest.partition(":")
        if proto not in PORT_PROTOCOLS or not port.isdigit() or int(port) > 0xFFFF:
            raise ValueError(f"not an address,proto:port member: {member!r}")
        out += netlink.attr(_ATTR_PORT | _NLA_F_NET_BYTEORDER, _BE16.pack(int(port)))
        out += netlink.attr(_ATTR_PROTO, bytes((PORT_PROTOCOLS[proto],)))
    return family, out


def encode_change(name: str, member: str, *, add: bool, seq: int) -> bytes:
    """One IPSET_CMD_ADD (or DEL) message, without NLM_F_EXCL: a member already there (or
    already gone) is then no error. ValueError for a member or name it cannot carry."""
    raw = name.encode()
    if not raw or len(raw) >= _MAXNAMELEN:
        raise ValueError(f"not an ipset name: {name!r}")
    family, data = _data(member)
    body = (_NFGENMSG.pack(family, 0, 0)
            + netlink.attr(_ATTR_PROTOCOL, bytes((IPSET_PROTOCOL,)))
            + netlink.attr(_ATTR_SETNAME, raw + b"\0")
            + netlink.nested(_ATTR_DATA, data))
    cmd = IPSET_CMD_ADD if add else IPSET_CMD_DEL
    return netlink.frame((_NFNL_SUBSYS_IPSET << 8) | cmd, body, seq)


class MemberError(netlink.NetlinkError):
    """The kernel refused to add (or delete) one member; ``errno`` is its error number."""

    def __init__(self, code: int, name: str, member: str, *, add: bool,
                 others: int = 0) -> None:
        super().__init__(code, f"ipset {'add' if add else 'del'} {name} {member}")
        self.name, self.member, self.add, self.others = name, member, add, others
        self.reason = _REASONS.get(code) or os.strerror(code)

    def __str__(self) -> str:
        more = f" (and {self.others} more failed in the same batch)" if self.others else ""
        return f"{self.op}: {self.reason} (errno {self.errno}){more}"


Move = tuple[str, str, bool]  # set name, member, add (else delete)


class MemberSocket:
    """Adds and deletes members over netlink, without a process per change.

    Starting ``ipset`` costs more than the change itself when only a few members move (a
    pod came or went); a batch that creates, swaps or fills sets still goes through
    :func:`restore`. The messages are encoded here and sent back to back, only the last
    asking for an ack (see :mod:`kube_router.linux.netlink`). The socket is opened on first
    use and kept, and replaced after any failure; one caller at a time.
    """

    def __init__(self, *, netns: str | None = None) -> None:
        self._netns = netns
        self._nl: netlink.Socket | None = None
        self._buf: bytearray | None = None
        self._lock = threading.Lock()

    async def change(self, name: str, member: str, *, add: bool) -> None:
        """Add (or delete) ``member`` of set ``name``, as ``ipset save`` prints it: an
        address (hash:ip), a prefix (hash:net) or ``address,proto:port`` (hash:ip,port);
        a member already there (or already gone) is no error."""
        await self.change_many([(name, member, add)])

    async def change_many(self, moves: Sequence[Move]) -> None:
        """Every (set, member, add) of ``moves``, in order, in one pipelined batch. All are
        tried; the first refusal is then raised as :class:`MemberError`."""
        if len(moves) > BULK_CHANGES:
            await asyncio.to_thread(self.change_sync, moves)
        elif moves:
            self.change_sync(moves)

    def change_sync(self, moves: Sequence[Move]) -> None:
        """:meth:`change_many`, blocking."""
        if not moves:
            return
        with self._lock:
            try:
                self._send(moves)
            except BaseException:
                self._close()  # a fresh socket next time
                raise

    def _send(self, moves: Sequence[Move]) -> None:
        if self._nl is None:
            self._nl = netlink.Socket(NETLINK_NETFILTER, netns=self._netns, cap_ack=True,
                                      rcvbuf=1 << 20, sndbuf=1 << 20)
        nl = self._nl
        first = nl.reserve(len(moves))
        last = first + len(moves) - 1
        buf = netlink.ChunkBuffer(netlink.CHUNK_BYTES, None, self._buf)
        self._buf = buf.buf
        for i, (name, member, add) in enumerate(moves):
            buf.put(encode_change(name, member, add=add, seq=first + i))
        buf.ack_last()
        failed: list[tuple[int, int]] = []

        def on_reply(seq: int, code: int, _payload: bytes) -> bool:
            if code and first <= seq <= last:
                failed.append((seq - first, code))
            return seq == last

        nl.send_chunks(buf.chunks(), on_reply)
        if failed:
            idx, code = min(failed)
            name, member, add = moves[idx]
            raise MemberError(code, name, member, add=add, others=len(failed) - 1)

    def _close(self) -> None:
        if self._nl is not None:
            with contextlib.suppress(OSError):
                self._nl.close()
            self._nl = None

    def close(self) -> None:
        with self._lock:
            self._close()
