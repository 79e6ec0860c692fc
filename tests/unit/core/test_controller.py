import asyncio
import types

import pytest

from kube_router.controller import Controller
from kube_router.controller import WorkQueue
from kube_router.errors import TemporaryError
from kube_router.kube.events import Event
from kube_router.kube.events import EventType
from kube_router.metrics import Metrics


class FakeInformer:
    def __init__(self, rv: str) -> None:
        self.resource_version = rv
        self.synced = asyncio.Event()


class MiniAgent:
    """Just the part of Agent a controller's loop uses."""

    def __init__(self, kinds) -> None:
        self.metrics = Metrics()
        self.informers = {k: FakeInformer("10") for k in kinds}

    async def wait_synced(self, kinds):
        await asyncio.gather(*(self.informers[k].synced.wait() for k in kinds))

    def resource_versions(self, kinds):
        return {k: self.informers[k].resource_version for k in kinds}


class Recording(Controller):
    name = "recording"
    kinds = ("Service",)
    resync_period = 3600

    def __init__(self, agent, fail_times=0):
        super().__init__(agent)
        self.calls = []
        self.fail_times = fail_times
        self.temporary_delay = 0.01

    async def sync(self, keys):
        self.calls.append(keys)
        if self.fail_times:
            self.fail_times -= 1
            raise TemporaryError("kernel busy", delay=self.temporary_delay)


def _ev(key):
    return Event(kind="Service", type=EventType.MODIFIED, key=key, new=None, old=None)


async def _until(cond, timeout=2.0):
    for _ in range(int(timeout / 0.005)):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


def test_work_queue_coalesces_repeated_keys():
    async def main():
        q = WorkQueue()
        for _ in range(1000):
            q.add("default/myip")
        q.add("default/other")
        return q.take()

    assert asyncio.run(main()) == frozenset({"default/myip", "default/other"})


def test_nothing_is_synced_before_the_caches_are_complete():
    async def main():
        agent = MiniAgent(["Service"])
        c = Recording(agent)
        task = asyncio.create_task(c.run())
        await asyncio.sleep(0.05)
        before = list(c.calls)
        agent.informers["Service"].synced.set()
        await _until(lambda: c.calls)
        task.cancel()
        return before, c.calls

    before, after = asyncio.run(main())
    assert before == []
    assert after[0] is None  # the first sync is a full one


def test_a_burst_of_events_for_one_key_is_one_sync_and_the_version_is_recorded():
    async def main():
        agent = MiniAgent(["Service"])
        agent.informers["Service"].synced.set()
        c = Recording(agent)
        task = asyncio.create_task(c.run())
        await _until(lambda: c.synced)
        agent.informers["Service"].resource_version = "abc"
        for _ in range(1000):
            c.on_event(_ev("default/myip"))
        await _until(lambda: len(c.calls) == 2)
        await asyncio.sleep(0.02)
        task.cancel()
        return c

    c = asyncio.run(main())
    assert c.calls == [None, frozenset({"default/myip"})]
    assert c.applied_resource_versions == {"Service": "abc"}
    assert c.last_error is None


def test_a_failed_sync_is_retried_and_the_error_reported_until_then():
    async def main():
        agent = MiniAgent(["Service"])
        agent.informers["Service"].synced.set()
        c = Recording(agent, fail_times=1)
        task = asyncio.create_task(c.run())
        await _until(lambda: c.last_error is not None)
        error = c.last_error
        await _until(lambda: c.synced)
        task.cancel()
        return error, c

    error, c = asyncio.run(main())
    assert "kernel busy" in error
    assert c.calls == [None, None]
    assert c.last_error is None


@pytest.mark.parametrize("keys", [None, frozenset({"a/b"})])
def test_requeue_keeps_full_or_partial_scope(keys):
    async def main():
        c = Recording(types.SimpleNamespace())
        c._requeue(keys)
        return c.queue.take()

    assert asyncio.run(main()) == keys


def test_an_idle_controller_reports_the_version_its_informers_reached_by_bookmark():
    async def main():
        agent = MiniAgent(["Service"])
        agent.informers["Service"].synced.set()
        c = Recording(agent)
        task = asyncio.create_task(c.run())
        await _until(lambda: c.synced)
        # A bookmark, no event; numerically smaller, and newer: versions are opaque.
        agent.informers["Service"].resource_version = "9"
        await _until(lambda: c.applied_resource_versions == {"Service": "9"})
        task.cancel()
        return c.calls

    assert asyncio.run(main()) == [None]  # no sync was needed for that


def test_a_version_is_not_claimed_while_a_failed_sync_waits_for_its_retry():
    async def main():
        agent = MiniAgent(["Service"])
        agent.informers["Service"].synced.set()
        c = Recording(agent)
        # The retry waits long enough for the version to be read meanwhile, however slowly
        # this machine schedules the test.
        c.temporary_delay = 0.5
        task = asyncio.create_task(c.run())
        await _until(lambda: c.synced)
        c.fail_times = 1
        agent.informers["Service"].resource_version = "9"
        c.on_event(_ev("default/myip"))
        await _until(lambda: c.last_error is not None)
        await asyncio.sleep(0.05)  # well before the retry
        claimed_meanwhile = c.applied_resource_versions
        await _until(lambda: c.applied_resource_versions == {"Service": "9"})
        task.cancel()
        return claimed_meanwhile

    assert asyncio.run(main()) == {"Service": "10"}


class TwoKinds(Recording):
    kinds = ("Service", "EndpointSlice")


def test_each_kind_reports_its_own_version_as_the_server_gave_it():
    async def main():
        agent = MiniAgent(["Service", "EndpointSlice"])
        for inf in agent.informers.values():
            inf.synced.set()
        c = TwoKinds(agent)
        task = asyncio.create_task(c.run())
        await _until(lambda: c.synced)
        # A server may number each kind apart, or not with numbers at all.
        agent.informers["Service"].resource_version = "b7f3"
        agent.informers["EndpointSlice"].resource_version = "3"
        c.on_event(_ev("default/myip"))
        await _until(lambda: len(c.calls) == 2)
        await _until(lambda: c.idle())
        task.cancel()
        return c.applied_resource_versions

    assert asyncio.run(main()) == {"Service": "b7f3", "EndpointSlice": "3"}


def test_readyz_reports_each_kind_apart_with_versions_that_are_not_numbers():
    from kube_router import plugins
    from kube_router.agent import Agent
    from kube_router.settings import parse

    async def main():
        agent = Agent.from_flags(parse(["--hostname-override", "node-x"]),
                                 plugins.new_manager(), [])
        for kind, rv in (("Service", "svc.41"), ("EndpointSlice", "12")):
            agent.store(kind)
            inf = FakeInformer(rv)
            inf.synced.set()
            inf.failing_since, inf.relists, inf.last_error = None, 0, None
            agent.informers[kind] = inf
        c = TwoKinds(agent)
        agent.controllers.append(c)
        task = asyncio.create_task(c.run())
        await _until(lambda: c.synced)
        task.cancel()
        return agent.readiness()

    state = asyncio.run(main())
    assert state["ready"]
    reported = state["controllers"]["recording"]
    assert reported["resourceVersions"] == {"Service": "svc.41", "EndpointSlice": "12"}
    assert "resourceVersion" not in reported  # no one version stands for several kinds
    assert state["informers"]["Service"]["resourceVersion"] == "svc.41"
