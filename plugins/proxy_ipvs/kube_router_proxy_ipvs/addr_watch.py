"""Follows the node's addresses between full syncs.

``kube-router-local-ips`` holds the node's own addresses; a link that comes or goes (the
router creating ``kube-bridge``, an operator adding an address) changes them. Without this
the set would lag up to one ``--ipvs-sync-period``, and the service guard would reject
traffic to the new address meanwhile. The kernel tells every member of the IFADDR groups of
each change; several in a row (a pod's veth, a bridge with its address) are read as one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable
from collections.abc import Callable

from kube_router.linux import netlink

log = logging.getLogger(__name__)

RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
#: Seconds to let a burst of address messages end before reading the addresses once.
SETTLE = 0.2


class AddressWatch:
    """Calls ``on_change()`` (a coroutine) once after each burst of address changes."""

    def __init__(self, on_change: Callable[[], Awaitable[None]]) -> None:
        self.on_change = on_change
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending = asyncio.Event()

    def start(self) -> None:
        sock = netlink.open_socket(socket.NETLINK_ROUTE, rcvbuf=1 << 20, sndbuf=1 << 16,
                                   groups=RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)
        sock.setblocking(False)
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)
        self._task = asyncio.get_running_loop().create_task(self._loop())

    def _readable(self) -> None:
        assert self._sock is not None
        while True:
            try:
                self._sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as exc:  # ENOBUFS: messages were lost; read the addresses anew
                log.debug("address watch receive error=%s", exc)
                break
        self._pending.set()

    async def _loop(self) -> None:
        while True:
            await self._pending.wait()
            await asyncio.sleep(SETTLE)
            self._pending.clear()
            try:
                await self.on_change()
            except Exception as exc:  # the next change or full sync tries again
                log.warning("local address refresh failed error=%s", exc)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._sock is not None:
            with contextlib.suppress(ValueError, RuntimeError):
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
