"""The informer's own logic, without a server: parsing watch lines, handing batches to the
loop, and turning a list into exactly the differences against the store."""

from __future__ import annotations

import asyncio
import io
import logging
import threading

import orjson
import pytest
import urllib3

from kube_router.kube import informer as informer_mod
from kube_router.kube.events import Event
from kube_router.kube.events import EventType
from kube_router.kube.informer import Informer
from kube_router.kube.kinds import KINDS
from kube_router.kube.store import Store


def _svc(name: str, ip: str, rv: str = "1", ns: str = "default") -> dict:
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": rv},
            "spec": {"clusterIP": ip, "ports": [{"port": 80}]}}


def _make(loop: asyncio.AbstractEventLoop) -> tuple[Informer, list[Event]]:
    events: list[Event] = []
    inf = Informer(KINDS["Service"], None, Store("Service"), events.append,  # type: ignore[arg-type]
                   loop=loop)
    return inf, events


def _in_thread(fn) -> None:
    """Run the thread-side calls off the loop, as the informer's own thread does."""
    t = threading.Thread(target=fn)
    t.start()
    t.join()


async def _settle(inf: Informer) -> None:
    for _ in range(1000):
        await asyncio.sleep(0)
        if not inf._ops and not inf._flush_scheduled:
            return
    raise AssertionError("operations never drained")


def _list(inf: Informer, items: list[dict], rv: str) -> None:
    inf._enqueue(("begin",))
    inf._enqueue_records(items, inf._enqueue)
    inf._received_rv = rv
    inf._enqueue(("end", rv))


def test_first_list_fills_store_publishes_added_and_sets_synced() -> None:
    async def main() -> None:
        inf, events = _make(asyncio.get_running_loop())
        _in_thread(lambda: _list(inf, [_svc("a", "10.1.0.1"), _svc("b", "10.1.0.2")], "7"))
        await asyncio.wait_for(inf.synced.wait(), 5)
        assert sorted(inf.store.keys()) == ["default/a", "default/b"]
        assert [(e.type, e.key) for e in events] == [
            (EventType.ADDED, "default/a"), (EventType.ADDED, "default/b")]
        assert inf.resource_version == "7"

    asyncio.run(main())


def test_relist_publishes_exactly_the_differences() -> None:
    async def main() -> None:
        inf, events = _make(asyncio.get_running_loop())
        _in_thread(lambda: _list(inf, [_svc("same", "10.1.0.1"), _svc("changed", "10.1.0.2"),
                                       _svc("gone", "10.1.0.3")], "7"))
        await _settle(inf)
        events.clear()
        _in_thread(lambda: _list(inf, [_svc("same", "10.1.0.1", rv="20"),
                                       _svc("changed", "10.1.0.99", rv="21"),
                                       _svc("new", "10.1.0.4", rv="22")], "22"))
        await _settle(inf)
        got = {(e.type, e.key) for e in events}
        assert got == {(EventType.MODIFIED, "default/changed"), (EventType.ADDED, "default/new"),
                       (EventType.DELETED, "default/gone")}
        assert len(events) == 3
        deleted = next(e for e in events if e.type is EventType.DELETED)
        assert deleted.new is None and deleted.old is not None
        modified = next(e for e in events if e.type is EventType.MODIFIED)
        assert modified.old.cluster_ips == ("10.1.0.2",)
        assert modified.new.cluster_ips == ("10.1.0.99",)
        assert sorted(inf.store.keys()) == ["default/changed", "default/new", "default/same"]
        # the unchanged record is replaced silently so its resourceVersion is current
        assert inf.store.get("default/same").meta.resource_version == "20"
        assert inf.resource_version == "22"

    asyncio.run(main())


def _line(etype: str, obj: dict) -> bytes:
    return orjson.dumps({"type": etype, "object": obj})


def test_watch_lines_update_store_in_order_and_drop_unchanged_modified() -> None:
    async def main() -> None:
        inf, events = _make(asyncio.get_running_loop())
        _in_thread(lambda: _list(inf, [], "1"))
        await _settle(inf)

        def feed() -> None:
            inf._on_watch_line(_line("ADDED", _svc("a", "10.1.0.1", rv="2")))
            inf._on_watch_line(_line("MODIFIED", _svc("a", "10.1.0.5", rv="3")))
            inf._on_watch_line(_line("MODIFIED", _svc("a", "10.1.0.5", rv="4")))  # no change
            inf._on_watch_line(_line("BOOKMARK", {"metadata": {"resourceVersion": "9"}}))
            inf._on_watch_line(_line("DELETED", _svc("a", "10.1.0.5", rv="10")))

        _in_thread(feed)
        await _settle(inf)
        assert [(e.type, e.key) for e in events] == [
            (EventType.ADDED, "default/a"), (EventType.MODIFIED, "default/a"),
            (EventType.DELETED, "default/a")]
        assert events[1].old.cluster_ips == ("10.1.0.1",)
        assert "default/a" not in inf.store
        assert inf.resource_version == "10"

    asyncio.run(main())


