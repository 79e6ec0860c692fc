"""The process's collector policy: frozen cycles that die later are collected in time."""

from __future__ import annotations

import gc
import weakref

import pytest

from kube_router.gc_policy import BulkWork


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture(autouse=True)
def _restore_gc() -> object:
    was = gc.isenabled()
    yield None
    gc.unfreeze()
    if was:
        gc.enable()


def _cycle() -> tuple[Node, weakref.ref[Node]]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a, weakref.ref(b)


def test_a_frozen_cycle_that_dies_later_goes_at_the_next_deep_collection() -> None:
    now = [0.0]
    bulk = BulkWork(deep_every=300.0, clock=lambda: now[0])
    a, gone = _cycle()
    with bulk:
        pass  # the cycle is alive at the freeze
    del a
    gc.collect()
    assert gone() is not None  # frozen: an ordinary collection does not look at it
    now[0] = 100.0
    with bulk:
        pass
    assert gone() is not None and bulk.deep_collections == 0
    now[0] = 301.0
    with bulk:
        pass
    assert gone() is None and bulk.deep_collections == 1
    assert gc.isenabled()


def test_nested_holders_collect_once_at_the_end() -> None:
    now = [1000.0]
    bulk = BulkWork(deep_every=1.0, clock=lambda: now[0])
    with bulk:
        assert not gc.isenabled()
        with bulk:
            pass
        assert not gc.isenabled() and bulk.deep_collections == 0
    assert gc.isenabled() and bulk.deep_collections == 0  # not due: made at 1000.0
    now[0] = 1002.0
    with bulk:
        pass
    assert bulk.deep_collections == 1
