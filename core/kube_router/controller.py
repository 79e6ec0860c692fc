"""The base of every controller: a coalescing work queue and the loop that drives it.

A controller names the kinds it reads (``kinds``) and the store indexes it looks records up
by (``indexes``). The core subscribes it to those kinds; each event marks keys dirty
(``keys_for``) in the controller's one work queue, in the same call of the event loop that
put the change in the store, so a controller never wakes before the store it will read holds
what woke it. The controller's own task waits until the informers of all its kinds have
listed everything once (so nothing is pruned from an incomplete cache), runs one full sync,
and from then on sleeps on its queue until keys are dirty or the next full sync is due
(every ``resync_period`` seconds, to repair drift); it never polls.

``sync`` computes the desired state of the given keys from the stores and applies the
difference against the kernel. It recomputes; it never patches from event deltas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Hashable
from collections.abc import Iterable
from collections.abc import Mapping
from typing import TYPE_CHECKING
from typing import Any
from typing import ClassVar
from typing import Protocol

from kube_router import gc_policy
from kube_router.errors import TemporaryError
from kube_router.linux.memory import trim

if TYPE_CHECKING:
    import argparse

    from kube_router.kube.events import Event
    from kube_router.kube.store import IndexFunc
    from kube_router.kube.store import Store
    from kube_router.metrics import Metrics
    from kube_router.settings import CoreSettings

log = logging.getLogger(__name__)


class AgentContext(Protocol):
    """What a controller may use of the agent that runs it (:class:`kube_router.agent.Agent`
    is one), so that controllers depend on this and not on the agent's module."""

    config: argparse.Namespace  # the parsed flags, read-only
    settings: CoreSettings
    node_name: str
    metrics: Metrics
    #: Other plugins' hooks, the enabled ones only (``agent.hook.kube_router_...(...)``).
    hook: Any

    def store(self, kind: str) -> Store: ...

    async def wait_synced(self, kinds: Iterable[str]) -> None: ...

    def resource_versions(self, kinds: Iterable[str]) -> dict[str, str]: ...


class WorkQueue:
    """A set of dirty keys; adding a key already dirty costs nothing.

    The controller's task sleeps in :meth:`wait` until a key is added or its deadline
    passes: an idle controller costs no wake-ups at all.
    """

    def __init__(self) -> None:
        self._dirty: set[Hashable] = set()
        self._full = False
        self._wakeup = asyncio.Event()

    def add(self, key: Hashable) -> None:
        self._dirty.add(key)
        self._wakeup.set()

    def add_all(self) -> None:
        """Ask for a full sync."""
        self._full = True
        self._wakeup.set()

    def __len__(self) -> int:
        return len(self._dirty) + self._full

    async def wait(self, timeout: float | None) -> None:
        """Return when a key is dirty, or after ``timeout`` seconds (None: no limit)."""
        if self._dirty or self._full:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout)

    def take(self) -> frozenset[Hashable] | None:
        """Return the dirty keys and forget them; None means "everything"."""
        self._wakeup.clear()
        keys, full = frozenset(self._dirty), self._full
        self._dirty.clear()
        self._full = False
        return None if full else keys


