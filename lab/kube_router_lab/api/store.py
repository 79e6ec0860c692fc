"""The lab API's object database: every kind in memory, one global resourceVersion.

Committed objects are never modified in place, so readers (watch streams, lists) share them
without copying; each keeps its serialized bytes so a list of 50,000 Pods is a join.
"""

from __future__ import annotations

import bisect
import builtins
import functools
import itertools
import logging
import re
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from datetime import datetime
from typing import Any

import orjson

from kube_router_lab.api.errors import ApiError
from kube_router_lab.api.patch import apply_patch
from kube_router_lab.api.patch import merge_diff
from kube_router_lab.api.patch import merge_patch
from kube_router_lab.api.resources import BY_KIND
from kube_router_lab.api.resources import Resource

log = logging.getLogger(__name__)

Callback = Callable[[str, str, dict[str, Any]], None]
Admission = Callable[[dict[str, Any], dict[str, Any] | None], dict[str, Any]]

# DNS-1123 subdomain: what the API accepts as most object names.
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
DEFAULT_HISTORY = 100_000


@dataclass(frozen=True, slots=True)
class Entry:
    """One committed version of an object: the dict (read-only by convention) and its JSON."""

    obj: dict[str, Any]
    raw: bytes

    @classmethod
    def of(cls, obj: dict[str, Any]) -> Entry:
        return cls(obj, orjson.dumps(obj))


@dataclass(frozen=True, slots=True)
class Event:
    """One commit: its resourceVersion, the object after it and, for MODIFIED and DELETED,
    before it."""

    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    kind: str
    new: Entry
    old: Entry | None


_stamp: tuple[int, str] = (0, "")


def _now() -> str:
    # Formatting a timestamp costs more than the rest of a create: once per second is enough.
    global _stamp
    second = int(time.time())
    if _stamp[0] != second:
        _stamp = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return _stamp[1]


