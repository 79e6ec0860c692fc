"""The informer against the lab's embedded API server, through the official client's
connection machinery: lists, live watches, cut streams, 410 Gone and restarts."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

import pytest

from kube_router import plugins
from kube_router.agent import Agent
from kube_router.kube.backoff import BackoffPolicy
from kube_router.kube.client import load_client
from kube_router.kube.events import Event
from kube_router.kube.events import EventType
from kube_router.kube.informer import Informer
from kube_router.kube.kinds import KINDS
from kube_router.kube.store import Store
from kube_router.metrics import Metrics
from kube_router.settings import parse

apiserver = pytest.importorskip("kube_router_lab.apiserver")
ApiServer = apiserver.ApiServer
ApiStore = apiserver.ApiStore

TIMEOUT = 15.0


def svc(name: str, ip: str, *, ns: str = "default", port: int | str = 80, **spec: object) -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": [{"port": port}], **spec}}


class Harness:
    """One ApiServer on loopback and informers feeding stores on this test's loop."""

    def __init__(self, tmp: Path) -> None:
        self.store = ApiStore()
        self.server = ApiServer(self.store, "127.0.0.1", 0, bookmark_interval=0.2)
        self.server.start()
        self.kubeconfig = self.server.write_kubeconfig(tmp / "kubeconfig")
        self.informers: list[Informer] = []

    def informer(self, kind: str = "Service", **kw: object) -> tuple[Informer, list[Event]]:
        events: list[Event] = []
        inf = Informer(KINDS[kind], load_client(str(self.kubeconfig), None), Store(kind),
                       events.append, loop=asyncio.get_running_loop(), **kw)
        self.informers.append(inf)
        inf.start()
        return inf, events

    def close(self) -> None:
        for inf in self.informers:
            inf.stop()
        self.server.stop()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    yield h
    h.close()


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


