"""The broadcast bus between informers and controllers.

Guarantees, in plain words:

- Every subscriber of a kind receives every event of that kind, in the order the informer
  saw them.
- Each subscriber has its own queue and task: a subscriber that raises loses only the
  event it raised on; a backlog in one queue never holds events back from another.
- Publishing never blocks and never raises: informers never wait for subscribers.

Callbacks run on the agent's event loop, so they must be cheap and must not block (a
controller marks keys dirty and returns); the real work happens in the controller's own
task.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable

from kube_router.kube.events import Event

log = logging.getLogger(__name__)


Subscriber = Callable[[Event], None]


class Subscription:
    """One subscriber's queue and the task that feeds it its events."""

    def __init__(self, name: str, callback: Subscriber) -> None:
        self.name = name
        self.callback = callback
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while True:
            event = await self.queue.get()
            try:
                self.callback(event)
            except Exception:
                log.exception(
                    "subscriber failed subscriber=%s kind=%s key=%s",
                    self.name, event.kind, event.key,
                )


class Bus:
    """Fan events out to subscribers by kind. Lives on the agent's event loop."""

    def __init__(self) -> None:
        self._subs: dict[str, list[Subscription]] = defaultdict(list)
        self.published: dict[str, int] = defaultdict(int)

    def subscribe(self, kind: str, callback: Subscriber, *, name: str = "") -> Subscription:
        sub = Subscription(name or getattr(callback, "__qualname__", repr(callback)), callback)
        self._subs[kind].append(sub)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return sub  # started by start() once the loop runs
        sub.task = loop.create_task(sub.run(), name=f"bus:{kind}:{sub.name}")
        return sub

    def kinds(self) -> set[str]:
        return set(self._subs)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for kind, subs in self._subs.items():
            for sub in subs:
                if sub.task is None:
                    sub.task = loop.create_task(sub.run(), name=f"bus:{kind}:{sub.name}")

    async def stop(self) -> None:
        tasks = [s.task for subs in self._subs.values() for s in subs if s.task]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def publish(self, event: Event) -> None:
        self.published[event.kind] += 1
        for sub in self._subs.get(event.kind, ()):
            sub.queue.put_nowait(event)

    async def drain(self) -> None:
        """Wait until every subscriber has taken every event published so far (for tests)."""
        while any(s.queue.qsize() for subs in self._subs.values() for s in subs):
            await asyncio.sleep(0)
        await asyncio.sleep(0)
