"""The informer against the real API server, authenticated as the DaemonSet's pods are."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import pytest

from kube_router.kube.client import load_client
from kube_router.kube.events import Event
from kube_router.kube.events import EventType
from kube_router.kube.informer import Informer
from kube_router.kube.kinds import KINDS
from kube_router.kube.store import Store

TIMEOUT = 30.0


def svc(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"ports": [{"port": 80}]}}


async def until(cond: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
def in_cluster(monkeypatch: pytest.MonkeyPatch, control_plane) -> str:
    """A pod's environment whose Service address leads nowhere: only --master works."""
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "192.0.2.99")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    return control_plane.url


def informer(master: str, kind: str = "Service", **kw) -> tuple[Informer, list[Event]]:
    events: list[Event] = []
    inf = Informer(KINDS[kind], load_client(None, master), Store(kind), events.append,
                   loop=asyncio.get_running_loop(), **kw)
    inf.start()
    return inf, events


def test_master_with_the_service_account_reaches_the_real_server(in_cluster: str) -> None:
    async def main() -> None:
        inf, _ = informer(in_cluster)
        try:
            await asyncio.wait_for(inf.synced.wait(), TIMEOUT)
            assert "default/kubernetes" in inf.store
            assert inf.api.configuration.host == in_cluster
            assert inf.last_error is None
        finally:
            inf.stop()

    asyncio.run(main())


def test_the_service_account_has_only_the_manifests_permissions(in_cluster: str) -> None:
    api = load_client(None, in_cluster)
    cfg = api.configuration
    headers = {"Authorization": cfg.auth_settings()["BearerToken"]["value"]}
    pool = api.rest_client.pool_manager
    allowed = pool.request("GET", f"{cfg.host}/api/v1/services?limit=1", headers=headers)
    denied = pool.request("GET", f"{cfg.host}/api/v1/secrets?limit=1", headers=headers)
    assert allowed.status == 200
    assert denied.status == 403  # RBAC on, and the token is the account's


def test_live_changes_and_a_recreated_object(in_cluster: str, control_plane) -> None:
    store = control_plane.store

    async def main() -> None:
        inf, events = informer(in_cluster)
        try:
            await asyncio.wait_for(inf.synced.wait(), TIMEOUT)
            events.clear()
            store.create(svc("contract-a"))
            await until(lambda: "default/contract-a" in inf.store, "the new Service")
            uid = inf.store.get("default/contract-a").meta.uid
            store.delete("Service", "default", "contract-a")
            store.create(svc("contract-a"))
            await until(lambda: ("default/contract-a" in inf.store and
                                 inf.store.get("default/contract-a").meta.uid != uid),
                        "the re-created Service")
            mine = [e.type for e in events if e.key == "default/contract-a"]
            assert mine == [EventType.ADDED, EventType.DELETED, EventType.ADDED]
            # resourceVersions are the server's opaque strings, passed on as they are
            assert inf.resource_version and isinstance(inf.resource_version, str)
        finally:
            inf.stop()

    asyncio.run(main())


def test_paged_list_of_the_real_server(in_cluster: str, control_plane) -> None:
    for i in range(12):
        control_plane.store.create(svc(f"paged-{i:02d}"))

    async def main() -> None:
        inf, events = informer(in_cluster, page_size=5)
        try:
            await asyncio.wait_for(inf.synced.wait(), TIMEOUT)
            keys = {e.key for e in events if e.type == EventType.ADDED}
            assert {f"default/paged-{i:02d}" for i in range(12)} <= keys
        finally:
            inf.stop()

    asyncio.run(main())


def test_watch_timeout_and_keepalive_on_the_real_server(in_cluster: str) -> None:
    async def main() -> None:
        inf, _ = informer(in_cluster)
        try:
            await asyncio.wait_for(inf.synced.wait(), TIMEOUT)
            await until(lambda: inf._response is not None, "an open watch")
            sock = inf._response.connection.sock  # type: ignore[union-attr]
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) <= 30
        finally:
            inf.stop()

    asyncio.run(main())
