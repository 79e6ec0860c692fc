"""The HTTP front end: the Kubernetes REST paths the official client uses, over plain HTTP.

One thread per connection (watches are long-lived and mostly asleep on the store's
condition); stop() closes every connection, start() again serves the same store.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from urllib.parse import urlsplit

import orjson
import yaml

from kube_router_lab.api import resources
from kube_router_lab.api.errors import ApiError
from kube_router_lab.api.resources import Resource
from kube_router_lab.api.selectors import Predicate
from kube_router_lab.api.selectors import combine
from kube_router_lab.api.selectors import field_selector
from kube_router_lab.api.selectors import label_selector
from kube_router_lab.api.store import ApiStore
from kube_router_lab.api.store import Event

log = logging.getLogger(__name__)

VERSION = {"major": "1", "minor": "30", "gitVersion": "v1.30.0-lab", "gitCommit": "lab",
           "gitTreeState": "clean", "buildDate": "2024-01-01T00:00:00Z", "goVersion": "none",
           "compiler": "none", "platform": "linux/amd64"}
_PATCH_TYPES = {
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
    "application/json-patch+json": "json",
}


class ApiServer:
    """Serves an ApiStore at ``url``; stop() and start() again keep the store's data."""

    def __init__(self, store: ApiStore, host: str = "127.0.0.1", port: int = 0, *,
                 bookmark_interval: float = 60.0, keep_history: bool = False) -> None:
        self.store = store
        self.host = host
        self.port = port
        self.bookmark_interval = bookmark_interval
        #: Serve watches from before a restart (not what a real server does).
        self.keep_history = keep_history
        self._started_before = False
        #: The last requests served, as (method, path, query parameters): what a test checks
        #: a client asked for.
        self.requests: deque[tuple[str, str, dict[str, str]]] = deque(maxlen=200)
        self._faults: list[_Fault] = []
        self._faults_lock = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("the API server has no port until start()")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        if self._httpd is not None:
            return
        if self._started_before and not self.keep_history:
            # A real API server starts with an empty watch cache: every watch from a
            # resourceVersion of its previous life gets 410 Gone, so every client relists.
            self.store.compact()
        self._started_before = True
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        httpd = _HTTPServer((self.host, self.port), self, family)
        # A port of 0 picks a free one once; restarts reuse it so clients reconnect.
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"apiserver:{self.port}", daemon=True)
        self._thread.start()
        log.info("apiserver started url=%s", self.url)

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.stopping.set()
        httpd.shutdown()
        httpd.server_close()
        httpd.close_connections()
        self.store.wake()
        httpd.join_handlers(timeout=5.0)
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        log.info("apiserver stopped url=%s", self.url)

    def inject(self, code: int = 429, *, count: int = 1, retry_after: int | None = 1,
               when: Callable[[str, str, dict[str, str]], bool] | None = None) -> None:
        """Answer the next ``count`` requests that ``when(method, path, params)`` accepts
        (every request without it) with ``code`` and a ``Retry-After``, as an overloaded
        server does (priority and fairness: 429; a server starting or going away: 503)."""
        with self._faults_lock:
            self._faults.append(_Fault(code, count, retry_after, when))

    def _fault_for(self, method: str, path: str, params: dict[str, str]) -> _Fault | None:
        with self._faults_lock:
            for f in self._faults:
                if f.count > 0 and (f.when is None or f.when(method, path, params)):
                    f.count -= 1
                    return f
        return None

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def write_kubeconfig(self, path: str | Path) -> Path:
        """Write a kubeconfig naming this server (plain http, no credentials needed)."""
        path = Path(path)
        config = {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": "lab", "cluster": {"server": self.url}}],
            "users": [{"name": "lab", "user": {"token": "lab"}}],
            "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "lab"}}],
            "current-context": "lab",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path


@dataclass
class _Fault:
    code: int
    count: int
    retry_after: int | None
    when: Callable[[str, str, dict[str, str]], bool] | None


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], api: ApiServer, family: int) -> None:
        self.address_family = family
        self.api = api
        self.stopping = threading.Event()
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns[request] = threading.current_thread()
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._conns_lock:
                self._conns.pop(request, None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # a client hung up, or stop() cut the connection
            log.debug("connection ended client=%s reason=%s", client_address[0], exc)
        else:
            log.exception("request failed client=%s", client_address[0])

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for sock in conns:
            with contextlib.suppress(OSError):  # already closed by its peer
                sock.shutdown(socket.SHUT_RDWR)

    def join_handlers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._conns_lock:
            threads = list(self._conns.values())
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))