async def until(cond: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def caught_up(inf: Informer, store: ApiStore) -> None:
    """Wait until the informer has applied everything the API store holds now (the
    store that issued the versions orders them; the informer only repeats them)."""
    target = store.resource_version()
    await until(lambda: inf.resource_version and store.placed(
                    inf.kind.name, inf.resource_version, target),
                f"{inf.kind.name} informer at rv {target} (is {inf.resource_version!r})")


def snapshot(inf: Informer) -> dict[str, object]:
    return {r.key: r for r in inf.store}


def test_initial_list_fills_store_and_sets_synced(lab: Harness) -> None:
    for i in range(3):
        lab.store.create(svc(f"s{i}", f"10.1.0.{i + 1}"))

    async def main() -> None:
        inf, events = lab.informer()
        await asyncio.wait_for(inf.synced.wait(), TIMEOUT)
        assert sorted(inf.store.keys()) == ["default/s0", "default/s1", "default/s2"]
        assert [(e.type, e.kind) for e in events] == [(EventType.ADDED, "Service")] * 3
        assert inf.store.get("default/s1").cluster_ips == ("10.1.0.2",)
        assert inf.resource_version == lab.store.resource_version()
        # the collector is held off only while a list is parsed
        await until(gc.isenabled, "the garbage collector to be enabled again")

    run(main)


def test_live_create_update_delete_reach_store_and_publish_in_order(lab: Harness) -> None:
    async def main() -> None:
        inf, events = lab.informer()
        await asyncio.wait_for(inf.synced.wait(), TIMEOUT)
        assert events == []
        lab.store.create(svc("web", "10.1.0.10"))
        await until(lambda: "default/web" in inf.store, "the create")
        obj = lab.store.get("Service", "default", "web")
        obj["spec"]["ports"] = [{"port": 8080}]
        lab.store.update(obj)
        lab.store.delete("Service", "default", "web")
        await caught_up(inf, lab.store)
        assert [(e.type, e.key) for e in events] == [
            (EventType.ADDED, "default/web"), (EventType.MODIFIED, "default/web"),
            (EventType.DELETED, "default/web")]
        assert events[1].old.ports[0].port == 80 and events[1].new.ports[0].port == 8080
        assert events[2].old.ports[0].port == 8080 and events[2].new is None
        assert "default/web" not in inf.store

    run(main)


def test_unchanged_modified_is_dropped_but_advances_resource_version(lab: Harness) -> None:
    lab.store.create(svc("web", "10.1.0.10"))

    async def main() -> None:
        inf, events = lab.informer()
        await asyncio.wait_for(inf.synced.wait(), TIMEOUT)
        events.clear()
        # A field no record holds: the server bumps resourceVersion, nothing we read changed.
        lab.store.patch("Service", "default", "web", {"spec": {"publishNotReadyAddresses": True}})
        await caught_up(inf, lab.store)
        assert events == []
        assert inf.store.get("default/web").meta.resource_version == \
            lab.store.get("Service", "default", "web")["metadata"]["resourceVersion"]

    run(main)


def test_stream_cut_ends_with_the_same_store_as_a_fresh_list(lab: Harness) -> None:
    for i in range(5):
        lab.store.create(svc(f"s{i}", f"10.1.0.{i + 1}"))
    lab.server.keep_history = True  # a cut stream, not a restarted server

    async def main() -> None:
        inf, _ = lab.informer()
        await asyncio.wait_for(inf.synced.wait(), TIMEOUT)
        lab.store.create(svc("during", "10.1.1.1"))  # may or may not be seen before the cut
        await asyncio.to_thread(lab.server.stop)
        # Changes while the server is away are replayed from the watch history.
        lab.store.delete("Service", "default", "s0")
        lab.store.patch("Service", "default", "s1", {"spec": {"ports": [{"port": 81}]}})
        lab.store.create(svc("later", "10.1.1.2"))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(lab.server.start)
        await caught_up(inf, lab.store)
        assert inf.relists == 0  # resumed, not relisted

        fresh, _ = lab.informer()
        await asyncio.wait_for(fresh.synced.wait(), TIMEOUT)
        assert snapshot(inf) == snapshot(fresh)
        assert "default/s0" not in inf.store and "default/later" in inf.store
        assert inf.store.get("default/s1").ports[0].port == 81

    run(main)


def test_410_gone_relists_and_publishes_exactly_the_differences(lab: Harness) -> None:
    for name in ("same", "changed", "gone"):
        lab.store.create(svc(name, "10.1.0.1" if name == "same" else "10.1.0.2"))
    metrics = Metrics()

    async def main() -> None:
        inf, events = lab.informer(metrics=metrics)
        await asyncio.wait_for(inf.synced.wait(), TIMEOUT)
        await caught_up(inf, lab.store)
        await asyncio.to_thread(lab.server.stop)
        events.clear()
        lab.store.delete("Service", "default", "gone")
        lab.store.patch("Service", "default", "changed", {"spec": {"clusterIP": "10.1.0.9"}})
        lab.store.create(svc("new", "10.1.0.3"))
        lab.store.compact()  # the history the informer would resume from is gone
        await asyncio.to_thread(lab.server.start)
        await caught_up(inf, lab.store)
        await until(lambda: inf.relists == 1, "one relist")
        assert sorted((e.type.value, e.key) for e in events) == [
            ("ADDED", "default/new"), ("DELETED", "default/gone"),
            ("MODIFIED", "default/changed")]
        assert sorted(inf.store.keys()) == ["default/changed", "default/new", "default/same"]
        assert inf.store.get("default/changed").cluster_ips == ("10.1.0.9",)
        assert metrics.relists.labels("Service")._value.get() == 1

    run(main)


def test_api_server_restart_reconnects_with_backoff_and_clears_error(
        lab: Harness, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        inf, events = lab.informer()
        await asyncio.wait_for(inf.synced.wait(), TIMEOUT)
        await asyncio.to_thread(lab.server.stop)
        await until(lambda: inf.last_error is not None, "a recorded failure")
        await asyncio.sleep(1.0)  # a few failed attempts
        await asyncio.to_thread(lab.server.start)
        lab.store.create(svc("after", "10.1.2.1"))
        await until(lambda: "default/after" in inf.store, "a change made after the restart")
        await until(lambda: inf.last_error is None, "the error to clear")
        assert [e.key for e in events] == ["default/after"]
        # Nothing changed while it was down: the watch resumes at the version the restarted
        # server starts from, no relist.
        assert inf.relists == 0

    with caplog.at_level(logging.WARNING, logger="kube_router.kube.informer"):
        run(main)
    failures = [r.getMessage() for r in caplog.records if "list/watch failed" in r.getMessage()]
    assert failures, "each failure logs one warning"
    assert all("kind=Service" in m and "reason=" in m for m in failures)
    # Backoff doubles from 0.2 s (each pause jittered down to half of it): about a second
    # down allows only a handful of attempts.
    assert len(failures) <= 7
    assert "retry_in=0.1s" in failures[0] or "retry_in=0.2s" in failures[0]



def test_a_long_outage_is_followed_within_seconds_and_logged_sparingly(
        lab: Harness, caplog: pytest.LogCaptureFixture) -> None:
    """However long the server was away, the retry interval stays short: a change made
    as it comes back reaches the store within a few seconds."""
    async def main() -> float:
        inf, _ = lab.informer()
        await asyncio.wait_for(inf.synced.wait(), TIMEOUT)
        await asyncio.to_thread(lab.server.stop)
        await until(lambda: inf.failing_since is not None, "a recorded failure")
        await asyncio.sleep(8.0)  # the backoff would reach 25 s doubling without a cap
        assert inf.last_error is not None
        await asyncio.to_thread(lab.server.start)
        lab.store.create(svc("back", "10.1.2.9"))
        t0 = time.monotonic()
        await until(lambda: "default/back" in inf.store, "a change made on return")
        took = time.monotonic() - t0
        await until(lambda: inf.failing_since is None, "the outage to end")
        return took

    with caplog.at_level(logging.WARNING, logger="kube_router.kube.informer"):
        took = asyncio.run(asyncio.wait_for(main(), 60))
    assert took <= BackoffPolicy().cap + 1.5, took
    failures = [r for r in caplog.records if "list/watch failed" in r.getMessage()]
    # eight seconds of failures, one a second at most: one line, not a line per attempt
    assert len(failures) == 1, [r.getMessage() for r in failures]


def test_readyz_says_why_while_the_api_server_is_away(lab: Harness) -> None:
    async def main() -> None:
        agent = Agent.from_flags(parse(["--hostname-override", "node-x"]),
                                 plugins.new_manager(), [])
        inf, _ = lab.informer()
        agent.informers["Service"] = inf
        agent._stores["Service"] = inf.store
        await asyncio.wait_for(inf.synced.wait(), TIMEOUT)
        state = agent.readiness()
        assert state["ready"] and state["reasons"] == []
        await asyncio.to_thread(lab.server.stop)
        await until(lambda: inf.failing_since is not None, "a recorded failure")
        state = agent.readiness()
        assert not state["ready"]
        assert len(state["reasons"]) == 1
        assert state["reasons"][0].startswith("informer Service: API server unreachable for ")
        assert state["informers"]["Service"]["failingSeconds"] is not None
        await asyncio.to_thread(lab.server.start)
        await until(lambda: agent.readiness()["ready"], "ready again")

    run(main)


def test_undecodable_object_is_skipped_with_a_warning(
        lab: Harness, caplog: pytest.LogCaptureFixture) -> None:
    lab.store.create(svc("good", "10.1.0.1"))
    lab.store.create(svc("bad", "10.1.0.2", ns="prod", port="eighty"))

    async def main() -> None:
        inf, events = lab.informer()
        await asyncio.wait_for(inf.synced.wait(), TIMEOUT)
        assert inf.store.keys() == ["default/good"]
        lab.store.create(svc("bad2", "10.1.0.3", ns="prod", port="ninety"))
        lab.store.create(svc("good2", "10.1.0.4"))
        await caught_up(inf, lab.store)
        assert sorted(inf.store.keys()) == ["default/good", "default/good2"]
        assert [e.key for e in events] == ["default/good", "default/good2"]

    with caplog.at_level(logging.WARNING, logger="kube_router.kube.informer"):
        run(main)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "kind=Service" in warnings[0] and "object=prod/bad " in warnings[0]
    assert "object=prod/bad2 " in warnings[1]
    assert all("spec.ports[0].port" in w for w in warnings)


def test_bookmarks_advance_resource_version_for_other_kinds_changes(lab: Harness) -> None:
    async def main() -> None:
        inf, events = lab.informer()
        await asyncio.wait_for(inf.synced.wait(), TIMEOUT)
        lab.store.create({"apiVersion": "v1", "kind": "Namespace",
                          "metadata": {"name": "elsewhere"}})
        await caught_up(inf, lab.store)  # only a BOOKMARK can tell it about that version
        assert events == []

    run(main)


def test_stop_ends_a_quiet_watch_promptly(lab: Harness) -> None:
    async def main() -> None:
        inf, _ = lab.informer(watch_timeout=300)
        await asyncio.wait_for(inf.synced.wait(), TIMEOUT)
        await asyncio.sleep(0.3)
        started = time.monotonic()
        await asyncio.to_thread(inf.stop)
        assert time.monotonic() - started < 2.0
        assert inf._thread is None

    run(main)


def test_paged_list_fills_store_page_by_page(lab: Harness) -> None:
    for i in range(7):
        lab.store.create(svc(f"s{i}", f"10.1.0.{i + 1}", ns=f"ns{i % 3}"))

    async def main() -> None:
        inf, events = lab.informer(page_size=2)
        await asyncio.wait_for(inf.synced.wait(), TIMEOUT)
        assert len(inf.store) == len(events) == 7
        assert inf.resource_version == lab.store.resource_version()
        lab.store.create(svc("later", "10.1.1.1"))
        await until(lambda: "default/later" in inf.store, "a change after a paged list")

    run(main)


def test_other_kinds_endpointslices_and_cluster_scoped_nodes(lab: Harness) -> None:
    lab.store.create({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-x1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.2.0.5"], "nodeName": "node-1"}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    })
    lab.store.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"},
                      "spec": {"podCIDR": "10.2.1.0/24"}})

    async def main() -> None:
        slices, _ = lab.informer("EndpointSlice")
        nodes, node_events = lab.informer("Node")
        await asyncio.wait_for(asyncio.gather(slices.synced.wait(), nodes.synced.wait()),
                               TIMEOUT)
        es = slices.store.get("default/web-x1")
        assert es.service_key == "default/web"
        assert es.endpoints[0].ready and es.endpoints[0].addresses == ("10.2.0.5",)
        assert nodes.store.keys() == ["node-1"]
        lab.store.delete("Node", None, "node-1")
        await caught_up(nodes, lab.store)
        assert nodes.store.keys() == []
        assert [(e.type, e.key) for e in node_events] == [
            (EventType.ADDED, "node-1"), (EventType.DELETED, "node-1")]

    run(main)


# -- hardening: what a real API server does to its clients --------------------------------


def test_429_with_retry_after_is_waited_out(lab: Harness) -> None:
    lab.store.create(svc("a", "10.1.0.1"))
    lab.server.inject(429, count=1, retry_after=2, when=lambda m, p, q: "watch" not in q)

    async def main() -> None:
        started = time.monotonic()
        inf, _ = lab.informer()
        await until(lambda: inf.last_error is not None, "the 429 recorded")
        assert "code=429" in (inf.last_error or "")
        await asyncio.wait_for(inf.synced.wait(), TIMEOUT)
        # Without Retry-After the first retry would come after 0.1-0.2 s.
        assert time.monotonic() - started >= 1.9

    run(main)


def test_503_with_retry_after_is_waited_out_on_a_watch(lab: Harness) -> None:
    async def main() -> None:
        inf, events = lab.informer()
        await asyncio.wait_for(inf.synced.wait(), TIMEOUT)
        lab.server.inject(503, count=1, retry_after=2, when=lambda m, p, q: "watch" in q)
        await asyncio.to_thread(lab.server.stop)  # cut the watch: the next one gets the 503
        await asyncio.to_thread(lab.server.start)
        await until(lambda: "code=503" in (inf.last_error or ""), "the 503 recorded")
        refused = time.monotonic()
        lab.store.create(svc("later", "10.1.0.2"))
        await until(lambda: "default/later" in inf.store, "the change after the 503")
        assert time.monotonic() - refused >= 1.8
        assert [e.key for e in events] == ["default/later"]

    run(main)


def test_a_paged_list_that_fails_half_way_publishes_nothing(lab: Harness) -> None:
    for i in range(25):
        lab.store.create(svc(f"s{i:02d}", f"10.1.0.{i + 1}"))
    # The second page is refused once, with a pause long enough to look at the informer.
    lab.server.inject(503, count=1, retry_after=2, when=lambda m, p, q: bool(q.get("continue")))

    async def main() -> None:
        inf, events = lab.informer(page_size=10)
        await until(lambda: "code=503" in (inf.last_error or ""), "the failed page")
        await asyncio.sleep(0.5)
        assert events == [] and len(inf.store) == 0 and not inf.synced.is_set()
        await asyncio.wait_for(inf.synced.wait(), TIMEOUT)
        assert len(events) == 25 and {e.type for e in events} == {EventType.ADDED}

    run(main)


def test_watch_timeout_is_drawn_between_5_and_10_minutes(lab: Harness) -> None:
    async def main() -> None:
        for _ in range(3):
            lab.informer()
        await until(lambda: sum(1 for _, _, q in lab.server.requests if "watch" in q) >= 3,
                    "three watches")

    run(main)
    timeouts = [int(q["timeoutSeconds"]) for _, _, q in lab.server.requests if "watch" in q]
    assert all(300 <= t <= 600 for t in timeouts), timeouts
    assert len(set(timeouts)) > 1, timeouts  # not all agents' watches end together


def test_the_watch_connection_has_tcp_keepalive(lab: Harness) -> None:
    import socket

    async def main() -> None:
        inf, _ = lab.informer()
        await asyncio.wait_for(inf.synced.wait(), TIMEOUT)
        await until(lambda: inf._response is not None, "an open watch")
        sock = inf._response.connection.sock  # type: ignore[union-attr]
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        idle = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
        interval = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)
        count = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)
        # A peer gone without a word is given up on within a minute.
        assert idle + interval * count <= 60

    run(main)


