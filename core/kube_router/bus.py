"""The broadcast bus between informers and controllers.

Guarantees, in plain words:

- Every subscriber of a kind receives every event of that kind, in the order the informer
  saw them.
- A subscriber receives an event in the same call that put the change in the store, on
  the agent's event loop: when a controller wakes for an event, the store already holds
  that change (or a newer one), and the informer's resourceVersion is not reported past
  an event its subscribers have not been given.
- A subscriber that raises loses only the event it raised on; the others still get it.
- Publishing never raises: informers never depend on subscribers.

There is no queue here: the one queue of an event's path is the controller's own work
queue. So callbacks must be cheap and must not block (a controller marks keys dirty and
returns); the real work happens in the controller's own task.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable

from kube_router.kube.events import Event

log = logging.getLogger(__name__)


Subscriber = Callable[[Event], None]


class Bus:
    """Fan events out to subscribers by kind. Lives on the agent's event loop."""

    def __init__(self) -> None:
        self._subs: dict[str, list[tuple[str, Subscriber]]] = defaultdict(list)
        self.published: dict[str, int] = defaultdict(int)

    def subscribe(self, kind: str, callback: Subscriber, *, name: str = "") -> None:
        self._subs[kind].append(
            (name or getattr(callback, "__qualname__", repr(callback)), callback))

    def kinds(self) -> set[str]:
        return set(self._subs)

    def publish(self, event: Event) -> None:
        self.published[event.kind] += 1
        for name, callback in self._subs.get(event.kind, ()):
            try:
                callback(event)
            except Exception:
                log.exception("subscriber failed subscriber=%s kind=%s key=%s",
                              name, event.kind, event.key)
