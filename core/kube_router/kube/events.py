"""What an informer reports of one object's change: the events the bus carries."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from kube_router.kube.records import Record


class EventType(enum.Enum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    type: EventType
    key: str  # "namespace/name", or "name" for cluster-scoped kinds
    new: Record | None  # None for DELETED
    old: Record | None  # None for ADDED
