"""ipsets through ``ipset restore`` batches, swapping a rebuilt set into place.

A set that a rule uses is never flushed in place (its members would vanish for a moment);
the new members go into a temporary set that is swapped with the live one, atomically.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from collections.abc import Iterable
from typing import Any

from kube_router.errors import TemporaryError
from kube_router.linux.run import RestoreError
from kube_router.linux.run import restore as run_restore
from kube_router.linux.run import restore_text
from kube_router.linux.run import run
from kube_router.linux.run import run_sync


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


def parse_save(text: str, wanted: Callable[[str], bool]) -> dict[str, tuple[str, set[str]]]:
    """name -> (type, members) for the sets ``wanted`` accepts, from ``ipset save``.

    A member keeps its options as saved (``10.1.0.0/16 nomatch``); ipset prints a host
    prefix (/32, /128) of a hash:net member as the bare address.
    """
    sets: dict[str, tuple[str, set[str]]] = {}
    for line in text.splitlines():
        verb, _, rest = line.partition(" ")
        name, _, tail = rest.partition(" ")
        if verb == "create" and wanted(name):
            sets[name] = (tail.split(" ", 1)[0], set())
        elif verb == "add" and name in sets:
            sets[name][1].add(tail.strip())
    return sets


#: Protocols of hash:ip,port members, by the name ``ipset save`` prints.
PORT_PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP,
                  "sctp": socket.IPPROTO_SCTP}


def _entry(member: str) -> tuple[Any, str]:
    """pyroute2's entry and entry type for a member as ``ipset save`` prints it."""
    addr, sep, rest = member.partition(",")
    if not sep:
        return member, "ip"
    from pyroute2.ipset import PortEntry

    proto, _, port = rest.partition(":")
    if proto not in PORT_PROTOCOLS or not port.isdigit():
        raise ValueError(f"not an address,proto:port member: {member!r}")
    return (addr, PortEntry(int(port), protocol=PORT_PROTOCOLS[proto])), "ip,port"


class MemberSocket:
    """Adds and deletes single members over netlink, without a process per change.

    Starting ``ipset`` costs more than the change itself when only a few members move (a
    pod came or went); a batch that creates, swaps or fills sets still goes through
    :func:`restore`. The socket is opened on first use and kept; use it from one event loop.
    """

    def __init__(self) -> None:
        self._sock: Any = None
        self._loop: Any = None

    async def change(self, name: str, member: str, *, add: bool) -> None:
        """Add (or delete) ``member`` of set ``name``, as ``ipset save`` prints it: an
        address (hash:ip) or ``address,proto:port`` (hash:ip,port); a member already
        there (or already gone) is no error."""
        from pyroute2.ipset import AsyncIPSet  # kept out of start-up for users of restore

        loop = asyncio.get_running_loop()
        if self._sock is not None and self._loop is not loop:
            self.close()  # made under another event loop (which may be gone): not usable
        if self._sock is None:
            sock = AsyncIPSet()
            await sock.setup_endpoint()
            self._sock, self._loop = sock, loop
        entry, etype = _entry(member)
        addr = member.partition(",")[0]
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        try:
            if add:
                await self._sock.add(name, entry, family=family, exclusive=False,
                                     etype=etype)
            else:
                await self._sock.delete(name, entry, family=family, exclusive=False,
                                        etype=etype)
        except Exception:
            self.close()  # a fresh socket next time
            raise

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(Exception):  # its loop may be closed already
                self._sock.close()
            self._sock = None
