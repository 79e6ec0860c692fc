"""A client of the real API server with the interface the lab's parts use on the embedded
store (get, list, create, update, patch, apply, delete, subscribe), so the kubelets and
the scenario steps work on either.

Writes are what kubectl and a kubelet send: server-side apply for manifests, merge patches
for annotations, the ``status`` subresource for pod status. ``subscribe`` is backed by one
list-and-watch thread per kind; it also remembers the resourceVersion of the last change of
each kind and the order it saw versions in, which the lab's convergence gate places the
agents' versions with (see :mod:`kube_router_lab.versions`).
"""

from __future__ import annotations

import builtins
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote
from urllib.parse import urlencode

import orjson
import urllib3

from kube_router_lab.api.errors import ApiError
from kube_router_lab.versions import SeenOrder
from kube_router_lab.versions import make_token

log = logging.getLogger(__name__)

FIELD_MANAGER = "kube-router-lab"
#: How long an apply waits for a new namespace's default service account.
SA_WAIT = 15.0
Callback = Callable[[str, str, dict[str, Any]], None]


def with_pod_grace(obj: dict[str, Any], grace: float) -> dict[str, Any]:
    """``obj`` with the lab's grace period in each pod spec that sets none (a Pod's, a
    workload's template). The API server would default it to 30 s, and a pod a controller
    deletes (a scale-down, garbage collection) would then linger 30 s where the embedded
    server's lab ends it after ``cluster.pod-termination.grace``."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return obj
    in_template = obj.get("kind") != "Pod"
    raw = spec.get("template") if in_template else None
    template: dict[str, Any] = raw if isinstance(raw, dict) else {}
    pod_spec = template.get("spec") if in_template else spec
    if not isinstance(pod_spec, dict) or "terminationGracePeriodSeconds" in pod_spec:
        return obj
    pod_spec = {**pod_spec, "terminationGracePeriodSeconds": max(0, math.ceil(grace))}
    spec = {**spec, "template": {**template, "spec": pod_spec}} if in_template else pod_spec
    return {**obj, "spec": spec}


@dataclass(frozen=True, slots=True)
class Kind:
    kind: str
    prefix: str  # "/api/v1" or "/apis/GROUP/VERSION"
    plural: str
    namespaced: bool


def _kinds() -> dict[str, Kind]:
    core = "/api/v1"
    table = [
        Kind("Namespace", core, "namespaces", False), Kind("Node", core, "nodes", False),
        Kind("Pod", core, "pods", True), Kind("Service", core, "services", True),
        Kind("Endpoints", core, "endpoints", True), Kind("Secret", core, "secrets", True),
        Kind("ConfigMap", core, "configmaps", True),
        Kind("ServiceAccount", core, "serviceaccounts", True),
        Kind("EndpointSlice", "/apis/discovery.k8s.io/v1", "endpointslices", True),
        Kind("NetworkPolicy", "/apis/networking.k8s.io/v1", "networkpolicies", True),
        Kind("Deployment", "/apis/apps/v1", "deployments", True),
        Kind("ReplicaSet", "/apis/apps/v1", "replicasets", True),
        Kind("DaemonSet", "/apis/apps/v1", "daemonsets", True),
        Kind("Lease", "/apis/coordination.k8s.io/v1", "leases", True),
    ]
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    table += [Kind("ClusterRole", rbac, "clusterroles", False),
              Kind("ClusterRoleBinding", rbac, "clusterrolebindings", False),
              Kind("Role", rbac, "roles", True), Kind("RoleBinding", rbac, "rolebindings", True)]
    return {k.kind: k for k in table}


KINDS = _kinds()


def kind_of(kind: str) -> Kind:
    try:
        return KINDS[kind]
    except KeyError:
        raise ApiError(404, "NotFound", f"the lab does not know the kind {kind!r}") from None


class RemoteStore:
    """The real API server, seen through the embedded store's methods."""

    def __init__(self, server: str, *, ca: str, cert: str, key: str,
                 watch_kinds: tuple[str, ...] = (), pod_grace: float | None = None) -> None:
        self.server = server.rstrip("/")
        #: The grace period ``apply`` gives pod specs that set none (None: the server's).
        self.pod_grace = pod_grace
        self.http = urllib3.PoolManager(
            num_pools=4, maxsize=16, ca_certs=ca, cert_file=cert, key_file=key,
            cert_reqs="CERT_REQUIRED", retries=False,
            timeout=urllib3.Timeout(connect=5.0, read=30.0))
        self.watch_kinds = watch_kinds
        self._subscribers: list[Callback] = []
        self._lock = threading.Lock()
        self._order = SeenOrder()
        # (kind, have, want) -> placed, for versions only the server can place
        self._placed: dict[tuple[str, str, str], bool] = {}
        # (kind, a list's rv) -> what it held, {(namespace, name): rv}
        self._listed: dict[tuple[str, str], dict[tuple[str | None, str], str]] = {}
        self._synced: dict[str, threading.Event] = {k: threading.Event() for k in watch_kinds}
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- URLs and requests ----------------------------------------------------------

    def path(self, kind: str, namespace: str | None = None, name: str | None = None,
             sub: str = "") -> str:
        k = kind_of(kind)
        p = k.prefix
        if k.namespaced and namespace:
            p += f"/namespaces/{quote(namespace)}"
        p += f"/{k.plural}"
        if name:
            p += f"/{quote(name)}"
        if sub:
            p += f"/{sub}"
        return p

    def request(self, method: str, path: str, body: Any = None, *,
                content_type: str = "application/json", query: dict[str, str] | None = None,
                timeout: float | None = None) -> dict[str, Any]:
        url = self.server + path + ("?" + urlencode(query) if query else "")
        data = None if body is None else orjson.dumps(body)
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        resp = self.http.request(method, url, body=data, headers=headers,
                                 timeout=urllib3.Timeout(connect=5.0, read=timeout or 30.0))
        doc: Any = {}
        if resp.data:
            try:
                doc = orjson.loads(resp.data)
            except orjson.JSONDecodeError:
                doc = {"message": resp.data[:200].decode("utf-8", "replace")}
        if resp.status >= 400:
            raise ApiError(resp.status, str(doc.get("reason") or "Error"),
                           str(doc.get("message") or f"HTTP {resp.status}"))
        return doc

    # -- the store's interface ------------------------------------------------------

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", self.path(kind, namespace, name))
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise

    def list(self, kind: str, namespace: str | None = None
             ) -> tuple[list[dict[str, Any]], str]:
        doc = self.request("GET", self.path(kind, namespace))
        items = doc.get("items") or []
        k = kind_of(kind)
        for item in items:  # a list's items carry neither
            item.setdefault("kind", k.kind)
            item.setdefault("apiVersion", k.prefix.removeprefix("/api/").removeprefix("/apis/"))
        return items, str((doc.get("metadata") or {}).get("resourceVersion") or "")

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj.get("metadata") or {}
        return self.request("POST", self.path(obj["kind"], _ns(obj)), obj,
                            query={"fieldManager": FIELD_MANAGER} if meta else None)

    def update(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.request("PUT", self.path(obj["kind"], _ns(obj), obj["metadata"]["name"]),
                            obj)

    def update_status(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.request("PUT", self.path(obj["kind"], _ns(obj), obj["metadata"]["name"],
                                             "status"), obj)

    def patch(self, kind: str, namespace: str | None, name: str,
              patch: dict[str, Any] | builtins.list[Any],
              content_type: str = "application/merge-patch+json") -> dict[str, Any]:
        # A patch of status alone goes to the status subresource, as a kubelet sends it
        # (the main resource ignores status changes).
        sub = "status" if isinstance(patch, dict) and set(patch) == {"status"} else ""
        ns_ = namespace or ("default" if kind_of(kind).namespaced else None)
        return self.request("PATCH", self.path(kind, ns_, name, sub), patch,
                            content_type=content_type)

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply, as ``kubectl apply --server-side --force-conflicts``: fields
        this manager set before and the manifest no longer has are removed."""
        obj = dict(obj)
        if self.pod_grace is not None:
            obj = with_pod_grace(obj, self.pod_grace)
        meta = dict(obj.get("metadata") or {})
        meta.pop("resourceVersion", None)
        k = kind_of(str(obj.get("kind")))
        if k.namespaced:
            meta.setdefault("namespace", "default")
        obj["metadata"] = meta
        deadline = time.monotonic() + SA_WAIT
        while True:
            try:
                return self.request("PATCH", self.path(k.kind, meta.get("namespace"),
                                                       meta["name"]),
                                    obj, content_type="application/apply-patch+yaml",
                                    query={"fieldManager": FIELD_MANAGER, "force": "true"})
            except ApiError as exc:
                # A pod in a namespace made a moment ago: the service account controller has
                # not made its "default" account yet, and admission refuses the pod until it has.
                if not (exc.code == 403 and "service account" in str(exc)) or \
                        time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def delete(self, kind: str, namespace: str | None, name: str,
               grace: float | None = 0) -> dict[str, Any]:
        """Delete now by default (what a kubelet sends once a pod has stopped); ``grace``
        None leaves the object's own grace period, a number sets it."""
        body = None if grace is None else {"gracePeriodSeconds": int(grace)}
        ns_ = namespace or ("default" if kind_of(kind).namespaced else None)
        return self.request("DELETE", self.path(kind, ns_, name), body)

    def resource_version(self) -> str:
        """The newest change of each watched kind, as ``Kind=rv,...``."""
        with self._lock:
            return make_token(self._order.last())

    def placed(self, kind: str, have: str, want: str) -> bool | None:
        """Is ``have`` the change ``want`` of ``kind`` or a later one? By the order the lab
        saw them in; a version it never saw (an agent's bookmark or list) by reading the
        changed object as of ``have`` (``resourceVersionMatch=Exact``): there it is at
        ``want`` or later, or gone if ``want`` deleted it. Only equality is ever used."""
        with self._lock:
            verdict = self._order.place(kind, have, want)
            change = self._order.change(kind, want)
            cached = self._placed.get((kind, have, want))
        if verdict is not None or cached is not None:
            return verdict if verdict is not None else cached
        if change is None:
            return self._placed_after_list(kind, have, want)
        namespace, name, deleted = change
        query = {"fieldSelector": f"metadata.name={name}", "resourceVersion": have,
                 "resourceVersionMatch": "Exact"}
        try:
            doc = self.request("GET", self.path(kind, namespace), query=query)
        except ApiError as exc:
            if exc.code != 410:
                return None
            verdict = False  # compacted away: older than anything the lab waits for
        else:
            items = doc.get("items") or []
            if not items:
                verdict = deleted
            else:
                rv = str((items[0].get("metadata") or {}).get("resourceVersion") or "")
                with self._lock:
                    verdict = self._order.place(kind, rv, want)
                if verdict is None:
                    return None
        with self._lock:
            self._placed[(kind, have, want)] = verdict
        return verdict

    def _placed_after_list(self, kind: str, have: str, want: str) -> bool | None:
        """``want`` is a list of the lab's (no change of ``kind`` since): ``have`` is at or
        after it when the kind as of ``have`` is what the list held, or holds a change the
        lab saw after the list."""
        with self._lock:
            listed = self._listed.get((kind, want))
        if listed is None:
            return None
        try:
            doc = self.request("GET", self.path(kind), query={
                "resourceVersion": have, "resourceVersionMatch": "Exact"})
        except ApiError as exc:
            return False if exc.code == 410 else None
        state = {_key(o): str((o.get("metadata") or {}).get("resourceVersion") or "")
                 for o in doc.get("items") or []}
        if state == listed:
            verdict = True
        else:
            with self._lock:
                later = any(self._order.place(kind, rv, want) for rv in state.values()
                            if rv not in listed.values())
            if not later:
                return None  # older, or newer by deletions only: ask again later
            verdict = True
        with self._lock:
            self._placed[(kind, have, want)] = verdict
        return verdict

    def subscribe(self, callback: Callback) -> Callable[[], None]:
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    # -- watching -------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        for kind in self.watch_kinds:
            t = threading.Thread(target=self._follow, args=(kind,), daemon=True,
                                 name=f"lab-watch-{kind}")
            t.start()
            self._threads.append(t)
        deadline = time.monotonic() + timeout
        for kind, ev in self._synced.items():
            if not ev.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"the lab's watch of {kind} did not list in {timeout:g}s")

    def stop(self) -> None:
        self._stopping.set()
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
        self.http.clear()

    def _note(self, kind: str, rv: str, obj: dict[str, Any] | None = None,
              etype: str = "") -> None:
        meta = (obj or {}).get("metadata") or {}
        change = None
        if obj is not None and etype in ("ADDED", "MODIFIED", "DELETED"):
            change = (meta.get("namespace"), str(meta.get("name") or ""), etype == "DELETED")
        with self._lock:
            self._order.note(kind, rv, change)

    def _dispatch(self, etype: str, kind: str, obj: dict[str, Any]) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for cb in subscribers:
            try:
                cb(etype, kind, obj)
            except Exception:
                log.exception("subscriber failed kind=%s", kind)

    def _follow(self, kind: str) -> None:
        rv = ""
        failing_since = last_said = 0.0  # an outage is said once, then every 30 s
        while not self._stopping.is_set():
            try:
                if not rv:
                    items, rv = self.list(kind)
                    with self._lock:
                        self._listed[(kind, rv)] = {
                            _key(o): str((o.get("metadata") or {}).get("resourceVersion") or "")
                            for o in items}
                    self._note(kind, rv)
                    self._synced[kind].set()
                    for item in items:
                        self._dispatch("ADDED", kind, item)
                rv = self._watch(kind, rv)
                if failing_since:  # a list and a whole watch went through
                    log.warning("lab watch recovered kind=%s after=%.0fs", kind,
                                time.monotonic() - failing_since)
                    failing_since = 0.0
            except Exception as exc:
                if isinstance(exc, ApiError) and exc.code == 410:
                    rv = ""
                    continue
                if self._stopping.is_set():
                    return
                now = time.monotonic()
                failing_since = failing_since or now
                if now - last_said >= 30.0:
                    log.warning("lab watch failed kind=%s failing_for=%.0fs error=%s", kind,
                                now - failing_since, exc)
                    last_said = now
                self._stopping.wait(1.0)

    def _watch(self, kind: str, rv: str) -> str:
        query = {"watch": "true", "resourceVersion": rv, "timeoutSeconds": "20"}
        url = self.server + self.path(kind) + "?" + urlencode(query)
        resp = self.http.request("GET", url, preload_content=False,
                                 timeout=urllib3.Timeout(connect=5.0, read=40.0))
        try:
            if resp.status != 200:
                body = resp.read()
                raise ApiError(resp.status, "Error", body[:200].decode("utf-8", "replace"))
            buf = b""
            for chunk in resp.stream(65536):
                if self._stopping.is_set():
                    return rv
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    ev = orjson.loads(line)
                    obj = ev.get("object") or {}
                    if ev.get("type") == "ERROR":
                        raise ApiError(int(obj.get("code") or 500), "Error",
                                       str(obj.get("message")))
                    rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                    self._note(kind, rv, obj, str(ev.get("type")))
                    self._dispatch(str(ev.get("type")), kind, obj)
        finally:
            resp.release_conn()
        return rv


def _key(obj: dict[str, Any]) -> tuple[str | None, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace"), str(meta.get("name") or "")


def _ns(obj: dict[str, Any]) -> str | None:
    k = kind_of(str(obj.get("kind")))
    if not k.namespaced:
        return None
    return (obj.get("metadata") or {}).get("namespace") or "default"
