"""The informer's retry pauses, on an injected clock and random source."""

from __future__ import annotations

import pytest

from kube_router.kube.backoff import Backoff
from kube_router.kube.backoff import BackoffPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fail_for(backoff: Backoff, clock: Clock, seconds: float) -> list[float]:
    """Fail at once after every pause until ``seconds`` have passed; the pauses taken."""
    pauses = []
    end = clock.now + seconds
    while clock.now < end:
        pause = backoff.next()
        pauses.append(pause)
        clock.now += pause
    return pauses


def test_steps_double_from_initial_up_to_the_cap() -> None:
    clock = Clock()
    backoff = Backoff(BackoffPolicy(initial=0.2, cap=1.0, reset_after=60.0),
                      clock=clock, rand=lambda: 1.0)  # the top of each draw
    pauses = fail_for(backoff, clock, 5.0)
    assert pauses[:5] == pytest.approx([0.2, 0.4, 0.8, 1.0, 1.0])
    assert max(pauses) == pytest.approx(1.0)


def test_a_long_outage_is_tried_at_least_once_per_cap_however_long() -> None:
    clock = Clock()
    backoff = Backoff(clock=clock, rand=lambda: 1.0)
    pauses = fail_for(backoff, clock, 600.0)
    assert max(pauses) <= BackoffPolicy().cap
    # the server returning at any instant is met within one cap
    assert len(pauses) >= 600.0 / BackoffPolicy().cap


def test_each_pause_is_drawn_between_half_and_all_of_the_step() -> None:
    draws = iter([0.0, 0.5, 1.0])
    clock = Clock()
    backoff = Backoff(BackoffPolicy(initial=1.0, cap=1.0), clock=clock,
                      rand=lambda: next(draws))
    assert [backoff.next() for _ in range(3)] == pytest.approx([0.5, 0.75, 1.0])


def test_a_retry_after_longer_than_the_pause_is_waited_out() -> None:
    clock = Clock()
    backoff = Backoff(clock=clock, rand=lambda: 1.0)
    assert backoff.next(at_least=5.0) == pytest.approx(5.0)
    # and the step goes on from where it was, not from the Retry-After
    clock.now += 5.0
    assert backoff.next() == pytest.approx(0.4)


def test_the_step_starts_over_only_after_a_healthy_period() -> None:
    clock = Clock()
    policy = BackoffPolicy(initial=0.2, cap=1.0, reset_after=60.0)
    backoff = Backoff(policy, clock=clock, rand=lambda: 1.0)
    fail_for(backoff, clock, 10.0)
    assert backoff.step == pytest.approx(1.0)
    # the connection works for half a minute, then fails: still at the cap (a server that
    # takes connections and drops them is not tried in a tight loop)
    clock.now += 30.0
    assert backoff.next() == pytest.approx(1.0)
    # a minute without a failure: the next one is retried quickly again
    clock.now += 1.0 + 60.0
    assert backoff.next() == pytest.approx(0.2)
