"""The informer's cache of one kind, with secondary indexes.

Only the agent's event loop mutates a store; controllers read it from the same loop, so
no lock is needed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator

from kube_router.kube.records import Record

IndexFunc = Callable[[Record], Iterable[str]]


class Store:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Record] = {}
        self._index_funcs: dict[str, IndexFunc] = {}
        self._indexes: dict[str, defaultdict[str, set[str]]] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[Record]:
        return iter(self._items.values())

    def get(self, key: str) -> Record | None:
        return self._items.get(key)

    def keys(self) -> list[str]:
        return list(self._items)

    def items(self) -> Iterator[tuple[str, Record]]:
        """(key, record) pairs; the store must not change while they are read."""
        return iter(self._items.items())

    def add_index(self, name: str, func: IndexFunc) -> None:
        """Index every record under the values ``func`` returns for it. Declaring an index
        again with the same function is a no-op; with another one, an error."""
        have = self._index_funcs.get(name)
        if have is not None:
            if have is not func:
                raise ValueError(f"index {name!r} of {self.kind} is already defined "
                                 f"by {getattr(have, '__qualname__', have)!r}")
            return
        self._index_funcs[name] = func
        index: defaultdict[str, set[str]] = defaultdict(set)
        for key, rec in self._items.items():
            for value in func(rec):
                index[value].add(key)
        self._indexes[name] = index

    def by_index(self, name: str, value: str) -> list[Record]:
        return [self._items[k] for k in self._indexes[name].get(value, ())]

    def put(self, key: str, record: Record) -> Record | None:
        """Insert or replace; return the previous record."""
        old = self._items.get(key)
        if old is not None:
            self._unindex(key, old)
        self._items[key] = record
        for name, func in self._index_funcs.items():
            for value in func(record):
                self._indexes[name][value].add(key)
        return old

    def remove(self, key: str) -> Record | None:
        old = self._items.pop(key, None)
        if old is not None:
            self._unindex(key, old)
        return old

    def _unindex(self, key: str, record: Record) -> None:
        for name, func in self._index_funcs.items():
            index = self._indexes[name]
            for value in func(record):
                keys = index.get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del index[value]
