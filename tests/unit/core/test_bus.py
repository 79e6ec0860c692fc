from kube_router.bus import Bus
from kube_router.kube.events import Event
from kube_router.kube.events import EventType


def _event(key: str, kind: str = "Service") -> Event:
    return Event(kind=kind, type=EventType.ADDED, key=key, new=None, old=None)


def test_every_subscriber_of_a_kind_gets_every_event_in_order_within_publish():
    bus = Bus()
    a, b = [], []
    bus.subscribe("Service", lambda e: a.append(e.key))
    bus.subscribe("Service", lambda e: b.append(e.key))
    for k in ("x/1", "x/2", "x/3"):
        bus.publish(_event(k))
        # no queue between: the subscriber has the event when publish returns
        assert a[-1] == b[-1] == k
    assert a == b == ["x/1", "x/2", "x/3"]


def test_events_reach_only_subscribers_of_their_kind():
    bus = Bus()
    got = []
    bus.subscribe("Pod", lambda e: got.append(e.key))
    bus.publish(_event("x/svc", kind="Service"))
    bus.publish(_event("x/pod", kind="Pod"))
    assert got == ["x/pod"]


def test_a_failing_subscriber_does_not_stop_the_others_or_its_own_later_events():
    bus = Bus()
    good, bad_seen = [], []

    def bad(e):
        bad_seen.append(e.key)
        raise RuntimeError("boom")

    bus.subscribe("Service", bad, name="bad")
    bus.subscribe("Service", lambda e: good.append(e.key), name="good")
    bus.publish(_event("x/1"))
    bus.publish(_event("x/2"))
    assert good == ["x/1", "x/2"]
    assert bad_seen == ["x/1", "x/2"]


def test_publish_counts_events_by_kind():
    bus = Bus()
    bus.publish(_event("x/1"))
    bus.publish(_event("x/2", kind="Pod"))
    bus.publish(_event("x/3"))
    assert bus.published == {"Service": 2, "Pod": 1}
