"""The circuit breaker's states, on a clock the test moves."""

from __future__ import annotations

from query.breaker import Breaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_threshold_then_half_opens_for_one_trial() -> None:
    clock = Clock()
    breaker = Breaker(threshold=3, cooldown=10, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.failed()
    assert breaker.state == "closed"
    breaker.failed()
    assert breaker.state == "open" and not breaker.allow()
    assert breaker.retry_after() == 10
    clock.now += 10
    assert breaker.state == "half-open"
    assert breaker.allow()  # the one trial call
    assert not breaker.allow()  # nobody else while it runs
    breaker.succeeded()
    assert breaker.state == "closed" and breaker.allow()


def test_failed_trial_opens_again_for_a_full_cooldown() -> None:
    clock = Clock()
    breaker = Breaker(threshold=1, cooldown=5, clock=clock)
    breaker.failed()
    clock.now += 5
    assert breaker.allow()
    breaker.failed()
    assert breaker.state == "open" and breaker.retry_after() == 5


def test_success_resets_the_count_and_throttling_does_not_count() -> None:
    breaker = Breaker(threshold=2, cooldown=5, clock=Clock())
    breaker.failed()
    breaker.succeeded()
    breaker.failed()
    assert breaker.state == "closed"
    breaker.released()  # throttled: says nothing about health
    assert breaker.state == "closed" and breaker.allow()
