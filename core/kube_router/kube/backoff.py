"""How long an informer waits before it tries the API server again after a failure.

Exponential from ``initial``, doubled at each failure up to ``cap``, each pause drawn
between half and all of the step so that many agents do not retry in step; after
``reset_after`` seconds without a failure it starts from ``initial`` again (a server that
accepts and drops connections at once keeps the step at the cap instead of being tried
again every fraction of a second).

Why the cap is one second, not client-go's tens of seconds: a dead server cannot say when
it is back, so the only bound on "a change made as it returns reaches the node" is the
interval between attempts. An attempt at a server that is down costs one refused
connection; a returning server meets each informer of each agent once per interval, at
an instant drawn at random within it, so a fleet's reconnects arrive spread over a
second instead of at once, and an overloaded server answers 429 with a Retry-After that
is waited out before the next try.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class BackoffPolicy:
    #: The first step after a healthy period (seconds).
    initial: float = 0.2
    #: The longest step, however long the failures go on.
    cap: float = 1.0
    #: This long without a failure and the next one starts from ``initial`` again.
    reset_after: float = 60.0


class Backoff:
    """The pauses of one retry loop; ``clock`` and ``rand`` are injectable for tests."""

    def __init__(self, policy: BackoffPolicy | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 rand: Callable[[], float] = random.random) -> None:
        self.policy = policy or BackoffPolicy()
        self._clock = clock
        self._rand = rand
        self._step = 0.0
        # When the last pause ended (the retry after it): the healthy period counts from it.
        self._retried_at: float | None = None

    @property
    def step(self) -> float:
        """The step the last pause was drawn from (0 before the first failure)."""
        return self._step

    def next(self, at_least: float = 0.0) -> float:
        """The pause before the next attempt, a failure having just happened; never less
        than ``at_least`` (a Retry-After the server sent)."""
        p = self.policy
        now = self._clock()
        if self._retried_at is None or now - self._retried_at >= p.reset_after:
            self._step = p.initial
        else:
            self._step = min(self._step * 2, p.cap)
        delay = max(self._step * (0.5 + self._rand() / 2), at_least)
        self._retried_at = now + delay
        return delay
