"""The lab's convergence gate: has every agent applied the newest change of each kind?

resourceVersions are opaque strings: a client may compare two for equality and hand one
back to the server, nothing more. So the lab never orders what an agent reports by reading
it as a number. It notes the newest change of each kind it saw (the "want" of a wait step) and
asks whoever can place versions, the store that issued them or the order the lab saw them in,
whether the agent's version is that change or one after it. A version nobody can place yet
(a bookmark or a list the lab did not see) counts as behind until it can be.

Agents report, per controller, ``resourceVersions``: each kind's version as of the last
complete sync. A wait step's want is a token ``Kind=rv,Kind=rv``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

#: ``placed(kind, have, want)``: True when ``have`` is ``want`` or a later version of
#: ``kind``, False when earlier, None when it cannot tell (yet).
Placer = Callable[[str, str, str], bool | None]
#: What a change was of: (namespace, name, deleted).
Change = tuple[str | None, str, bool]
#: No versions seen of a kind.
_NONE: OrderedDict[str, tuple[int, Change | None]] = OrderedDict()


def make_token(versions: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(versions.items()) if v)


def parse_token(token: str) -> dict[str, str]:
    """``Kind=rv,...`` -> {kind: rv}; the versions stay strings."""
    out = {}
    for part in token.split(","):
        kind, _, rv = part.partition("=")
        if kind and rv:
            out[kind] = rv
    return out


def unsynced_reason(doc: dict | str, token: str, placed: Placer) -> str | None:
    """Why an agent whose ``/readyz`` answered ``doc`` (or the error text) has not applied
    the changes in ``token`` (None: it has)."""
    if isinstance(doc, str):
        return doc
    want = parse_token(token)
    controllers = doc.get("controllers") or {}
    if not controllers:
        return "no controllers reported"
    behind = []
    for name, c in sorted(controllers.items()):
        c = c or {}
        versions = c.get("resourceVersions")
        if not isinstance(versions, dict):
            return f"{name} reports no resourceVersions per kind"
        err = c.get("lastError")
        if not c.get("synced") or not versions:
            behind.append(f"{name} not synced yet" + (f" ({err})" if err else ""))
            continue
        for kind, have in sorted(versions.items()):
            if kind not in want:
                continue
            have = str(have or "")
            verdict = placed(kind, have, want[kind]) if have else False
            if not verdict:
                what = "" if verdict is False else " (not placed yet)"
                behind.append(f"{name} {kind} at {have or '-'}{what} of {want[kind]}"
                              + (f" ({err})" if err else ""))
    return "behind: " + ", ".join(behind) if behind else None


class SeenOrder:
    """The versions of each kind in the order the lab's own list-and-watch saw them, with
    the object each change was of: a watch delivers one kind's changes in order, so two
    versions the lab saw are placed by when it saw them, never by their text."""

    def __init__(self, limit: int = 100_000) -> None:
        self._limit = limit
        self._n = 0
        #: kind -> rv -> (sequence, (namespace, name, deleted) or None for a list's version)
        self._seen: dict[str, OrderedDict[str, tuple[int, Change | None]]] = {}
        self._last: dict[str, str] = {}

    def note(self, kind: str, rv: str, change: Change | None = None) -> None:
        if not rv:
            return
        seen = self._seen.setdefault(kind, OrderedDict())
        if rv in seen:
            return
        self._n += 1
        seen[rv] = (self._n, change)
        self._last[kind] = rv
        if len(seen) > self._limit:
            seen.popitem(last=False)

    def last(self) -> dict[str, str]:
        """The newest version of each kind: its last change, or the list after it."""
        return dict(self._last)

    def place(self, kind: str, have: str, want: str) -> bool | None:
        if have == want:
            return True
        seen = self._seen.get(kind, _NONE)
        if have in seen and want in seen:
            return seen[have][0] > seen[want][0]
        return None

    def change(self, kind: str, rv: str) -> Change | None:
        """(namespace, name, deleted) of the change the lab saw at ``rv``."""
        got = self._seen.get(kind, _NONE).get(rv)
        return got[1] if got else None