def _body(obj: dict[str, Any]) -> dict[str, Any]:
    """Everything but metadata and status: a change here bumps metadata.generation."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


class _Locked:
    """The store lock, counting nesting per thread: _dispatch leaves a commit nested in
    another one (an admission function writing) to the outermost caller to deliver."""

    __slots__ = ("_local", "_lock")

    def __init__(self, lock: threading.RLock, local: threading.local) -> None:
        self._lock = lock
        self._local = local

    def __enter__(self) -> None:
        self._lock.acquire()
        self._local.depth = getattr(self._local, "depth", 0) + 1

    def __exit__(self, *exc: object) -> None:
        self._local.depth -= 1
        self._lock.release()


class ApiStore:
    """A thread-safe in-memory object database with one global integer resourceVersion."""

    def __init__(self, *, history: int = DEFAULT_HISTORY) -> None:
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        # Watchers of one kind sleep on its own condition: a burst of Pod writes does not
        # wake every Service watcher for nothing.
        self._changed_kind = {k: threading.Condition(self._lock) for k in BY_KIND}
        self._objects: dict[str, dict[tuple[str, str], Entry]] = {k: {} for k in BY_KIND}
        self._rv = 0
        #: kind -> the resourceVersion of its newest change
        self._last_change: dict[str, int] = {}
        self._history: deque[Event] = deque(maxlen=history)
        # Watches resuming from a resourceVersion below this have lost events: 410 Gone.
        self._floor = 0
        self._admission: dict[str, list[Admission]] = {}
        self._subscribers: list[Callback] = []
        self._pending: deque[Event] = deque()
        self._dispatch_lock = threading.Lock()
        self._local = threading.local()
        # What `apply` last saw per object, for its three-way merge (like kubectl's
        # last-applied annotation, kept out of the object).
        self._applied: dict[tuple[str, str, str], dict[str, Any]] = {}
        # Keys in order, built on demand for paged lists; dropped when a key comes or goes.
        self._sorted: dict[str, list[tuple[str, str]] | None] = {}

    # -- reading ------------------------------------------------------------------

    def resource_version(self) -> str:
        """The current global resourceVersion."""
        with self._lock:
            return str(self._rv)

    def last_changes(self) -> dict[str, str]:
        """The resourceVersion of each kind's newest change (kinds never changed: absent)."""
        with self._lock:
            return {k: str(v) for k, v in self._last_change.items()}

    def placed(self, kind: str, have: str, want: str) -> bool | None:
        """Is ``have`` at or after ``want``? The store issued both and may order them, as
        etcd orders its revisions; its clients may not (None for one it did not issue)."""
        try:
            return int(have) >= int(want)
        except ValueError:
            return None

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        res = self._resource(kind)
        with self._lock:
            entry = self._objects[kind].get(self._key(res, namespace, name))
        return orjson.loads(entry.raw) if entry else None

    def list(self, kind: str, namespace: str | None = None) -> tuple[list[dict[str, Any]], str]:
        """(items, resourceVersion); all namespaces when ``namespace`` is None."""
        entries, rv = self.snapshot(kind, namespace)
        return [orjson.loads(e.raw) for e in entries], str(rv)

    def snapshot(self, kind: str, namespace: str | None = None
                 ) -> tuple[builtins.list[Entry], int]:
        """The committed entries of a kind and the resourceVersion they are current at."""
        self._resource(kind)
        with self._lock:
            values = self._objects[kind].values()
            if namespace is None:
                return list(values), self._rv
            return [e for e in values if e.obj["metadata"].get("namespace") == namespace], self._rv

    def snapshot_at(self, kind: str, namespace: str | None, rv: int) -> builtins.list[Entry]:
        """The entries of a kind as they were at ``rv`` (a list with
        ``resourceVersionMatch=Exact``): the current ones with the changes after ``rv``
        undone. ApiError 410 when the history no longer reaches back to it."""
        res = self._resource(kind)
        with self._lock:
            if rv < self._floor:
                raise self._expired(rv)
            if rv > self._rv:
                raise ApiError(504, "Timeout", f"Too large resource version: {rv}, "
                               f"current: {self._rv}")
            state = dict(self._objects[kind])
            for ev in reversed(self._history):
                if ev.rv <= rv:
                    break
                if ev.kind != kind:
                    continue
                meta = ev.new.obj["metadata"]
                key = self._key(res, meta.get("namespace"), meta.get("name"))
                if ev.old is None:
                    state.pop(key, None)
                else:
                    state[key] = ev.old
        return [e for e in state.values()
                if namespace is None or e.obj["metadata"].get("namespace") == namespace]

    def page(self, kind: str, namespace: str | None, after: tuple[str, str] | None,
             limit: int, pred: Callable[[dict[str, Any]], bool] | None
             ) -> tuple[builtins.list[Entry], tuple[str, str] | None]:
        """Up to ``limit`` matching entries in key order (namespace, name) after ``after``,
        and the key to continue from (None when this page is the last)."""
        self._resource(kind)
        with self._lock:
            keys = self._sorted.get(kind)
            if keys is None:
                keys = self._sorted[kind] = sorted(self._objects[kind])
            objects = self._objects[kind]
            if after is not None:
                i = bisect.bisect_right(keys, after)
            else:
                i = bisect.bisect_left(keys, (namespace, "")) if namespace else 0
            out: builtins.list[Entry] = []
            while i < len(keys) and (namespace is None or keys[i][0] == namespace):
                entry = objects[keys[i]]
                i += 1
                if pred is None or pred(entry.obj):
                    out.append(entry)
                    if len(out) == limit:
                        more = i < len(keys) and (namespace is None or keys[i][0] == namespace)
                        return out, keys[i - 1] if more else None
            return out, None

    def check_version(self, rv: int) -> None:
        """ApiError 410 Expired when changes since ``rv`` are no longer known (a continue
        token from before a compaction, as etcd answers)."""
        with self._lock:
            if rv < self._floor:
                raise self._expired(rv)

    def events_after(self, rv: int, timeout: float | None, kind: str | None = None
                     ) -> tuple[builtins.list[Event], int]:
        """Events committed after ``rv``, waiting up to ``timeout`` s for one to happen (of
        ``kind`` when given; the events returned are of every kind); returns them and the
        resourceVersion they bring the caller to.
        ApiError 410 Expired when the history no longer reaches back to ``rv``."""
        cond = self._changed_kind[kind] if kind else self._changed
        with cond:
            if rv < self._floor:
                raise self._expired(rv)
            if self._rv <= rv and (timeout is None or timeout > 0):
                cond.wait(timeout)
                if rv < self._floor:
                    raise self._expired(rv)
            count = self._rv - rv
            if count <= 0:
                return [], rv
            events = list(itertools.islice(reversed(self._history), count))
            events.reverse()
            return events, self._rv

    def wake(self) -> None:
        """Wake every thread waiting in ``events_after`` (the server is stopping)."""
        with self._lock:
            self._changed.notify_all()
            for cond in self._changed_kind.values():
                cond.notify_all()

    def _expired(self, rv: int) -> ApiError:
        return ApiError(410, "Expired", f"too old resource version: {rv} ({self._floor + 1})")

    # -- writing ------------------------------------------------------------------

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Assign uid, resourceVersion, creationTimestamp; run admission; 409 if it exists."""
        new = self._copy_in(obj)
        res = self._resource(new.get("kind"))
        with self._locked():
            meta = new["metadata"]
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
            key = self._key(res, meta.get("namespace"), meta.get("name"))
            if key in self._objects[res.kind]:
                raise ApiError(409, "AlreadyExists",
                               f'{res.plural} "{meta["name"]}" already exists')
            new = self._admit(res, new, None)
            self._validate(res, new)
            key = self._key(res, new["metadata"].get("namespace"), new["metadata"]["name"])
            if key in self._objects[res.kind]:
                raise ApiError(409, "AlreadyExists",
                               f'{res.plural} "{key[1]}" already exists')
            meta = new["metadata"]
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now()
            meta["generation"] = 1
            for k in ("deletionTimestamp", "deletionGracePeriodSeconds"):
                meta.pop(k, None)
            entry = self._commit("ADDED", res, key, new, None)
        self._dispatch()
        return orjson.loads(entry.raw)

    def update(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Full replace; 409 Conflict when metadata.resourceVersion is given and stale."""
        new = self._copy_in(obj)
        res = self._resource(new.get("kind"))
        meta = new["metadata"]
        return self._modify(res, meta.get("namespace"), meta.get("name"), lambda _old: new)

    def update_status(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Replace only ``status`` (the /status subresource); the rest stays as stored."""
        new = self._copy_in(obj)
        res = self._resource(new.get("kind"))
        meta = new["metadata"]

        def keep_all_but_status(old: dict[str, Any]) -> dict[str, Any]:
            out = dict(old)
            out["metadata"] = dict(old["metadata"])
            if meta.get("resourceVersion"):
                out["metadata"]["resourceVersion"] = meta["resourceVersion"]
            out["status"] = new.get("status", {})
            return out

        return self._modify(res, meta.get("namespace"), meta.get("name"), keep_all_but_status)

    def patch(self, kind: str, namespace: str | None, name: str,
              patch: dict[str, Any] | builtins.list[Any],
              patch_type: str = "merge", *, subresource: str | None = None) -> dict[str, Any]:
        """Patch with "merge", "strategic" or "json"; ``subresource="status"`` keeps all
        but the patched object's status."""
        res = self._resource(kind)
        patch = orjson.loads(orjson.dumps(patch))

        def patched(old: dict[str, Any]) -> dict[str, Any]:
            out = apply_patch(old, patch, patch_type)
            if subresource == "status":
                return {**old, "status": out.get("status", {})}
            return out

        return self._modify(res, namespace, name, patched)

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create, or three-way merge into the stored object like ``kubectl apply``: fields
        the manifest never set (status, allocated IPs, ...) stay, removed ones go."""
        new = self._copy_in(obj)
        res = self._resource(new.get("kind"))
        meta = new["metadata"]
        meta.pop("resourceVersion", None)
        namespace = meta.get("namespace") or ("default" if res.namespaced else None)
        name = meta.get("name")
        akey = (res.kind, namespace or "", name or "")
        while True:
            try:
                last = self._applied.get(akey, {})
                diff = merge_diff(last, new)
                out = self._modify(res, namespace, name, functools.partial(_patched, diff))
            except ApiError as err:
                if err.code != 404:
                    raise
                try:
                    out = self.create(new)
                except ApiError as err2:
                    if err2.code == 409 and err2.reason == "AlreadyExists":
                        continue  # created concurrently: merge into it instead
                    raise
            self._applied[akey] = new
            return out

    def delete(self, kind: str, namespace: str | None, name: str) -> dict[str, Any]:
        """Delete and return the object with its final resourceVersion; 404 if missing.
        Deleting a Namespace deletes everything in it first."""
        res = self._resource(kind)
        with self._locked():
            key = self._key(res, namespace, name)
            old = self._objects[res.kind].get(key)
            if old is None:
                raise ApiError(404, "NotFound", f'{res.plural} "{name}" not found')
            if res.kind == "Namespace":
                for other in BY_KIND.values():
                    if other.namespaced:
                        for k in [k for k in self._objects[other.kind] if k[0] == name]:
                            self._remove(other, k)
            entry = self._remove(res, key)
        self._dispatch()
        return orjson.loads(entry.raw)

    def compact(self, upto: int | None = None) -> None:
        """Forget the watch history up to and including ``upto`` (all of it when None):
        any older resourceVersion now gets 410 Gone. Compacting only up to an earlier
        point, as the API server's periodic etcd compaction does, spares the watches that
        are behind by less than the interval a relist."""
        with self._lock:
            upto = self._rv if upto is None else min(upto, self._rv)
            while self._history and self._history[0].rv <= upto:
                self._history.popleft()
            self._floor = max(self._floor, upto)
        self.wake()

    @property
    def revision(self) -> int:
        """The resourceVersion of the newest change, as an integer."""
        with self._lock:
            return self._rv

    # -- extension points -----------------------------------------------------------

    def add_admission(self, kind: str, fn: Admission) -> None:
        """Run ``fn(new, old)`` on create/update/patch of ``kind`` ("*" for all) before commit;
        it returns the object to store (old is None on create) or raises ApiError 422."""
        with self._lock:
            self._admission.setdefault(kind, []).append(fn)

    def subscribe(self, callback: Callback) -> Callable[[], None]:
        """Call ``callback(event_type, kind, obj)`` after each commit, in commit order,
        outside the store lock, in a mutating thread; returns an unsubscribe function."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    # -- internals -------------------------------------------------------------------

    @staticmethod
    def _resource(kind: Any) -> Resource:
        res = BY_KIND.get(kind) if isinstance(kind, str) else None
        if res is None:
            raise ApiError(404, "NotFound", f"the lab API does not serve kind {kind!r}")
        return res

    @staticmethod
    def _key(res: Resource, namespace: str | None, name: str | None) -> tuple[str, str]:
        if not name:
            raise ApiError(422, "Invalid", f"{res.kind}: metadata.name: Required value")
        return ((namespace or "default") if res.namespaced else "", name)

    @staticmethod
    def _copy_in(obj: Any) -> dict[str, Any]:
        if not isinstance(obj, dict):
            raise ApiError(400, "BadRequest", "the object must be a JSON/YAML mapping")
        try:
            new = orjson.loads(orjson.dumps(obj))
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise ApiError(400, "BadRequest", f"object is not JSON: {exc}") from None
        res = ApiStore._resource(new.get("kind"))
        if not isinstance(new.get("metadata"), dict):
            new["metadata"] = {}
        new["apiVersion"] = res.api_version
        if res.namespaced:
            new["metadata"]["namespace"] = new["metadata"].get("namespace") or "default"
        else:
            new["metadata"].pop("namespace", None)
        return new

    def _locked(self) -> _Locked:
        return _Locked(self._lock, self._local)

    def _admit(self, res: Resource, new: dict[str, Any], old: dict[str, Any] | None
               ) -> dict[str, Any]:
        fns = self._admission.get(res.kind, []) + self._admission.get("*", [])
        if not fns:
            return new
        for fn in fns:
            new = fn(new, orjson.loads(orjson.dumps(old)) if old is not None else None)
            if not isinstance(new, dict):
                raise ApiError(500, "InternalError", f"admission for {res.kind} returned no object")
        # Admission may hand back objects it shares with others: take our own copy.
        return self._copy_in(new)

    @staticmethod
    def _validate(res: Resource, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        name = meta.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ApiError(422, "Invalid",
                           f"{res.kind} {name!r}: metadata.name: must be a lowercase "
                           "RFC 1123 subdomain")
        for field in ("labels", "annotations"):
            values = meta.get(field)
            if values is not None and not (isinstance(values, dict) and all(
                    isinstance(v, str) for v in values.values())):
                raise ApiError(422, "Invalid",
                               f"{res.kind} {name}: metadata.{field}: values must be strings")

    def _modify(self, res: Resource, namespace: str | None, name: str | None,
                change: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        with self._locked():
            key = self._key(res, namespace, name)
            old = self._objects[res.kind].get(key)
            if old is None:
                raise ApiError(404, "NotFound", f'{res.plural} "{name}" not found')
            new = change(orjson.loads(old.raw))
            new["kind"] = res.kind
            new = self._copy_in(new)
            meta, old_meta = new["metadata"], old.obj["metadata"]
            wanted = meta.get("resourceVersion")
            if wanted and wanted != old_meta["resourceVersion"]:
                raise ApiError(409, "Conflict",
                               f'Operation cannot be fulfilled on {res.plural} "{name}": the '
                               "object has been modified; please apply your changes to the "
                               "latest version and try again")
            if (meta.get("namespace"), meta.get("name")) != (
                    old_meta.get("namespace"), old_meta.get("name")):
                raise ApiError(400, "BadRequest",
                               f"{res.kind} {name}: metadata.name and namespace are immutable")
            new = self._admit(res, new, old.obj)
            self._validate(res, new)
            meta = new["metadata"]
            for k in ("uid", "creationTimestamp", "namespace", "name"):
                if k in old_meta:
                    meta[k] = old_meta[k]
            meta["resourceVersion"] = old_meta["resourceVersion"]
            gen = old_meta.get("generation", 1)
            meta["generation"] = gen + 1 if _body(new) != _body(old.obj) else gen
            if new == old.obj:
                return orjson.loads(old.raw)  # a no-op write makes no event, as on a cluster
            entry = self._commit("MODIFIED", res, key, new, old)
        self._dispatch()
        return orjson.loads(entry.raw)

    def _remove(self, res: Resource, key: tuple[str, str]) -> Entry:
        old = self._objects[res.kind][key]
        final = dict(old.obj)
        final["metadata"] = dict(old.obj["metadata"])
        entry = self._commit("DELETED", res, key, final, old)
        self._applied.pop((res.kind, *key), None)
        return entry

    def _commit(self, etype: str, res: Resource, key: tuple[str, str],
                obj: dict[str, Any], old: Entry | None) -> Entry:
        """Record one change under the lock: new resourceVersion, history, wake watchers."""
        self._rv += 1
        self._last_change[res.kind] = self._rv
        obj["metadata"]["resourceVersion"] = str(self._rv)
        entry = Entry.of(obj)
        if etype == "DELETED":
            del self._objects[res.kind][key]
            self._sorted[res.kind] = None
        else:
            if etype == "ADDED":
                self._sorted[res.kind] = None
            self._objects[res.kind][key] = entry
        if len(self._history) == self._history.maxlen:
            self._floor = self._history[0].rv
        event = Event(self._rv, etype, res.kind, entry, old if etype != "ADDED" else None)
        self._history.append(event)
        if self._subscribers:
            self._pending.append(event)
        self._changed.notify_all()
        self._changed_kind[res.kind].notify_all()
        return entry

    def _dispatch(self) -> None:
        """Deliver pending events to subscribers in commit order. Whoever holds the
        dispatch lock drains the queue, so concurrent writers never reorder events; a
        write made inside a callback is delivered after the current event, not nested."""
        if getattr(self._local, "dispatching", False) or getattr(self._local, "depth", 0):
            return
        with self._dispatch_lock:
            self._local.dispatching = True
            try:
                while True:
                    with self._lock:
                        if not self._pending:
                            return
                        event = self._pending.popleft()
                        subscribers = list(self._subscribers)
                    for cb in subscribers:
                        try:
                            cb(event.type, event.kind, orjson.loads(event.new.raw))
                        except Exception:
                            meta = event.new.obj["metadata"]
                            log.exception("subscriber failed kind=%s object=%s/%s event=%s",
                                          event.kind, meta.get("namespace", ""),
                                          meta.get("name"), event.type)
            finally:
                self._local.dispatching = False


def _patched(diff: Any, old: Any) -> Any:
    return merge_patch(old, diff)
