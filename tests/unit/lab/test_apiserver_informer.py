"""The agent's own informer against the lab API: list, watch, API restart, 410 relist."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from kube_router.kube.client import load_client
from kube_router.kube.informer import Informer
from kube_router.kube.kinds import KINDS
from kube_router.kube.store import Store
from kube_router_lab.apiserver import ApiServer
from kube_router_lab.apiserver import ApiStore


def service(name: str, ip: str) -> dict:
    return {"kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": ip, "ports": [{"port": 80, "protocol": "TCP"}]}}


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def test_informer_follows_restarts_and_relists_after_410(
        store: ApiStore, server: ApiServer, tmp_path: Path) -> None:
    for i in range(5):
        store.create(service(f"s{i}", f"10.1.0.{i + 1}"))
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")

    async def scenario() -> None:
        cache = Store("Service")
        inf = Informer(KINDS["Service"], load_client(str(kubeconfig), None), cache,
                       lambda _event: None, loop=asyncio.get_running_loop(), page_size=2,
                       watch_timeout=5)
        inf.start()
        try:
            await asyncio.wait_for(inf.synced.wait(), 10)
            assert sorted(cache.keys()) == [f"default/s{i}" for i in range(5)]

            store.create(service("live", "10.1.0.99"))
            await until(lambda: "default/live" in cache)

            # A restart: as a real API server, it has no history of its previous life, so
            # the watch gets 410 Gone and the informer lists again.
            server.stop()
            store.delete("Service", "default", "s0")
            server.start()
            await until(lambda: "default/s0" not in cache)
            assert inf.relists == 1

            # One told to keep its history lets the watch resume, no relist needed.
            server.keep_history = True
            server.stop()
            store.delete("Service", "default", "s1")
            server.start()
            await until(lambda: "default/s1" not in cache)
            assert inf.relists == 1
            assert inf.resource_version == store.resource_version()
        finally:
            inf.stop()

    asyncio.run(scenario())
