"""The event path end to end, without a server: informer -> store and bus -> the
controller's one work queue -> its sync. A controller must wake without polling, must
never sync on a store older than the events that woke it, and gets the indexes it
declared."""

from __future__ import annotations

import asyncio
import threading

import orjson
import pytest

from kube_router import plugins
from kube_router.agent import Agent
from kube_router.bus import Bus
from kube_router.controller import Controller
from kube_router.controller import WorkQueue
from kube_router.kube.informer import Informer
from kube_router.kube.kinds import KINDS
from kube_router.kube.records import Record
from kube_router.kube.records import Service
from kube_router.kube.store import Store
from kube_router.metrics import Metrics
from kube_router.settings import parse


def _svc(name: str, ip: str, rv: str) -> dict:
    return {"metadata": {"name": name, "namespace": "default", "resourceVersion": rv},
            "spec": {"clusterIP": ip, "ports": [{"port": 80}]}}


def _line(etype: str, obj: dict) -> bytes:
    return orjson.dumps({"type": etype, "object": obj})


class WiredAgent:
    """The part of Agent a controller uses, over real informers, stores and a bus."""

    def __init__(self, loop: asyncio.AbstractEventLoop, kinds: list[str]) -> None:
        self.metrics = Metrics()
        self.bus = Bus()
        self.stores = {k: Store(k) for k in kinds}
        self.informers = {k: Informer(KINDS[k], None, self.stores[k],  # type: ignore[arg-type]
                                      self.bus.publish, loop=loop) for k in kinds}

    def store(self, kind: str) -> Store:
        return self.stores[kind]

    async def wait_synced(self, kinds):
        await asyncio.gather(*(self.informers[k].synced.wait() for k in kinds))

    def resource_versions(self, kinds):
        return {k: self.informers[k].resource_version for k in kinds}

    def wire(self, c: Controller) -> None:
        for kind in c.kinds:
            self.bus.subscribe(kind, c.on_event, name=c.name)


class Watching(Controller):
    """Records, at each sync, the ClusterIP the store holds for each key it syncs."""

    name = "watching"
    kinds = ("Service",)
    resync_period = 3600

    def __init__(self, agent) -> None:
        super().__init__(agent)
        self.seen: list[tuple[str, str]] = []
        self.waits: list[float | None] = []
        wait = self.queue.wait

        async def counted(timeout):
            self.waits.append(timeout)
            await wait(timeout)

        self.queue.wait = counted  # type: ignore[method-assign]

    async def sync(self, keys):
        store = self.agent.store("Service")
        for key in sorted(keys) if keys is not None else store.keys():
            rec = store.get(key)
            self.seen.append((key, rec.cluster_ips[0] if isinstance(rec, Service) else ""))
        await asyncio.sleep(0)


async def _until(cond, timeout=5.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


def _from_thread(fn) -> None:
    t = threading.Thread(target=fn)
    t.start()
    t.join()


def _start(agent: WiredAgent, c: Controller) -> asyncio.Task[None]:
    agent.wire(c)
    inf = agent.informers["Service"]
    _from_thread(lambda: (inf._enqueue(("begin",)), inf._enqueue(("end", "1"))))
    return asyncio.get_running_loop().create_task(c.run())


def test_an_event_wakes_the_controller_on_a_store_that_already_holds_it():
    async def main():
        agent = WiredAgent(asyncio.get_running_loop(), ["Service"])
        c = Watching(agent)
        task = _start(agent, c)
        await _until(lambda: c.synced)
        inf = agent.informers["Service"]
        # A burst from the watch thread: the controller must see the last address, and
        # report the last version, however the loop interleaves its task with the flushes.
        _from_thread(lambda: [inf._on_watch_line(_line(
            "MODIFIED" if i else "ADDED", _svc("a", f"10.1.0.{i + 1}", f"rv-{10 + i}")))
            for i in range(50)])
        await _until(lambda: c.applied_resource_versions == {"Service": "rv-59"})
        task.cancel()
        return c.seen

    seen = asyncio.run(main())
    assert seen[-1] == ("default/a", "10.1.0.50")
    # every sync saw an address the store held no earlier than the event that woke it
    assert all(ip for _, ip in seen)


def test_an_idle_controller_sleeps_until_its_resync_deadline():
    async def main():
        agent = WiredAgent(asyncio.get_running_loop(), ["Service"])
        c = Watching(agent)
        task = _start(agent, c)
        await _until(lambda: c.synced)
        await asyncio.sleep(0.3)
        waits = list(c.waits)
        task.cancel()
        return waits

    waits = asyncio.run(main())
    # one wait before the first sync (already woken), then one long wait: no polling
    assert len(waits) == 2
    assert waits[-1] is not None and waits[-1] > 3000


def test_the_resync_deadline_wakes_the_controller_for_a_full_sync():
    async def main():
        agent = WiredAgent(asyncio.get_running_loop(), ["Service"])
        c = Watching(agent)
        c.resync_period = 0.05
        calls: list[object] = []
        sync = c.sync

        async def recording(keys):
            calls.append(keys)
            await sync(keys)

        c.sync = recording  # type: ignore[method-assign]
        task = _start(agent, c)
        await _until(lambda: len(calls) >= 3)
        task.cancel()
        return calls

    assert asyncio.run(main())[:3] == [None, None, None]


def test_an_idle_controller_reports_a_bookmark_without_waking():
    async def main():
        agent = WiredAgent(asyncio.get_running_loop(), ["Service"])
        c = Watching(agent)
        task = _start(agent, c)
        await _until(lambda: c.synced)
        waits = len(c.waits)
        inf = agent.informers["Service"]
        _from_thread(lambda: inf._on_watch_line(
            _line("BOOKMARK", {"metadata": {"resourceVersion": "0077x"}})))
        await _until(lambda: c.applied_resource_versions == {"Service": "0077x"})
        task.cancel()
        return waits, len(c.waits)

    before, after = asyncio.run(main())
    assert before == after


def test_the_wait_returns_at_once_when_keys_are_already_dirty():
    async def main():
        q = WorkQueue()
        q.add("a/b")
        await asyncio.wait_for(q.wait(None), 1.0)
        return q.take()

    assert asyncio.run(main()) == frozenset({"a/b"})


def _by_ip(rec: Record) -> tuple[str, ...]:
    return tuple(rec.cluster_ips) if isinstance(rec, Service) else ()


def _other(rec: Record) -> tuple[str, ...]:
    return ()


class Indexed(Controller):
    name = "indexed"
    kinds = ("Service",)
    indexes = {"Service": {"ip": _by_ip}}


class Clashing(Controller):
    name = "clashing"
    kinds = ("Service",)
    indexes = {"Service": {"ip": _other}}


def _agent() -> Agent:
    return Agent.from_flags(parse(["--hostname-override", "n1"]), plugins.new_manager(), [])


def test_a_controller_gets_the_indexes_it_declares():
    agent = _agent()
    Indexed(agent)
    Indexed(agent)  # the same declaration twice is one index
    store = agent.store("Service")
    rec = KINDS["Service"].decode(_svc("a", "10.1.0.7", "3"))
    store.put(rec.key, rec)
    assert [r.key for r in store.by_index("ip", "10.1.0.7")] == ["default/a"]


def test_two_controllers_cannot_define_one_index_two_ways():
    agent = _agent()
    Indexed(agent)
    with pytest.raises(ValueError, match="index 'ip' of Service"):
        Clashing(agent)


def test_the_core_defines_no_index_of_its_own():
    agent = _agent()
    assert not agent.store("EndpointSlice")._index_funcs
