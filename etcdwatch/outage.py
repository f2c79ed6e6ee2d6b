"""Logging an etcd outage once, rather than once per retry.

A loop that retries every few seconds while etcd is down would log the same
error, with the same traceback, hundreds of times per process.
:class:`OutageLog` turns a run of failures into three kinds of line: a
warning when it starts, a reminder every ``remind_every`` seconds while it
lasts, and an info line when etcd answers again, saying how long it was
gone.  Every failure is still logged at DEBUG, with its traceback.
"""

import time
from typing import Any, Callable, Optional


class OutageLog(object):
    """The log of one loop's failures to reach etcd.

    :param log: the logger (stdlib or oslo.log) to write to.
    :param what: what the loop does, for the messages ("watcher x:
        watching /p").
    :param remind_every: seconds between reminders while etcd stays down.
    :param clock: monotonic seconds (a test may pass its own).

    Not thread-safe: one per loop.
    """

    def __init__(self, log: Any, what: str, remind_every: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.what = what
        self.remind_every = remind_every
        self._clock = clock
        self._since: Optional[float] = None
        self._reminded = 0.0
        #: Failures in the current outage (0 while etcd answers).
        self.failures = 0

    @property
    def in_outage(self) -> bool:
        return self._since is not None

    def seconds(self) -> float:
        """How long the current outage has lasted (0.0 when there is none)."""
        return 0.0 if self._since is None else self._clock() - self._since

    def failed(self, exc: BaseException, retry_in: float) -> None:
        """One more failure to reach etcd; the loop retries in retry_in s."""
        now = self._clock()
        self.failures += 1
        self.log.debug('%s failed (attempt %d): %s', self.what,
                       self.failures, exc, exc_info=True)
        if self._since is None:
            self._since = self._reminded = now
            self.log.warning('%s: etcd unavailable (%s); retrying every %ss',
                             self.what, exc, retry_in)
        elif now - self._reminded >= self.remind_every:
            self._reminded = now
            self.log.warning('%s: etcd still unavailable after %.0fs '
                             '(%d attempts): %s', self.what,
                             now - self._since, self.failures, exc)

    def succeeded(self) -> None:
        """etcd answered: ends the outage, if there was one."""
        if self._since is None:
            return
        self.log.info('%s: etcd available again after %.1fs (%d failed '
                      'attempts)', self.what, self._clock() - self._since,
                      self.failures)
        self._since = None
        self.failures = 0
