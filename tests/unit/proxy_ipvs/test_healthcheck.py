"""healthCheckNodePort: the desired count, the flags, and the responder over loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket

import pytest

from kube_router.kube.records import decode_endpointslice
from kube_router.kube.records import decode_service
from kube_router.settings import CoreSettings
from kube_router.settings import parse
from kube_router_proxy_ipvs import settings
from kube_router_proxy_ipvs.api import DEFAULT
from kube_router_proxy_ipvs.desired import Settings
from kube_router_proxy_ipvs.desired import service_state
from kube_router_proxy_ipvs.healthcheck import HealthCheckServers

S = Settings(node_name="node-0", service_cidrs=(ipaddress.ip_network("10.96.0.0/16"),))


def _svc(policy: str = "Local", hc: int | None = 32100):
    spec = {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
            "externalTrafficPolicy": policy,
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "nodePort": 30080}]}
    if hc:
        spec["healthCheckNodePort"] = hc
    return decode_service({"metadata": {"namespace": "default", "name": "web"}, "spec": spec})


def _slice(*items, family="IPv4"):
    """items: (ip, node, ready, terminating, pod)"""
    return decode_endpointslice({
        "metadata": {"namespace": "default", "name": f"web-{family}",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": family,
        "endpoints": [{"addresses": [ip], "nodeName": node,
                       "targetRef": {"kind": "Pod", "name": pod},
                       "conditions": {"ready": r, "serving": r or t, "terminating": t}}
                      for ip, node, r, t, pod in items],
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
    })


def test_local_ready_endpoints_are_counted_once_per_pod() -> None:
    v4 = _slice(("10.2.0.5", "node-0", True, False, "a"),
                ("10.2.0.6", "node-0", False, True, "b"),   # terminating: not counted
                ("10.2.0.7", "node-0", False, False, "c"),  # not ready
                ("10.2.1.5", "node-1", True, False, "d"))   # another node
    v6 = _slice(("fd00::5", "node-0", True, False, "a"), family="IPv6")  # the same pod
    st = service_state(_svc(), [v4, v6], S, DEFAULT, [])
    assert st.health_check == (32100, 1)


def test_no_health_check_without_local_policy_or_port() -> None:
    sl = _slice(("10.2.0.5", "node-0", True, False, "a"))
    assert service_state(_svc("Cluster"), [sl], S, DEFAULT, []).health_check is None
    assert service_state(_svc(hc=None), [sl], S, DEFAULT, []).health_check is None
    # Local with nothing local: still answered (503), so the load balancer skips the node
    assert service_state(_svc(), [], S, DEFAULT, []).health_check == (32100, 0)


def test_timeout_flags() -> None:
    def timeouts(*argv: str) -> tuple[int, int, int]:
        flags = parse(argv, settings.add_options)
        return settings.ProxySettings.from_flags(flags, CoreSettings.from_flags(flags)).timeouts

    assert timeouts() == (0, 0, 0)
    assert timeouts("--service-tcp-timeout", "15m", "--service-tcpfin-timeout", "1m30s",
                    "--service-udp-timeout", "250ms") == (900, 90, 1)
    with pytest.raises(SystemExit):
        timeouts("--service-udp-timeout", "soon")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _get(port: int, path: str = "/healthz") -> tuple[int, dict]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_responder_answers_with_the_local_count() -> None:
    async def main() -> None:
        port = _free_port()
        servers = HealthCheckServers(host="127.0.0.1")
        await servers.update({port: ("default/web", 2)})
        status, body = await _get(port)
        assert status == 200
        assert body == {"service": {"namespace": "default", "name": "web"},
                        "localEndpoints": 2, "serviceProxyHealthy": True}
        # the count changes without a new listener; none left: 503
        listener = servers.ports[port].server
        await servers.update({port: ("default/web", 0)})
        assert servers.ports[port].server is listener
        status, body = await _get(port, "/")
        assert status == 503 and body["localEndpoints"] == 0
        # the port is no longer wanted: closed
        await servers.update({})
        with pytest.raises(OSError):
            await _get(port)
        await servers.close()

    asyncio.run(main())


def test_port_in_use_is_reported_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            taken = busy.getsockname()[1]
            other = _free_port()
            servers = HealthCheckServers(host="127.0.0.1")
            await servers.update({taken: ("default/a", 1), other: ("default/b", 1)})
            assert set(servers.ports) == {other}
            await servers.update({taken: ("default/a", 1), other: ("default/b", 1)})
            await servers.close()

    asyncio.run(main())
    warnings = [r for r in caplog.records if "cannot serve health check" in r.getMessage()]
    assert len(warnings) == 1 and "service=default/a" in warnings[0].getMessage()
