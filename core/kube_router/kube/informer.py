"""List and watch one kind, keep its Store current, publish what changed.

One daemon thread per kind does the network reads and the decoding (raw JSON with orjson
into slim records); the Store is touched and events are published only on the agent's
event loop. The thread hands its results over through one FIFO of operations that the loop
drains in bounded slices, so a list of 50,000 objects costs a few hundred callbacks, not
50,000, and never holds the loop for long.

Recovery rules: a watch that the server ends after its timeout is reopened at once from
the last resourceVersion; a failure (refused connection, cut stream, an error status)
is retried from the same resourceVersion with exponential backoff and jitter, at least
once a second however long the server is away (see ``backoff``; a ``Retry-After`` of a
429 or 503 is waited out first); "410 Gone" means the history is lost,
so the informer lists again, after a jittered pause too (a restarted API server sends it to
every agent at once), and publishes only the differences against its Store. A list that
fails half-way publishes nothing: the pages are held until the last one arrived.

Each watch asks for a timeout drawn between 5 and 10 minutes, so agents started together do
not all reconnect in the same second, and its connection has TCP keepalive on, so a peer
that vanished without closing (a half-open connection) is noticed within a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any
from urllib.parse import urlencode

import orjson
import urllib3

from kube_router import gc_policy
from kube_router.kube.backoff import Backoff
from kube_router.kube.events import Event
from kube_router.kube.events import EventType
from kube_router.kube.kinds import Kind
from kube_router.kube.records import Record
from kube_router.kube.store import Store

if TYPE_CHECKING:
    import kubernetes.client

    from kube_router.metrics import Metrics

log = logging.getLogger(__name__)

#: While failures go on, one warning per kind this often (the first one at once).
FAILURE_LOG_INTERVAL = 30.0
#: The range of watch timeouts asked of the server when none is set (client-go's).
WATCH_TIMEOUT_RANGE = (300.0, 600.0)
#: The pause before a relist after 410 is drawn up to this.
RELIST_JITTER = 1.0
#: A Retry-After longer than this is not believed.
RETRY_AFTER_MAX = 60.0
#: TCP keepalive: first probe after this many idle seconds, then every KEEPALIVE_INTERVAL,
#: giving up after KEEPALIVE_COUNT unanswered: a dead peer is noticed in under 30 s.
KEEPALIVE_IDLE = 15
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 3
CONNECT_TIMEOUT = 10.0
LIST_READ_TIMEOUT = 120.0
#: Records handed to the loop per operation while listing.
LIST_BATCH = 1000
#: Records the loop applies before it yields to other callbacks.
APPLY_SLICE = 2000
#: A watch that ends this close to its timeoutSeconds ended normally.
WATCH_END_SLACK = 2.0


@dataclass
class _ListStats:
    size: int = 0
    pages: int = 0
    fetch: float = 0.0  # waiting for the server and reading its answer
    parse: float = 0.0


_LAST_PAGE = object()


class _ContinueExpired(Exception):
    """A continue token was refused with 410: the list must start over."""


class _Gone(Exception):
    """The server no longer has the history we asked for (HTTP or watch error 410)."""


class _ApiStatusError(Exception):
    def __init__(self, code: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"code={code} message={message}")
        self.code = code
        self.retry_after = retry_after


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (the API server sends whole seconds)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


def keepalive_options() -> list[tuple[int, int, int]]:
    """Socket options for TCP keepalive with probes soon enough to find a dead peer."""
    opts = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
                        ("TCP_KEEPCNT", KEEPALIVE_COUNT)):
        if hasattr(socket, name):
            opts.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    return opts


def enable_keepalive(api: kubernetes.client.ApiClient) -> None:
    """Make every connection the client opens from now on use TCP keepalive."""
    from urllib3.connection import HTTPConnection

    pool = api.rest_client.pool_manager
    wanted = [*HTTPConnection.default_socket_options, *keepalive_options()]
    if pool.connection_pool_kw.get("socket_options") != wanted:
        pool.connection_pool_kw["socket_options"] = wanted
        pool.clear()  # pools made before would keep their connections' options


def object_key(obj: Mapping[str, Any]) -> str:
    md = obj.get("metadata") or {}
    ns, name = md.get("namespace") or "", md.get("name") or "?"
    return f"{ns}/{name}" if ns else name


def _status_message(body: bytes) -> str:
    try:
        doc = orjson.loads(body)
        if isinstance(doc, dict) and doc.get("message"):
            return str(doc["message"])
    except orjson.JSONDecodeError:
        pass
    return body[:200].decode("utf-8", "replace").strip() or "(empty body)"


class Informer:
    """Keep ``store`` equal to the API server's objects of ``kind``.

    ``publish`` receives an :class:`~kube_router.kube.events.Event` for every change, on ``loop``.
    """

    def __init__(
        self,
        kind: Kind,
        api: kubernetes.client.ApiClient,
        store: Store,
        publish: Callable[[Event], None],
        *,
        loop: asyncio.AbstractEventLoop,
        metrics: Metrics | None = None,
        page_size: int = 0,
        watch_timeout: int | None = None,
    ) -> None:
        self.kind = kind
        self.api = api
        self.store = store
        self.publish = publish
        self.loop = loop
        self.metrics = metrics
        self.page_size = page_size
        #: Seconds asked of each watch; None draws one from WATCH_TIMEOUT_RANGE each time.
        self.watch_timeout = watch_timeout
        #: The newest resourceVersion applied to the store (written on the loop only).
        self.resource_version = ""
        self.synced = asyncio.Event()
        self.relists = 0
        self.last_error: str | None = None
        #: time.monotonic() of the first failure of the current outage (None: healthy).
        self.failing_since: float | None = None
        self._failures_unlogged = 0
        self._last_failure_log = 0.0

        self._stopping = threading.Event()
        self.backoff = Backoff()
        self._thread: threading.Thread | None = None
        self._response: urllib3.BaseHTTPResponse | None = None
        self._response_lock = threading.Lock()
        # The newest resourceVersion received (thread side): where a watch resumes.
        self._received_rv = ""
        # Operations for the loop, in the order the server sent them.
        self._ops: deque[tuple[Any, ...]] = deque()
        self._ops_lock = threading.Lock()
        self._flush_scheduled = False
        self._seen: set[str] | None = None  # keys seen by the list being applied

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        enable_keepalive(self.api)
        self._thread = threading.Thread(
            target=self._run, name=f"informer-{self.kind.name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._abort_response()
        if self._thread is not None:
            self._thread.join(timeout=10)
            if self._thread.is_alive():
                log.warning("informer did not stop in time kind=%s", self.kind.name)
            self._thread = None

    # -- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        need_list = True
        relist = False
        while not self._stopping.is_set():
            try:
                if need_list:
                    self._list(relist)
                    need_list, relist = False, False
                    self._reachable()
                self._watch()
            except _Gone as exc:
                if self._stopping.is_set():
                    break
                if need_list:
                    # A list itself cannot be too old: treat it as any other failure.
                    self._failed(_ApiStatusError(410, str(exc)))
                    continue
                # Every client of a restarted server hears this at once: spread the relists.
                pause = random.random() * RELIST_JITTER
                log.info("watch expired, listing again kind=%s reason=%s in=%.1fs",
                         self.kind.name, exc, pause)
                self._stopping.wait(pause)
                need_list, relist = True, True
                self.relists += 1
                if self.metrics is not None:
                    self.metrics.relists.labels(self.kind.name).inc()
            except Exception as exc:
                if self._stopping.is_set():
                    break
                self._failed(exc)
        log.debug("informer stopped kind=%s", self.kind.name)

    def _failed(self, exc: Exception) -> None:
        """Record a failure, log it (at most once per FAILURE_LOG_INTERVAL while an outage
        lasts), wait out the backoff."""
        reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        self.last_error = reason
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        # the server may say when (429 Too Many Requests, 503)
        told = exc.retry_after if isinstance(exc, _ApiStatusError) else None
        delay = self.backoff.next(told or 0.0)
        if self._failures_unlogged == 0 or now - self._last_failure_log >= FAILURE_LOG_INTERVAL:
            log.warning(
                "list/watch failed kind=%s rv=%s retry_in=%.1fs failing_for=%.0fs "
                "failures=%d reason=%s", self.kind.name, self._received_rv or "-", delay,
                now - self.failing_since, self._failures_unlogged + 1, reason,
            )
            self._last_failure_log = now
            self._failures_unlogged = 0
        self._failures_unlogged += 1
        self._stopping.wait(delay)

    def _reachable(self) -> None:
        """The server answered a request: the outage (if any) is over."""
        if self.failing_since is not None:
            log.info("list/watch recovered kind=%s after=%.1fs", self.kind.name,
                     time.monotonic() - self.failing_since)
        self.last_error = None
        self.failing_since = None
        self._failures_unlogged = 0

    def _request(self, query: dict[str, str], read_timeout: float) -> urllib3.BaseHTTPResponse:
        """Send a GET for this kind; return the response with its body unread."""
        cfg = self.api.configuration
        headers = {"Accept": "application/json", **self.api.default_headers}
        auth = cfg.auth_settings().get("BearerToken")
        if auth and auth.get("value"):
            headers[auth["key"]] = auth["value"]
        url = f"{cfg.host}{self.kind.path}"
        if query:
            url += "?" + urlencode(query)
        resp = self.api.rest_client.pool_manager.request(
            "GET",
            url,
            headers=headers,
            timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=read_timeout),
            preload_content=False,
            # Our own backoff decides when to try again.
            retries=False,
        )
        with self._response_lock:
            self._response = resp
        if self._stopping.is_set():
            self._abort_response()
        if resp.status != 200:
            body = resp.read()
            self._release(resp)
            if resp.status == 410:
                raise _Gone(_status_message(body))
            raise _ApiStatusError(resp.status, _status_message(body),
                                  retry_after(resp.headers.get("Retry-After")))
        return resp

    def _release(self, resp: urllib3.BaseHTTPResponse) -> None:
        with self._response_lock:
            if self._response is resp:
                self._response = None
        resp.release_conn()

    def _abort_response(self) -> None:
        """Wake a thread blocked reading the current response (called from stop)."""
        with self._response_lock:
            resp = self._response
        if resp is None:
            return
        try:
            resp.shutdown()
        except (AttributeError, ValueError, RuntimeError, OSError):
            resp.close()

    def _list(self, relist: bool) -> None:
        # The first list may come from the server's watch cache (resourceVersion=0, as
        # client-go asks): no read of etcd for every agent starting. After 410 the cache may
        # be what is behind, so a relist reads the newest state.
        self._from_cache = not relist and not self.page_size
        while True:
            try:
                with gc_policy.bulk:  # the core's one GC policy
                    self._list_once(relist)
                return
            except _ContinueExpired:
                # The server forgot our place between pages: start the list over.
                log.info("list continue token expired, listing again kind=%s", self.kind.name)

    def _list_once(self, relist: bool) -> None:
        started = time.perf_counter()
        decode = 0.0
        count = 0
        stats = _ListStats()
        rv = ""
        # Decoded as the pages come, handed over only once the last one is in: a list that
        # fails half-way must not publish a part of the objects (nor delete the rest).
        held: list[tuple[Any, ...]] = [("begin",)]
        for meta, items in self._pages(stats):
            decode_started = time.perf_counter()
            count += len(items)
            self._enqueue_records(items, held.append)
            decode += time.perf_counter() - decode_started
            rv = meta.get("resourceVersion") or rv
        for op in held:
            self._enqueue(op)
        del held
        self._received_rv = rv
        log.info(
            "listed kind=%s rv=%s relist=%s objects=%d bytes=%d pages=%d seconds=%.3f "
            "wait_s=%.3f parse_s=%.3f decode_s=%.3f", self.kind.name, rv, relist, count,
            stats.size, stats.pages, time.perf_counter() - started, stats.fetch, stats.parse,
            decode,
        )
        self._enqueue(("end", rv))

    def _fetch_page(self, cont: str, stats: _ListStats) -> tuple[dict[str, Any], list[Any]]:
        """One page (or the whole list): its metadata and its items, parsed."""
        query: dict[str, str] = {}
        if self.page_size:
            query["limit"] = str(self.page_size)
        if cont:
            query["continue"] = cont
        elif getattr(self, "_from_cache", False):
            query["resourceVersion"] = "0"
        started = time.perf_counter()
        try:
            resp = self._request(query, LIST_READ_TIMEOUT)
        except _Gone:
            if cont:
                raise _ContinueExpired() from None
            raise
        try:
            body = resp.read()
        finally:
            self._release(resp)
        read = time.perf_counter()
        doc = orjson.loads(body)
        stats.size += len(body)
        stats.pages += 1
        del body
        meta = doc.get("metadata") or {}
        items = doc.get("items") or []
        stats.fetch += read - started
        stats.parse += time.perf_counter() - read
        return meta, items

    def _pages(self, stats: _ListStats) -> Iterator[tuple[dict[str, Any], list[Any]]]:
        """The list's pages in order. With paging, a helper thread fetches and parses the
        next page while the caller decodes this one, so the server's time per page hides
        behind ours instead of adding to it."""
        if not self.page_size:
            yield self._fetch_page("", stats)
            return
        pages: queue.Queue[Any] = queue.Queue(maxsize=1)
        done = threading.Event()  # the consumer has gone away: stop fetching

        def hand_over(page: Any) -> None:
            while not done.is_set():
                try:
                    pages.put(page, timeout=0.5)
                    return
                except queue.Full:
                    continue

        def fetch_ahead() -> None:
            cont = ""
            try:
                while not done.is_set():
                    meta, items = self._fetch_page(cont, stats)
                    hand_over((meta, items))
                    cont = meta.get("continue") or ""
                    if not cont:
                        break
                hand_over(_LAST_PAGE)
            except BaseException as exc:  # the consumer raises it in its own thread
                hand_over(exc)

        fetcher = threading.Thread(target=fetch_ahead, name=f"informer-{self.kind.name}-pages",
                                   daemon=True)
        fetcher.start()
        try:
            while True:
                page = pages.get()
                if page is _LAST_PAGE:
                    return
                if isinstance(page, BaseException):
                    raise page
                yield page
        finally:
            done.set()
            # Unblock a fetcher waiting to hand over a page we will never take.
            with contextlib.suppress(queue.Empty):
                pages.get_nowait()

    def _enqueue_records(self, items: list[Any],
                         enqueue: Callable[[tuple[Any, ...]], None]) -> None:
        decode = self.kind.decode
        batch: list[tuple[str, Record]] = []
        for i, obj in enumerate(items):
            # Drop each parsed dict once decoded so a big list is not held twice over.
            items[i] = None
            try:
                rec = decode(obj)
            except Exception as exc:
                self._warn_undecodable(obj, exc)
                continue
            batch.append((rec.key, rec))
            if len(batch) >= LIST_BATCH:
                enqueue(("chunk", batch))
                batch = []
        if batch:
            enqueue(("chunk", batch))

    def _warn_undecodable(self, obj: Any, exc: Exception) -> None:
        key = object_key(obj) if isinstance(obj, dict) else "?"
        log.warning(
            "skipping object that cannot be decoded kind=%s object=%s reason=%s",
            self.kind.name, key, exc,
        )

    def _watch(self) -> None:
        """Follow one watch stream until it ends.

        A stream the server ends well before the timeout we asked for counts as cut and
        raises, so that the caller backs off instead of reconnecting in a tight loop.
        """
        timeout = self.watch_timeout or round(random.uniform(*WATCH_TIMEOUT_RANGE))
        query = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout),
            "resourceVersion": self._received_rv,
        }
        started = time.monotonic()
        resp = self._request(query, timeout + 30.0)
        # Open again: not failing any more (the backoff starts over only after a healthy
        # period, so a server that accepts and hangs up at once is not hammered).
        self._reachable()
        try:
            for line in self._lines(resp):
                self._on_watch_line(line)
        finally:
            with self._response_lock:
                self._response = None
            resp.close()
        if self._stopping.is_set():
            return
        if time.monotonic() - started < timeout - WATCH_END_SLACK:
            raise ConnectionError("watch stream ended early")

    @staticmethod
    def _lines(resp: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
        chunks: Iterator[bytes]
        if getattr(resp, "chunked", False):
            chunks = resp.read_chunked()
        else:
            chunks = iter(lambda: resp.read1(65536), b"")
        rest = b""
        for chunk in chunks:
            if not chunk:
                continue
            parts = (rest + chunk).split(b"\n")
            rest = parts.pop()
            for line in parts:
                if line.strip():
                    yield line
        if rest.strip():
            yield rest

    def _on_watch_line(self, line: bytes) -> None:
        try:
            ev = orjson.loads(line)
            etype = ev["type"]
            obj = ev["object"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConnectionError(f"malformed watch event: {exc}") from None
        if etype == "ERROR":
            code = obj.get("code") if isinstance(obj, dict) else None
            message = obj.get("message", "") if isinstance(obj, dict) else str(obj)
            if code == 410:
                raise _Gone(message)
            raise _ApiStatusError(int(code or 0), message)
        if not isinstance(obj, dict):
            raise ConnectionError(f"watch event {etype} without an object")
        rv = (obj.get("metadata") or {}).get("resourceVersion") or self._received_rv
        self._received_rv = rv
        if etype == "BOOKMARK":
            self._enqueue(("rv", rv))
            return
        if etype not in ("ADDED", "MODIFIED", "DELETED"):
            log.warning("ignoring watch event kind=%s type=%s", self.kind.name, etype)
            self._enqueue(("rv", rv))
            return
        if self.metrics is not None:
            self.metrics.events_received.labels(self.kind.name).inc()
        try:
            rec: Record | None = self.kind.decode(obj)
        except Exception as exc:
            rec = None
            if etype != "DELETED":
                self._warn_undecodable(obj, exc)
                self._enqueue(("rv", rv))
                return
        # A deletion needs only the key, even when the rest of the object is unreadable.
        key = rec.key if rec is not None else object_key(obj)
        self._enqueue(("event", etype, key, rec, rv))

    # -- handing over to the loop ---------------------------------------------------------

    def _enqueue(self, op: tuple[Any, ...]) -> None:
        with self._ops_lock:
            self._ops.append(op)
            if self._flush_scheduled:
                return
            self._flush_scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._flush)
        except RuntimeError:  # the loop is closed: the agent is going away
            self._stopping.set()

    def _flush(self) -> None:
        """Apply queued operations on the loop, at most about APPLY_SLICE records a call."""
        budget = APPLY_SLICE
        while budget > 0:
            with self._ops_lock:
                if not self._ops:
                    self._flush_scheduled = False
                    return
                op = self._ops.popleft()
            try:
                budget -= self._apply(op)
            except Exception:
                log.exception("applying informer update failed kind=%s op=%s",
                              self.kind.name, op[0])
        self.loop.call_soon(self._flush)

    def _apply(self, op: tuple[Any, ...]) -> int:
        what = op[0]
        if what == "event":
            _, etype, key, rec, rv = op
            self._apply_event(etype, key, rec)
            self.resource_version = rv
            return 1
        if what == "rv":
            self.resource_version = op[1]
            return 1
        if what == "chunk":
            self._apply_listed(op[1])
            return len(op[1])
        if what == "begin":
            self._seen = set()
            return 1
        if what == "end":
            self._apply_list_end(op[1])
            return 1
        raise ValueError(f"unknown operation {what}")

    def _emit(self, etype: EventType, key: str, new: Record | None, old: Record | None) -> None:
        try:
            self.publish(Event(self.kind.name, etype, key, new, old))
        except Exception:
            log.exception("publish failed kind=%s key=%s", self.kind.name, key)

    def _apply_event(self, etype: str, key: str, rec: Record | None) -> None:
        store = self.store
        if etype == "DELETED":
            old = store.remove(key)
            if old is not None:
                self._emit(EventType.DELETED, key, None, old)
            return
        assert rec is not None
        old = store.put(key, rec)
        if old is None:
            self._emit(EventType.ADDED, key, rec, None)
        elif old != rec:  # records compare without resourceVersion
            self._emit(EventType.MODIFIED, key, rec, old)

    def _apply_listed(self, batch: list[tuple[str, Record]]) -> None:
        # The hot path of a big list: locals instead of attribute look-ups, no helper calls.
        seen = self._seen
        put = self.store.put
        publish = self.publish
        kind = self.kind.name
        added, modified = EventType.ADDED, EventType.MODIFIED
        for key, rec in batch:
            if seen is not None:
                seen.add(key)
            old = put(key, rec)
            if old is not None and old == rec:
                continue
            try:
                if old is None:
                    publish(Event(kind, added, key, rec, None))
                elif old.meta.uid != rec.meta.uid:
                    # Deleted and created again while we were not watching: two changes.
                    publish(Event(kind, EventType.DELETED, key, None, old))
                    publish(Event(kind, added, key, rec, None))
                else:
                    publish(Event(kind, modified, key, rec, old))
            except Exception:
                log.exception("publish failed kind=%s key=%s", kind, key)

    def _apply_list_end(self, rv: str) -> None:
        seen = self._seen or set()
        # Store.keys() is a copy (and iterating a Store yields records, not keys).
        for key in self.store.keys():  # noqa: SIM118
            if key not in seen:
                old = self.store.remove(key)
                self._emit(EventType.DELETED, key, None, old)
        self._seen = None
        self.resource_version = rv
        self.synced.set()