def _resource_list(group_version: str, items: list[Resource]) -> dict[str, Any]:
    verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
    out = []
    for r in items:
        out.append({"name": r.plural, "singularName": r.kind.lower(), "namespaced": r.namespaced,
                    "kind": r.kind, "verbs": verbs})
        if r.has_status:
            out.append({"name": f"{r.plural}/status", "singularName": "", "kind": r.kind,
                        "namespaced": r.namespaced, "verbs": ["get", "patch", "update"]})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
            "resources": out}


def _discovery(parts: list[str]) -> dict[str, Any] | None:
    gvs = resources.group_versions()
    if parts == ["api"]:
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
    if parts == ["apis"]:
        groups = []
        for gv in gvs:
            if "/" in gv:
                group, version = gv.split("/")
                ver = {"groupVersion": gv, "version": version}
                groups.append({"name": group, "versions": [ver], "preferredVersion": ver})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
    if parts == ["api", "v1"]:
        return _resource_list("v1", gvs["v1"])
    if len(parts) == 2 and parts[0] == "apis":
        for gv in gvs:
            if gv.startswith(parts[1] + "/"):
                ver = {"groupVersion": gv, "version": gv.split("/")[1]}
                return {"kind": "APIGroup", "apiVersion": "v1", "name": parts[1],
                        "versions": [ver], "preferredVersion": ver}
    if len(parts) == 3 and parts[0] == "apis" and f"{parts[1]}/{parts[2]}" in gvs:
        return _resource_list(f"{parts[1]}/{parts[2]}", gvs[f"{parts[1]}/{parts[2]}"])
    return None


