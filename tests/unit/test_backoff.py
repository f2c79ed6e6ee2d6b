"""The retry backoff: plain rules, no clock."""

import pytest

from etcdwatch.backoff import Backoff


def test_waits_grow_to_the_cap_within_the_upper_half_and_reset():
    low, high = Backoff(1, 8, rng=lambda: 0.0), Backoff(1, 8,
                                                        rng=lambda: 0.999)
    lows = [low.failed() for _ in range(6)]
    highs = [high.failed() for _ in range(6)]
    assert lows == [0.5, 1, 2, 4, 4, 4]
    assert highs == pytest.approx([1, 2, 4, 8, 8, 8], rel=0.01)
    assert low.failures == 6
    low.succeeded()
    assert low.failures == 0 and low.failed() == 0.5


def test_a_crowd_that_failed_together_spreads_out():
    import random
    rng = random.Random(7)
    waits = sorted(Backoff(2, 16, rng=rng.random).failed()
                   for _ in range(200))
    assert waits[0] >= 1.0 and waits[-1] <= 2.0
    assert waits[-1] - waits[0] > 0.8


def test_very_many_failures_stay_at_the_cap():
    b = Backoff(0.1, 3, rng=lambda: 0.5)
    for _ in range(2000):
        wait = b.failed()
    assert wait == 2.25


@pytest.mark.parametrize('initial,maximum', [(0, 1), (-1, 1), (2, 1)])
def test_bad_bounds(initial, maximum):
    with pytest.raises(ValueError, match='initial'):
        Backoff(initial, maximum)