def test_unchanged_modified_still_advances_resource_version() -> None:
    async def main() -> None:
        inf, events = _make(asyncio.get_running_loop())
        _in_thread(lambda: _list(inf, [_svc("a", "10.1.0.1", rv="2")], "2"))
        await _settle(inf)
        events.clear()
        _in_thread(lambda: inf._on_watch_line(_line("MODIFIED", _svc("a", "10.1.0.1", rv="5"))))
        await _settle(inf)
        assert events == []
        assert inf.resource_version == "5"

    asyncio.run(main())


def test_watch_error_410_asks_for_a_relist_and_other_errors_raise() -> None:
    inf, _ = _make(asyncio.new_event_loop())
    with pytest.raises(informer_mod._Gone):
        inf._on_watch_line(_line("ERROR", {"kind": "Status", "code": 410, "reason": "Expired",
                                           "message": "too old resource version"}))
    with pytest.raises(informer_mod._ApiStatusError, match="code=500"):
        inf._on_watch_line(_line("ERROR", {"kind": "Status", "code": 500, "message": "boom"}))
    with pytest.raises(ConnectionError, match="malformed"):
        inf._on_watch_line(b"{not json")


def test_undecodable_object_is_skipped_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        inf, events = _make(asyncio.get_running_loop())
        bad = {"metadata": {"name": "bad", "namespace": "prod", "resourceVersion": "3"},
               "spec": {"ports": [{"port": "eighty"}]}}
        _in_thread(lambda: _list(inf, [_svc("good", "10.1.0.1"), bad], "3"))
        await _settle(inf)
        assert inf.store.keys() == ["default/good"]
        assert [e.key for e in events] == ["default/good"]

    with caplog.at_level(logging.WARNING, logger="kube_router.kube.informer"):
        asyncio.run(main())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "kind=Service" in warnings[0] and "object=prod/bad" in warnings[0]
    assert "spec.ports[0].port" in warnings[0]


def test_big_list_is_handed_over_in_batches_not_per_object() -> None:
    async def main() -> int:
        loop = asyncio.get_running_loop()
        inf, events = _make(loop)
        calls = 0
        flush = inf._flush

        def counting_flush() -> None:
            nonlocal calls
            calls += 1
            flush()

        inf._flush = counting_flush  # type: ignore[method-assign]
        items = [_svc(f"s{i}", f"10.1.{i // 250}.{i % 250}") for i in range(10_000)]
        _in_thread(lambda: _list(inf, items, "100"))
        await asyncio.wait_for(inf.synced.wait(), 10)
        assert len(inf.store) == len(events) == 10_000
        return calls

    calls = asyncio.run(main())
    assert calls <= 20  # 10,000 objects in slices of APPLY_SLICE, not one callback each


def test_lines_are_split_across_reads() -> None:
    payload = b'{"a":1}\n{"bb":22}\n\n{"c":3}'
    # A real urllib3 response over a byte stream; read1 returns what is available.
    resp = urllib3.HTTPResponse(body=io.BufferedReader(io.BytesIO(payload), buffer_size=4),
                                preload_content=False)
    assert list(Informer._lines(resp)) == [b'{"a":1}', b'{"bb":22}', b'{"c":3}']


def test_deletion_of_an_undecodable_object_still_removes_it() -> None:
    async def main() -> None:
        inf, events = _make(asyncio.get_running_loop())
        _in_thread(lambda: _list(inf, [_svc("a", "10.1.0.1", rv="2")], "2"))
        await _settle(inf)
        bad = _svc("a", "10.1.0.1", rv="3")
        bad["spec"]["ports"] = [{"port": None}]

        def feed() -> None:
            inf._on_watch_line(_line("MODIFIED", bad))  # skipped: the store keeps the old one
            inf._on_watch_line(_line("DELETED", {**bad, "metadata": {
                **bad["metadata"], "resourceVersion": "4"}}))

        _in_thread(feed)
        await _settle(inf)
        assert [(e.type, e.key) for e in events] == [
            (EventType.ADDED, "default/a"), (EventType.DELETED, "default/a")]
        assert len(inf.store) == 0
        assert inf.resource_version == "4"

    asyncio.run(main())