class Controller:
    """Subclass this; set ``name`` and ``kinds``; implement ``sync``."""

    name: str = ""
    kinds: tuple[str, ...] = ()
    #: The store indexes the controller reads with ``Store.by_index``: kind -> index name ->
    #: the function giving a record's index values. Made by the core before any record is
    #: stored; two controllers may declare the same index with the same function.
    indexes: ClassVar[Mapping[str, Mapping[str, IndexFunc]]] = {}
    #: Seconds between full syncs; the plugin's ``--*-sync-period`` flag usually sets it.
    resync_period: float = 300.0
    #: Seconds before retrying keys whose sync raised an error.
    retry_delay: float = 5.0

    def __init__(self, agent: AgentContext) -> None:
        self.agent = agent
        self.queue = WorkQueue()
        for kind, funcs in self.indexes.items():
            store = agent.store(kind)
            for index, func in funcs.items():
                store.add_index(index, func)
        # Each kind's informer version as of the last sync that left nothing dirty behind;
        # while the controller is idle the informers' current versions are reported instead.
        self._applied_versions: dict[str, str] = {}
        self.last_sync: float | None = None  # wall-clock time of the last successful sync
        self.last_error: str | None = None
        self.synced = False  # the first full sync succeeded
        self._retries_pending = 0
        self._syncing = False  # keys taken from the queue and not yet applied

    # -- for subclasses ------------------------------------------------------------------

    def keys_for(self, event: Event) -> Iterable[Hashable]:
        """Map an event to the keys it makes dirty. The default is the object's own key."""
        return (event.key,)

    async def start(self) -> None:
        """Called once, after the caches are complete and before the first full sync:
        read the kernel state the controller owns."""

    async def sync(self, keys: frozenset[Hashable] | None) -> None:
        """Bring the kernel in line with the stores for ``keys`` (None: everything)."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Called once at shutdown. Leave kernel state as it is: the next start reconciles."""

    # -- driven by the core ---------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        for key in self.keys_for(event):
            self.queue.add(key)

    def idle(self) -> bool:
        """Synced, and nothing dirty, being synced or waiting for a retry.

        Events reach the queue in the same loop callback that moves the informer's version
        (see :mod:`kube_router.bus`), so an idle controller has applied everything up to
        its informers' current versions, bookmarks included.
        """
        return (self.synced and not self._syncing and not self._retries_pending
                and not len(self.queue))

    @property
    def applied_resource_versions(self) -> dict[str, str]:
        """Each kind's resourceVersion whose changes are all applied, as the server gave it.
        Opaque strings, one per kind: a reader compares each with a version it got from the
        server for that kind, for equality; never across kinds, never as numbers."""
        if self.idle():
            return self.agent.resource_versions(self.kinds)
        return self._applied_versions

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        await self.agent.wait_synced(self.kinds)
        await self.start()
        self.queue.add_all()
        next_full = float("inf")
        while True:
            timeout = next_full - loop.time()
            await self.queue.wait(None if timeout == float("inf") else max(0.0, timeout))
            if loop.time() >= next_full:
                self.queue.add_all()
            if not len(self.queue):
                continue
            # What the stores hold now is at least what the informers' versions say:
            # both moved in the callbacks that fed the queue.
            versions = self.agent.resource_versions(self.kinds)
            keys = self.queue.take()
            ok = await self._sync_once(keys, versions)
            if ok and keys is None:
                next_full = loop.time() + self.resync_period

    async def _sync_once(self, keys: frozenset[Hashable] | None,
                         versions: dict[str, str]) -> bool:
        started = time.monotonic()
        self._syncing = True
        try:
            if keys is None:
                with gc_policy.bulk:  # the core's GC policy for bulk work
                    await self.sync(None)
            else:
                await self.sync(keys)
        except Exception as exc:  # a controller must never die; it retries
            delay = exc.delay if isinstance(exc, TemporaryError) else self.retry_delay
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.agent.metrics.sync_errors.labels(self.name).inc()
            if isinstance(exc, TemporaryError):  # expected to pass: one line, no trace
                log.warning("sync incomplete controller=%s retry_in=%.1fs reason=%s",
                            self.name, delay, exc)
            else:
                log.exception("sync failed controller=%s retry_in=%.1fs", self.name, delay)
            self._retries_pending += 1
            asyncio.get_running_loop().call_later(delay, self._requeue, keys)
            return False
        finally:
            self._syncing = False
            self.agent.metrics.sync_seconds.labels(self.name).observe(
                time.monotonic() - started
            )
        self.last_error = None
        self.last_sync = time.time()
        if keys is None:
            self.synced = True
            trim()  # what the full sync built and dropped goes back to the kernel
        if self.synced and not len(self.queue) and not self._retries_pending:
            self._applied_versions = versions
        return True

    def _requeue(self, keys: frozenset[Hashable] | None) -> None:
        self._retries_pending -= 1
        if keys is None:
            self.queue.add_all()
        else:
            for key in keys:
                self.queue.add(key)
