import asyncio

from kube_router.bus import Bus
from kube_router.kube.events import Event
from kube_router.kube.events import EventType


def _event(key: str, kind: str = "Service") -> Event:
    return Event(kind=kind, type=EventType.ADDED, key=key, new=None, old=None)


def test_every_subscriber_of_a_kind_gets_every_event_in_order():
    async def main():
        bus = Bus()
        a, b = [], []
        bus.subscribe("Service", lambda e: a.append(e.key))
        bus.subscribe("Service", lambda e: b.append(e.key))
        bus.start()
        for k in ("x/1", "x/2", "x/3"):
            bus.publish(_event(k))
        await bus.drain()
        await bus.stop()
        return a, b

    a, b = asyncio.run(main())
    assert a == b == ["x/1", "x/2", "x/3"]


def test_events_reach_only_subscribers_of_their_kind():
    async def main():
        bus = Bus()
        got = []
        bus.subscribe("Pod", lambda e: got.append(e.key))
        bus.start()
        bus.publish(_event("x/svc", kind="Service"))
        bus.publish(_event("x/pod", kind="Pod"))
        await bus.drain()
        await bus.stop()
        return got

    assert asyncio.run(main()) == ["x/pod"]


def test_a_failing_subscriber_does_not_stop_the_others_or_its_own_later_events():
    async def main():
        bus = Bus()
        good, bad_seen = [], []

        def bad(e):
            bad_seen.append(e.key)
            raise RuntimeError("boom")

        bus.subscribe("Service", bad, name="bad")
        bus.subscribe("Service", lambda e: good.append(e.key), name="good")
        bus.start()
        bus.publish(_event("x/1"))
        bus.publish(_event("x/2"))
        await bus.drain()
        await bus.stop()
        return good, bad_seen

    good, bad_seen = asyncio.run(main())
    assert good == ["x/1", "x/2"]
    assert bad_seen == ["x/1", "x/2"]


def test_publish_counts_events_by_kind():
    bus = Bus()
    bus.publish(_event("x/1"))
    bus.publish(_event("x/2", kind="Pod"))
    bus.publish(_event("x/3"))
    assert bus.published == {"Service": 2, "Pod": 1}