def _route(parts: list[str]) -> tuple[Resource, str | None, str | None, str | None] | None:
    """URL parts -> (resource, namespace, name, subresource), or None when not a resource."""
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    if not rest:
        return None
    if rest[0] == "namespaces" and len(rest) >= 3:
        res = resources.BY_PATH.get((group, version, rest[2]))
        if res is not None and res.namespaced and len(rest) <= 5:
            return (res, rest[1], rest[3] if len(rest) > 3 else None,
                    rest[4] if len(rest) > 4 else None)
    res = resources.BY_PATH.get((group, version, rest[0]))
    if res is None or len(rest) > 3 or (res.namespaced and len(rest) > 1):
        return None
    return res, None, rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    _out: list[bytes]  # a watch's chunks not yet written
    _out_size: int

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("request client=%s " + format, self.client_address[0], *args)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    # -- plumbing -----------------------------------------------------------------------

    def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, code: int, obj: Any) -> None:
        self._send(code, orjson.dumps(obj))

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        parts = [p for p in url.path.split("/") if p]
        body = self._body()
        route = _route(parts)
        api = self.server.api
        api.requests.append((method, url.path, params))
        fault = api._fault_for(method, url.path, params) if api._faults else None
        try:
            if fault is not None:
                reason = "TooManyRequests" if fault.code == 429 else "ServiceUnavailable"
                err = ApiError(fault.code, reason, "the lab's API server was told to refuse "
                               "this request")
                self.send_response(fault.code)
                payload = orjson.dumps(err.status())
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                if fault.retry_after is not None:
                    self.send_header("Retry-After", str(fault.retry_after))
                self.end_headers()
                self.wfile.write(payload)
            elif route is not None:
                self._resource(method, params, body, *route)
            elif method != "GET":
                raise ApiError(405, "MethodNotAllowed", f"{method} {url.path} is not allowed")
            elif parts == ["version"]:
                self._send_json(200, VERSION)
            elif parts in (["healthz"], ["readyz"], ["livez"]):
                self._send(200, b"ok", "text/plain")
            elif (doc := _discovery(parts)) is not None:
                self._send_json(200, doc)
            else:
                raise ApiError(404, "NotFound", f"the server could not find {url.path}")
        except ApiError as err:
            name = route[2] if route else None
            details = {"name": name, "kind": route[0].plural} if route and name else None
            self._send_json(err.code, err.status(details))
        except OSError:
            self.close_connection = True  # the client hung up mid-answer
        except Exception as exc:
            # A bug in an admission function or here: answer 500 rather than drop the
            # connection, so the client sees an error it can report.
            log.exception("request failed method=%s path=%s", method, url.path)
            self._send_json(500, ApiError(500, "InternalError", str(exc)).status())

    def _resource(self, method: str, params: dict[str, str], body: bytes, res: Resource,
                  namespace: str | None, name: str | None, sub: str | None) -> None:
        store = self.server.api.store
        if sub not in (None, "status") or (sub and not res.has_status):
            raise ApiError(404, "NotFound", f"{res.plural}/{sub} is not served")
        if method == "GET" and name is None:
            if params.get("watch") in ("true", "1"):
                self._watch(res, namespace, params)
            else:
                self._list(res, namespace, params)
        elif method == "GET" and name is not None:
            obj = store.get(res.kind, namespace, name)
            if obj is None:
                raise ApiError(404, "NotFound", f'{res.plural} "{name}" not found')
            self._send_json(200, obj)
        elif method == "POST" and name is None:
            obj = self._decode(body, res, namespace)
            self._send_json(201, store.create(obj))
        elif method == "PUT" and name is not None:
            obj = self._decode(body, res, namespace)
            if obj.get("metadata", {}).get("name") != name:
                raise ApiError(400, "BadRequest", f"the name in the body does not match {name!r}")
            if sub == "status":
                self._send_json(200, store.update_status(obj))
            else:
                self._send_json(200, store.update(obj))
        elif method == "PATCH" and name is not None:
            self._patch(res, namespace, name, sub, body)
        elif method == "DELETE" and name is not None:
            self._send_json(200, store.delete(res.kind, namespace, name))
        elif method == "DELETE":
            self._delete_collection(res, namespace, params)
        else:
            raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed here")

    def _decode(self, body: bytes, res: Resource, namespace: str | None) -> dict[str, Any]:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, "BadRequest", f"body is not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ApiError(400, "BadRequest", "body must be an object")
        if obj.get("kind", res.kind) != res.kind:
            raise ApiError(400, "BadRequest", f"kind {obj.get('kind')!r} sent to {res.plural}")
        obj["kind"] = res.kind
        meta = obj.setdefault("metadata", {})
        if namespace is not None:
            if meta.get("namespace") not in (None, "", namespace):
                raise ApiError(400, "BadRequest",
                               "the namespace of the object does not match the request")
            meta["namespace"] = namespace
        return obj

    def _patch(self, res: Resource, namespace: str | None, name: str, sub: str | None,
               body: bytes) -> None:
        store = self.server.api.store
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if ctype == "application/apply-patch+yaml":
            # Server-side apply: good enough as the store's kubectl-like apply.
            try:
                obj = yaml.safe_load(body)
            except yaml.YAMLError as exc:
                raise ApiError(400, "BadRequest", f"body is not YAML: {exc}") from None
            obj = self._decode(orjson.dumps(obj), res, namespace)
            obj["metadata"]["name"] = name
            self._send_json(200, store.apply(obj))
            return
        patch_type = _PATCH_TYPES.get(ctype)
        if patch_type is None:
            raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {ctype!r}")
        try:
            patch = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, "BadRequest", f"patch is not JSON: {exc}") from None
        self._send_json(200, store.patch(res.kind, namespace, name, patch, patch_type,
                                         subresource=sub))

    def _selector(self, params: dict[str, str]) -> Predicate | None:
        return combine(label_selector(params.get("labelSelector")),
                       field_selector(params.get("fieldSelector")))

    def _list(self, res: Resource, namespace: str | None, params: dict[str, str]) -> None:
        store = self.server.api.store
        pred = self._selector(params)
        try:
            limit = int(params.get("limit") or 0)
        except ValueError:
            raise ApiError(400, "BadRequest", "limit must be an integer") from None
        meta: dict[str, Any]
        if params.get("resourceVersionMatch") == "Exact":
            try:
                at = int(params.get("resourceVersion") or "")
            except ValueError:
                raise ApiError(400, "BadRequest", "resourceVersionMatch=Exact needs the "
                               "resourceVersion of a list") from None
            entries = store.snapshot_at(res.kind, namespace, at)
            if pred is not None:
                entries = [e for e in entries if pred(e.obj)]
            meta = {"resourceVersion": str(at)}
        elif limit > 0 or params.get("continue"):
            entries, meta = self._page(res, namespace, params.get("continue"), limit, pred)
        else:
            entries, rv = store.snapshot(res.kind, namespace)
            if pred is not None:
                entries = [e for e in entries if pred(e.obj)]
            meta = {"resourceVersion": str(rv)}
        head = orjson.dumps({"kind": res.list_kind, "apiVersion": res.api_version,
                             "metadata": meta})
        body = b"".join((head[:-1], b',"items":[', b",".join(e.raw for e in entries), b"]}"))
        self._send(200, body)

    def _page(self, res: Resource, namespace: str | None, token: str | None, limit: int,
              pred: Predicate | None) -> tuple[list[Any], dict[str, Any]]:
        """One page in key order. Pages come from the current state, but every page reports
        the first page's resourceVersion, so a watch from it replays whatever changed while
        paging; a token older than the history is 410 Expired, as etcd compaction makes it."""
        store = self.server.api.store
        after: tuple[str, str] | None = None
        if token:
            try:
                data = orjson.loads(base64.urlsafe_b64decode(token.encode()))
                rv, after = int(data["rv"]), (str(data["ns"]), str(data["name"]))
            except (ValueError, KeyError, TypeError):
                raise ApiError(400, "BadRequest", "invalid continue token") from None
            store.check_version(rv)
        else:
            rv = int(store.resource_version())
        entries, last = store.page(res.kind, namespace, after, limit or 500, pred)
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if last is not None:
            meta["continue"] = base64.urlsafe_b64encode(
                orjson.dumps({"rv": rv, "ns": last[0], "name": last[1]})).decode()
        return entries, meta

    def _delete_collection(self, res: Resource, namespace: str | None,
                           params: dict[str, str]) -> None:
        store = self.server.api.store
        pred = self._selector(params)
        entries, _ = store.snapshot(res.kind, namespace)
        for e in entries:
            if pred is None or pred(e.obj):
                meta = e.obj["metadata"]
                try:
                    store.delete(res.kind, meta.get("namespace"), meta["name"])
                except ApiError as err:
                    if err.code != 404:
                        raise
        self._send_json(200, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                              "status": "Success"})

    # -- watch --------------------------------------------------------------------------

    # Events are framed as HTTP chunks into a buffer written once per batch: one system
    # call for a burst, not one per event.
    def _event(self, etype: str, raw: bytes) -> None:
        data = b'{"type":"%s","object":%s}\n' % (etype.encode(), raw)
        self._out.append(b"%x\r\n%s\r\n" % (len(data), data))
        self._out_size += len(data)
        if self._out_size > 1 << 20:
            self._flush()

    def _flush(self) -> None:
        if self._out:
            data = b"".join(self._out)
            self._out, self._out_size = [], 0
            self.wfile.write(data)

    def _watch(self, res: Resource, namespace: str | None, params: dict[str, str]) -> None:
        api = self.server.api
        store = api.store
        pred = self._selector(params)
        rv_param = params.get("resourceVersion", "")
        bookmarks = params.get("allowWatchBookmarks") in ("true", "1")
        try:
            timeout = float(params.get("timeoutSeconds") or 0) or 1800.0
            last = int(rv_param) if rv_param not in ("", "0") else None
        except ValueError:
            raise ApiError(400, "BadRequest", "bad timeoutSeconds or resourceVersion") from None
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.close_connection = True  # the stream ends the connection's useful life
        self._out = []
        self._out_size = 0
        now = time.monotonic()
        deadline = now + timeout
        next_bookmark = now + api.bookmark_interval
        try:
            if last is None:
                # No resourceVersion: the current state as synthetic ADDED events, then
                # the changes after it.
                entries, last = store.snapshot(res.kind, namespace)
                for e in entries:
                    if pred is None or pred(e.obj):
                        self._event("ADDED", e.raw)
                self._flush()
            while not self.server.stopping.is_set():
                wait = min(deadline, next_bookmark if bookmarks else deadline) - time.monotonic()
                try:
                    events, last = store.events_after(last, max(0.0, wait), res.kind)
                except ApiError as err:
                    self._event("ERROR", orjson.dumps(err.status()))
                    break
                for ev in events:
                    self._send_event(ev, res, namespace, pred)
                now = time.monotonic()
                if bookmarks and now >= next_bookmark:
                    self._event("BOOKMARK", orjson.dumps(
                        {"kind": res.kind, "apiVersion": res.api_version,
                         "metadata": {"resourceVersion": str(last)}}))
                    next_bookmark = now + api.bookmark_interval
                self._flush()
                if now >= deadline:
                    break
            if not self.server.stopping.is_set():
                self._out.append(b"0\r\n\r\n")  # the last chunk: the stream ended cleanly
                self._flush()
        except OSError:
            pass  # the client went away (or stop() closed the socket)

    def _send_event(self, ev: Event, res: Resource, namespace: str | None,
                    pred: Predicate | None) -> None:
        if ev.kind != res.kind:
            return
        obj = ev.new.obj
        if namespace is not None and obj["metadata"].get("namespace") != namespace:
            return
        if pred is None:
            self._event(ev.type, ev.new.raw)
            return
        # As on a cluster, an object entering the selection is ADDED and one leaving it
        # DELETED, so a filtered watcher's cache stays exact.
        now_in = pred(obj)
        was_in = ev.old is not None and pred(ev.old.obj)
        if ev.type == "MODIFIED":
            if now_in and was_in:
                self._event("MODIFIED", ev.new.raw)
            elif now_in:
                self._event("ADDED", ev.new.raw)
            elif was_in:
                self._event("DELETED", ev.new.raw)
        elif now_in:
            self._event(ev.type, ev.new.raw)
