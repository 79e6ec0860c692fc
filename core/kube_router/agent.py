"""The agent's lifecycle: informers for the kinds the controllers need, the bus that hands
their events straight to the controllers' work queues, the controllers' loops, the health
server, and a clean stop on SIGTERM/SIGINT.

Stopping leaves every kernel object in place: the next start reads the kernel and
reconciles, so traffic keeps flowing through a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import signal
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING
from typing import Any

import pluggy

from kube_router import objwarn
from kube_router.bus import Bus
from kube_router.controller import Controller
from kube_router.hookcall import one_by_one
from kube_router.kube.kinds import KINDS
from kube_router.kube.store import Store
from kube_router.metrics import Metrics
from kube_router.settings import CoreSettings
from kube_router.settings import Flags
from kube_router.settings import Startup
from kube_router.settings import configure

if TYPE_CHECKING:
    from kube_router.kube.informer import Informer

log = logging.getLogger(__name__)


class EnabledHooks:
    """A hook relay that reaches only the enabled plugins.

    Plugins call each other's hooks through ``agent.hook``; a plugin that is installed but
    not enabled must not take part.
    """

    def __init__(self, pm: pluggy.PluginManager, disabled: Iterable[object]) -> None:
        self._pm = pm
        self._disabled = list(disabled)
        self._callers: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        caller = self._callers.get(name)
        if caller is None:
            caller = self._pm.subset_hook_caller(name, self._disabled)
            self._callers[name] = caller
        return caller


class Agent:
    def __init__(self, startup: Startup, pm: pluggy.PluginManager) -> None:
        self.startup = startup
        self.config: argparse.Namespace = startup.flags  # read-only
        self.settings: CoreSettings = startup.core
        self.node_name: str = startup.core.node_name
        self.pm = pm
        self.enabled = list(startup.enabled)
        disabled = [p for n, p in pm.list_name_plugin() if n not in self.enabled]
        self.hook = EnabledHooks(pm, disabled)
        self.metrics = Metrics()
        self.bus = Bus()
        self._stores: dict[str, Store] = {}
        self.informers: dict[str, Informer] = {}
        self.controllers: list[Controller] = []
        self._stop = asyncio.Event()

    @classmethod
    def from_flags(cls, flags: argparse.Namespace, pm: pluggy.PluginManager,
                   enabled: Iterable[str]) -> Agent:
        """An agent whose settings are built from parsed flags, as start-up builds them
        (tests, benchmarks, embedding)."""
        return cls(configure(pm, Flags(flags), enabled), pm)

    # -- what controllers use ---------------------------------------------------------------

    def store(self, kind: str) -> Store:
        if kind not in KINDS:
            raise KeyError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
        store = self._stores.get(kind)
        if store is None:
            store = self._stores[kind] = Store(kind)
        return store

    async def wait_synced(self, kinds: Iterable[str]) -> None:
        await asyncio.gather(*(self.informers[k].synced.wait() for k in kinds))

    def resource_versions(self, kinds: Iterable[str]) -> dict[str, str]:
        """Each of these kinds' informer resourceVersion, as the server gave it: opaque
        strings, never combined across kinds (a server may number each kind apart)."""
        return {k: self.informers[k].resource_version for k in kinds}

    # -- lifecycle --------------------------------------------------------------------------

    def build(self) -> None:
        """Ask the enabled plugins for their controllers and subscribe each one's work queue
        to its kinds (each controller made the store indexes it declared when built)."""
        for name, call in one_by_one(self.pm, "kube_router_controllers", among=self.enabled):
            for result in call(agent=self, settings=self.startup.of(name)):
                self.controllers.extend(result or ())
        for c in self.controllers:
            if not c.name:
                c.name = type(c).__name__
            for kind in c.kinds:
                self.store(kind)
                self.bus.subscribe(kind, c.on_event, name=c.name)
        for kind in self._stores:  # a deleted object's warnings go with it
            self.bus.subscribe(kind, objwarn.forget_deleted, name="objwarn")

    def stop(self) -> None:
        self._stop.set()

    async def run(self, api: Any) -> None:
        """Run until stop() or a signal. ``api`` is a kubernetes ApiClient."""
        from kube_router.kube.informer import Informer  # keeps `--help` fast

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        # `kill -USR1` writes every thread's stack to stderr, even when the loop is stuck
        # in a call that never returns (the dump needs neither the loop nor the GIL).
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        for kind, store in self._stores.items():
            # Pages of 500 cost ~5% more CPU than one response and peak at ~2.5x less memory.
            self.informers[kind] = Informer(KINDS[kind], api, store, self.bus.publish,
                                            loop=loop, metrics=self.metrics, page_size=500)
        for inf in self.informers.values():
            inf.start()
        tasks = [loop.create_task(self._guard(c), name=f"controller:{c.name}")
                 for c in self.controllers]
        log.info("agent started node=%s plugins=%s controllers=%s kinds=%s", self.node_name,
                 ",".join(self.enabled), ",".join(c.name for c in self.controllers),
                 ",".join(self.informers))
        await self._stop.wait()
        log.info("agent stopping node=%s", self.node_name)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in self.controllers:
            try:
                await c.stop()
            except Exception:
                log.exception("controller stop failed controller=%s", c.name)
        await asyncio.gather(*(asyncio.to_thread(i.stop) for i in self.informers.values()))
        log.info("agent stopped node=%s", self.node_name)

    async def _guard(self, controller: Controller) -> None:
        """A controller's loop must not end the agent; restart it after a pause."""
        while True:
            try:
                await controller.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                controller.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("controller crashed controller=%s restart_in=5s", controller.name)
                await asyncio.sleep(5)

    # -- health -----------------------------------------------------------------------------

    def readiness(self) -> dict[str, Any]:
        """What /readyz serves: every controller and informer, ``ready``, and ``reasons``:
        one line for each thing that keeps the agent from being ready.

        Not ready is not unhealthy: while the API server is away the agent keeps the
        kernel as it last computed it (/healthz stays 200), and says so here.
        """
        now = time.monotonic()
        reasons: list[str] = []
        informers = {}
        for kind, i in self.informers.items():
            synced = i.synced.is_set()
            since = i.failing_since
            informers[kind] = {
                "resourceVersion": i.resource_version,
                "synced": synced,
                "objects": len(self._stores[kind]),
                "relists": i.relists,
                "lastError": i.last_error,
                "failingSeconds": None if since is None else round(now - since, 1),
            }
            if since is not None:
                reasons.append(f"informer {kind}: API server unreachable for "
                               f"{now - since:.0f}s ({i.last_error})")
            elif not synced:
                reasons.append(f"informer {kind}: first list not complete")
        controllers = {}
        for c in self.controllers:
            controllers[c.name] = {
                "resourceVersions": c.applied_resource_versions,
                "lastSync": c.last_sync,
                "lastError": c.last_error,
                "synced": c.synced,
            }
            if c.last_error:
                reasons.append(f"controller {c.name}: last sync failed ({c.last_error})")
            elif not c.synced:
                reasons.append(f"controller {c.name}: first full sync not done")
        return {"node": self.node_name, "ready": not reasons, "reasons": reasons,
                "controllers": controllers, "informers": informers}