def test_the_first_list_reads_the_watch_cache_and_a_relist_does_not(lab: Harness) -> None:
    lab.store.create(svc("a", "10.1.0.1"))

    async def main() -> None:
        inf, _ = lab.informer()
        await asyncio.wait_for(inf.synced.wait(), TIMEOUT)
        await asyncio.to_thread(lab.server.stop)
        lab.store.create(svc("b", "10.1.0.2"))
        lab.store.compact()
        await asyncio.to_thread(lab.server.start)
        await until(lambda: inf.relists == 1 and "default/b" in inf.store, "the relist")

    run(main)
    lists = [q for _, _, q in lab.server.requests if "watch" not in q]
    assert lists[0].get("resourceVersion") == "0"
    assert lists[-1].get("resourceVersion") is None


def test_an_object_deleted_and_created_again_meanwhile_is_two_changes(lab: Harness) -> None:
    lab.store.create(svc("again", "10.1.0.1"))

    async def main() -> None:
        inf, events = lab.informer()
        await asyncio.wait_for(inf.synced.wait(), TIMEOUT)
        old_uid = inf.store.get("default/again").meta.uid
        await asyncio.to_thread(lab.server.stop)
        events.clear()
        lab.store.delete("Service", "default", "again")
        lab.store.create(svc("again", "10.1.0.1"))  # the same spec, a new UID
        lab.store.compact()
        await asyncio.to_thread(lab.server.start)
        await until(lambda: inf.relists == 1 and len(events) >= 2, "the relist")
        assert [(e.type, e.key) for e in events] == [
            (EventType.DELETED, "default/again"), (EventType.ADDED, "default/again")]
        assert events[0].old.meta.uid == old_uid
        assert events[1].new.meta.uid != old_uid

    run(main)
