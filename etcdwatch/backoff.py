"""How long to wait before retrying etcd: capped, growing, jittered.

After an etcd restart, every watcher and candidate of a deployment fails at
the same moment.  Retrying on a fixed rhythm would bring them all back at
the same moment too, and hundreds of full re-reads would hit the new etcd
together.  :class:`Backoff` doubles the wait with each consecutive failure
up to a cap, and draws each wait at random from the upper half of its
ceiling ("equal jitter"): a retry never comes sooner than half the ceiling,
so a dead etcd never spins a loop, and a crowd that failed together spreads
over half a ceiling.

Plain rules: no clock, no sleep, no I/O; the caller waits.
"""

import random
from typing import Callable


class Backoff(object):
    """The wait before each retry of one loop.

    :param initial: the ceiling of the first wait, in seconds.
    :param maximum: the largest ceiling; waits never exceed it.
    :param rng: returns a float in [0, 1) (a test may pass its own).

    The n-th consecutive failure waits a random time in
    ``[c / 2, c]`` where ``c = min(maximum, initial * 2 ** (n - 1))``;
    :meth:`succeeded` starts over.  Not thread-safe: one per loop.
    """

    def __init__(self, initial: float, maximum: float,
                 rng: Callable[[], float] = random.random) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError('need 0 < initial <= maximum, not %r, %r'
                             % (initial, maximum))
        self.initial = initial
        self.maximum = maximum
        self._rng = rng
        #: Consecutive failures since the last success.
        self.failures = 0

    def ceiling(self) -> float:
        """The ceiling the next failure's wait is drawn under."""
        if self.failures >= 64:      # 2 ** 64 * initial: past any cap
            return self.maximum
        return min(self.maximum, self.initial * 2 ** self.failures)

    def failed(self) -> float:
        """Count one more failure; return how long to wait, in seconds."""
        ceiling = self.ceiling()
        self.failures += 1
        return ceiling * (0.5 + 0.5 * self._rng())

    def succeeded(self) -> None:
        """The loop got through: the next failure starts from ``initial``."""
        self.failures = 0
