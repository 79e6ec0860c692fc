"""``healthCheckNodePort`` responders: one small HTTP server per such port.

A cloud load balancer in front of a Service with ``externalTrafficPolicy: Local`` probes
every node on this port and sends traffic only to the nodes that answer 200, which are the
nodes with a local ready endpoint. As kube-proxy does, any path is answered: 200 with the
count of local endpoints when there is one, else 503, with a small JSON body.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

READ_TIMEOUT = 5.0


@dataclass
class _Port:
    service: str  # namespace/name
    endpoints: int
    server: asyncio.base_events.Server | None = None


class HealthCheckServers:
    """Keeps one responder per wanted port; counts change without restarting anything."""

    def __init__(self, host: str | None = None) -> None:
        self.host = host  # None: every address of the node, as kube-proxy binds
        self.ports: dict[int, _Port] = {}
        self._failed: set[tuple[int, str]] = set()

    async def update(self, wanted: dict[int, tuple[str, int]]) -> None:
        """Make the responders match ``wanted``: port -> (service key, local endpoints)."""
        for port in list(self.ports):
            if port not in wanted or self.ports[port].service != wanted[port][0]:
                await self._close(port)
        for port, (service, count) in wanted.items():
            have = self.ports.get(port)
            if have is not None:
                have.endpoints = count
                continue
            entry = _Port(service, count)
            try:
                entry.server = await asyncio.start_server(
                    functools.partial(self._serve, port), host=self.host, port=port,
                    reuse_address=True)
            except OSError as exc:
                if (port, service) not in self._failed:  # retried every sync: say it once
                    self._failed.add((port, service))
                    log.warning("cannot serve health check service=%s port=%d error=%s",
                                service, port, exc.strerror or exc)
                continue
            self._failed.discard((port, service))
            self.ports[port] = entry
            log.info("health check serving service=%s port=%d local_endpoints=%d",
                     service, port, count)

    async def _close(self, port: int) -> None:
        entry = self.ports.pop(port)
        if entry.server is not None:
            entry.server.close()
            await entry.server.wait_closed()
        log.info("health check stopped service=%s port=%d", entry.service, port)

    async def close(self) -> None:
        for port in list(self.ports):
            await self._close(port)

    async def _serve(self, port: int, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        try:
            # answer anyway when the head is cut short: a bare probe still wants a status
            with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                                     TimeoutError):
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            entry = self.ports.get(port)
            if entry is None:
                return
            ns, _, name = entry.service.partition("/")
            body = json.dumps({"service": {"namespace": ns, "name": name},
                               "localEndpoints": entry.endpoints,
                               "serviceProxyHealthy": True}).encode()
            status = "200 OK" if entry.endpoints > 0 else "503 Service Unavailable"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                f"X-Content-Type-Options: nosniff\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the prober went away
        finally:
            writer.close()
