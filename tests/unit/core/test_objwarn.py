import logging

from kube_router.objwarn import ObjectWarnings


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_object_and_problem_until_forgotten(caplog):
    log = logging.getLogger("test.objwarn")
    w = ObjectWarnings(log, clock=Clock())
    with caplog.at_level(logging.WARNING, logger="test.objwarn"):
        assert w.warn("ns/a", "scheduler=xx", "bad scheduler service=%s", "ns/a")
        assert not w.warn("ns/a", "scheduler=xx", "bad scheduler service=%s", "ns/a")
        # a different problem with the same object is news; both stay known
        assert w.warn("ns/a", "scheduler=yy", "bad scheduler service=%s", "ns/a")
        assert not w.warn("ns/a", "scheduler=xx", "bad scheduler service=%s", "ns/a")
        assert not w.warn("ns/a", "scheduler=yy", "bad scheduler service=%s", "ns/a")
        w.forget("ns/a")
        assert w.warn("ns/a", "scheduler=yy", "bad scheduler service=%s", "ns/a")
    assert [r.getMessage() for r in caplog.records] == ["bad scheduler service=ns/a"] * 3


def test_a_flood_is_rate_limited_and_what_was_held_back_is_summarised(caplog):
    clock = Clock()
    log = logging.getLogger("test.objwarn")
    w = ObjectWarnings(log, rate=10, burst=50, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.objwarn"):
        logged = sum(w.warn(f"ns/o{i}", "bad", "bad object=%s", f"ns/o{i}")
                     for i in range(1000))
        assert logged == 50 and w.suppressed == 950
        clock.now += 1.0
        w.flush()
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 51
    assert msgs[-1] == "bad objects: 950 more warnings held back by the rate limit"
    assert w.suppressed == 0 and w.suppressed_total == 950
    # the same objects again (the next resync) log nothing
    with caplog.at_level(logging.WARNING, logger="test.objwarn"):
        caplog.clear()
        clock.now += 100
        assert not any(w.warn(f"ns/o{i}", "bad", "x") for i in range(1000))
        assert caplog.records == []


def test_memory_is_bounded_and_forget_missing_drops_gone_objects():
    w = ObjectWarnings(logging.getLogger("test.objwarn"), clock=Clock())
    for i in range(10):
        w.warn(f"ns/o{i}", "bad", "x")
    w.forget_missing(lambda k: k in {"ns/o1", "ns/o2"})
    assert len(w) == 2


def test_a_deleted_object_is_forgotten_by_the_instances_keying_its_kind():
    from kube_router.kube.events import Event
    from kube_router.kube.events import EventType
    from kube_router.objwarn import forget_deleted

    log = logging.getLogger("test.objwarn")
    services = ObjectWarnings(log, clock=Clock(), kind="Service")
    nodes = ObjectWarnings(log, clock=Clock(), kind="Node")
    untyped = ObjectWarnings(log, clock=Clock())
    for w in (services, nodes, untyped):
        w.warn("ns/a", "bad", "x")
        w.warn("ns/b", "bad", "x")
    forget_deleted(Event("Service", EventType.MODIFIED, "ns/a", None, None))
    assert len(services) == 2, "a change is not a deletion"
    forget_deleted(Event("Service", EventType.DELETED, "ns/a", None, None))
    assert (len(services), len(nodes), len(untyped)) == (1, 2, 2)
    assert services.warn("ns/a", "bad", "x"), "it is news again once it was deleted"
