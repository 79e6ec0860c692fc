"""The process's one policy for Python's cyclic garbage collector, decided here only.

Bulk work (an informer parsing a list, a controller's full sync) allocates millions of
small objects that all stay alive, so every collection meanwhile walks a growing heap and
finds nothing: measured here, 30-50 % of a 70,000-object list, and a proxy's full sync of
10,000 Services likewise. So while any bulk work runs, collections are held off; reference
counting still frees what dies meanwhile, only cycles wait.

When the last bulk work ends, everything alive is moved out of the collector's sight
(``gc.freeze``): with 70,000 records cached, each full collection otherwise walks half a
million objects (about 0.25 s here) and stalls the event loop while it does. Records and
the controllers' tables are acyclic, so reference counting still frees the ones replaced
later; what died in cycles during the bulk work is collected once before the freeze.

A frozen object that later dies in a cycle stays until the next unfreeze, and each freeze
also catches what other work had in flight (a subprocess's transport and protocol, an
exception and its frames): over weeks of periodic syncs that adds up. So at most every
:data:`DEEP_EVERY` seconds the end of bulk work unfreezes everything first, and the one
collection then walks the whole heap (a fraction of a second at ten thousand Services).

The switch is process-wide, so every holder goes through the one :data:`bulk` counter
(informer threads and the event loop alike); nothing else in the agent touches ``gc``.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable

#: Seconds between collections that look at the frozen heap too.
DEEP_EVERY = 300.0


class BulkWork:
    """Counts the bulk work in progress; a context manager, reentrant across threads."""

    def __init__(self, deep_every: float = DEEP_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()  # held for a few instructions, never across work
        self._holders = 0
        self._we_disabled = False
        self._deep_every = deep_every
        self._clock = clock
        self._deep_at = clock()
        self.deep_collections = 0

    def __enter__(self) -> None:
        with self._lock:
            if self._holders == 0 and gc.isenabled():
                gc.disable()
                self._we_disabled = True
            self._holders += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders == 0:
                if self._clock() - self._deep_at >= self._deep_every:
                    gc.unfreeze()  # what died in cycles since an earlier freeze goes too
                    self._deep_at = self._clock()
                    self.deep_collections += 1
                # the cycles that died while it was off go first: frozen, they would stay
                gc.collect()
                gc.freeze()
                if self._we_disabled:
                    self._we_disabled = False
                    gc.enable()


#: The one counter of the process.
bulk = BulkWork()
