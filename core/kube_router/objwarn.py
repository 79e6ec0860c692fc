"""Warnings about bad objects: one line per object and problem, and never a flood.

A malformed object is skipped with one warning naming it. Every sync looks at it again,
so without memory the same line would repeat every resync; and a thousand bad objects at
once would bury everything else in the log. ``ObjectWarnings.warn`` logs a problem the
first time it is seen for an object (a new problem of the same object is news; one already
reported is reported again only after the object was forgotten), and at most ``rate``
lines a second beyond a burst; what the limit holds back is counted and reported in one
summary line once the flood is over.

An instance made with ``kind=`` is told by the agent when an object of that kind is
deleted (:func:`forget_deleted`), so what it remembers is bounded by the objects that exist,
whoever owns it (a hook plugin has no controller of its own to prune it).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable

from kube_router.kube.events import Event
from kube_router.kube.events import EventType

#: Objects remembered at most: a bounded memory even when objects are never forgotten.
MAX_REMEMBERED = 50_000
#: Distinct problems remembered per object.
MAX_PROBLEMS = 16

#: The instances that named the kind of their keys, by kind.
_BY_KIND: dict[str, weakref.WeakSet[ObjectWarnings]] = {}


def forget_deleted(event: Event) -> None:
    """A bus subscriber: a deleted object's problems are forgotten by every instance that
    keys that kind (its warnings held memory for an object that no longer exists)."""
    if event.type is EventType.DELETED:
        for w in _BY_KIND.get(event.kind, ()):
            w.forget(event.key)


class ObjectWarnings:
    """Per-object, rate-limited warnings for one logger.

    ``warn(key, problem, line)`` logs ``line`` unless ``key`` was already warned about
    for the same ``problem`` (an object may have several); ``forget(key)`` (the object is
    gone or fixed) lets its problems be reported again. ``kind`` (the kind of object its
    keys name) makes deletions of that kind forget their keys by themselves. Not
    thread-safe: call it from the event loop.
    """

    def __init__(self, logger: logging.Logger, *, rate: float = 20.0, burst: int = 100,
                 clock: Callable[[], float] = time.monotonic, kind: str | None = None) -> None:
        self._log = logger
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._stamp = clock()
        self._seen: OrderedDict[str, set[str]] = OrderedDict()
        self.logged = 0
        self.suppressed = 0  # held back by the rate limit, not yet summarised
        self.suppressed_total = 0
        if kind is not None:
            _BY_KIND.setdefault(kind, weakref.WeakSet()).add(self)

    def warn(self, key: str, problem: str, line: str, *args: object) -> bool:
        """Log ``line % args`` once for (key, problem); True when it was logged."""
        problems = self._seen.get(key)
        if problems is None:
            problems = self._seen[key] = set()
            if len(self._seen) > MAX_REMEMBERED:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(key)
            if problem in problems:
                return False
            if len(problems) >= MAX_PROBLEMS:
                problems.clear()
        problems.add(problem)
        self._refill()
        if self._tokens < 1.0:
            self.suppressed += 1
            self.suppressed_total += 1
            return False
        self._tokens -= 1.0
        self._summarise()
        self._log.warning(line, *args)
        self.logged += 1
        return True

    def forget(self, key: str) -> None:
        self._seen.pop(key, None)

    def forget_missing(self, present: Callable[[str], bool]) -> None:
        """Forget every object for which ``present(key)`` is false (after a full sync)."""
        for key in [k for k in self._seen if not present(k)]:
            del self._seen[key]

    def clear(self) -> None:
        self._seen.clear()

    def flush(self) -> None:
        """Report what the rate limit held back, if anything (call it after a sync)."""
        self._refill()
        self._summarise()

    def __len__(self) -> int:
        return len(self._seen)

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def _summarise(self) -> None:
        if self.suppressed and self._tokens >= 1.0:
            self._tokens -= 1.0
            self._log.warning("bad objects: %d more warnings held back by the rate limit",
                              self.suppressed)
            self.suppressed = 0
