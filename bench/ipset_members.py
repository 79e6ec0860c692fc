"""ipset member changes over netlink; run as root inside the lab guest.

    kube-router-py lab exec -- .venv/bin/python -m bench.ipset_members

``--changes`` members (half hash:ip addresses, half hash:ip,port ``address,tcp:port``) are
added to two empty sets, then deleted, by each way in turn, ``--repeat`` times over; a
phase's time is reported per 1,000 changes (the median of its runs, adds and deletes apart):

- ``codec_batch``: :class:`MemberSocket` ``change_many`` in batches of 250, as the proxy
  and the firewall send them (both go through ``ipset restore`` above 256 changes);
- ``codec_single``: ``change`` once per member, each its own batch and ack;
- ``pyroute2``: pyroute2's ``AsyncIPSet``, one awaited ``add`` or ``delete`` per member (how
  MemberSocket changed members before it encoded its own messages);
- ``restore``: one ``ipset restore`` process with the same ``add``/``del ... -exist`` lines.

``*_unreachable``: the objects the cyclic collector found unreachable (``gc.collect()``'s
return value) after one phase of adds and one of deletes run with the collector disabled:
what such a sync leaves for the next collection (the agent freezes the collector after bulk
work). The sockets are opened, and one change made, before the count starts.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import socket
import statistics
import subprocess
import time
import uuid
from collections.abc import Awaitable
from collections.abc import Callable
from typing import Any

from kube_router.linux import ipset

Move = tuple[str, str, bool]
BATCH = 250  # the callers send at most 256 changes over netlink


def _sets() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    ip, port = f"bm-ip-{tag}", f"bm-port-{tag}"
    subprocess.run(["ipset", "create", ip, "hash:ip"], check=True)
    subprocess.run(["ipset", "create", port, "hash:ip,port"], check=True)
    return ip, port


def _moves(ip: str, port: str, n: int, add: bool) -> list[Move]:
    half = n // 2
    out = [(ip, f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}", add) for i in range(half)]
    out += [(port, f"10.96.{(i // 256) % 256}.{i % 256},tcp:{1000 + i % 50000}", add)
            for i in range(n - half)]
    return out


def _count(name: str) -> int:
    out = subprocess.run(["ipset", "list", "-t", name], capture_output=True, text=True,
                         check=True).stdout
    for line in out.splitlines():
        if line.startswith("Number of entries:"):
            return int(line.split(":")[1])
    return -1


class Codec:
    def __init__(self, batch: int) -> None:
        self.members = ipset.MemberSocket()
        self.batch = batch

    async def run(self, moves: list[Move]) -> None:
        if self.batch == 1:
            for name, member, add in moves:
                await self.members.change(name, member, add=add)
            return
        for i in range(0, len(moves), self.batch):
            await self.members.change_many(moves[i : i + self.batch])

    def close(self) -> None:
        self.members.close()


class Pyroute2:
    """One awaited call per member, as MemberSocket made them through pyroute2."""

    def __init__(self) -> None:
        self.sock: Any = None

    async def run(self, moves: list[Move]) -> None:
        from pyroute2.ipset import AsyncIPSet
        from pyroute2.ipset import PortEntry

        if self.sock is None:
            self.sock = AsyncIPSet()
            await self.sock.setup_endpoint()
        for name, member, add in moves:
            addr, sep, rest = member.partition(",")
            entry: Any = addr
            etype = "ip"
            if sep:
                proto, _, port = rest.partition(":")
                entry = (addr, PortEntry(int(port), protocol=ipset.PORT_PROTOCOLS[proto]))
                etype = "ip,port"
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            call = self.sock.add if add else self.sock.delete
            await call(name, entry, family=family, exclusive=False, etype=etype)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


class Restore:
    async def run(self, moves: list[Move]) -> None:
        await ipset.restore([f"{'add' if a else 'del'} {n} {m} -exist" for n, m, a in moves])

    def close(self) -> None:
        pass


async def _timed(run: Callable[[list[Move]], Awaitable[None]], moves: list[Move]) -> float:
    t0 = time.perf_counter()
    await run(moves)
    return time.perf_counter() - t0


async def measure(name: str, way: Any, args: argparse.Namespace) -> dict[str, Any]:
    """One way's runs, on one event loop (pyroute2's socket is bound to the loop that
    opened it)."""
    ip, port = _sets()
    adds = _moves(ip, port, args.changes, True)
    dels = _moves(ip, port, args.changes, False)
    per_k = 1000 / args.changes
    try:
        await way.run(adds[:1] + dels[:1])  # opens the socket
        add_s: list[float] = []
        del_s: list[float] = []
        for _ in range(args.repeat):
            add_s.append(await _timed(way.run, adds))
            assert _count(ip) + _count(port) == args.changes
            del_s.append(await _timed(way.run, dels))
            assert _count(ip) + _count(port) == 0
        gc.collect()
        gc.disable()
        try:
            await way.run(adds)
            await way.run(dels)
            unreachable = gc.collect()
        finally:
            gc.enable()
    finally:
        way.close()
        subprocess.run(["ipset", "destroy", ip], check=False)
        subprocess.run(["ipset", "destroy", port], check=False)
    return {f"{name}_add_ms_per_1000": round(statistics.median(add_s) * per_k * 1000, 2),
            f"{name}_del_ms_per_1000": round(statistics.median(del_s) * per_k * 1000, 2),
            f"{name}_add_samples_ms": [round(s * 1000, 2) for s in add_s],
            f"{name}_del_samples_ms": [round(s * 1000, 2) for s in del_s],
            f"{name}_unreachable": unreachable}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--changes", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--skip-pyroute2", action="store_true")
    args = p.parse_args()
    result: dict[str, Any] = {"changes": args.changes, "repeat": args.repeat}
    ways: list[tuple[str, Callable[[], Any]]] = [
        ("codec_batch", lambda: Codec(BATCH)), ("codec_single", lambda: Codec(1)),
        ("restore", Restore)]
    if not args.skip_pyroute2:
        ways.append(("pyroute2", Pyroute2))
    for name, make in ways:
        part = asyncio.run(measure(name, make(), args))
        print(json.dumps(part), flush=True)
        result.update(part)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
