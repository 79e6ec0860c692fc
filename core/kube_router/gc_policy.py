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

The switch is process-wide, so every holder goes through the one :data:`bulk` counter
(informer threads and the event loop alike); nothing else in the agent touches ``gc``.
"""

from __future__ import annotations

import gc
import threading


class BulkWork:
    """Counts the bulk work in progress; a context manager, reentrant across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # held for a few instructions, never across work
        self._holders = 0
        self._we_disabled = False

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
                # the cycles that died while it was off go first: frozen, they would stay
                gc.collect()
                gc.freeze()
                if self._we_disabled:
                    self._we_disabled = False
                    gc.enable()


#: The one counter of the process.
bulk = BulkWork()
