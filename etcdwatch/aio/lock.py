"""A fair distributed lock on etcd, on asyncio.

:class:`AsyncEtcdLock` keeps :class:`etcdwatch.lock.EtcdLock`'s semantics
(the same rules, :mod:`etcdwatch.rules.lock`, run it): the same queue of
keys, so threaded and asyncio waiters of one lock take turns in the order
they queued.
"""

import asyncio
import math
from typing import Any, Dict, Optional

from oslo_log import log as logging

from etcdwatch.aio import driving
from etcdwatch import backends
from etcdwatch import election as threaded_election
from etcdwatch import exceptions
from etcdwatch import keys
from etcdwatch.rules import lock as rules

LOG = logging.getLogger(__name__)

EtcdLockLost = rules.EtcdLockLost


class AsyncEtcdLock(object):
    """A lock named ``name`` below ``lock_path``, shared through etcd.

    ``name``, ``lock_path``, ``ttl``, ``max_silence`` and ``shared`` are
    :class:`etcdwatch.lock.EtcdLock`'s.

    :param client: an :class:`etcdwatch.aio.AsyncEtcd3Client` (or an
        :class:`~etcdwatch.backends.base.AsyncBackend`).

    The constructor does no I/O.  ``async with lock:`` acquires and
    releases.  Cancelling a task waiting in :meth:`acquire` withdraws its
    key from the queue.  One event loop; not re-entrant.
    """

    def __init__(self, client: Any, name: str, lock_path: str, ttl: float,
                 max_silence: Optional[float] = None,
                 shared: bool = False) -> None:
        self.lock_path = rules.check_arguments(name, lock_path, ttl,
                                               max_silence)
        if not isinstance(shared, bool):
            raise ValueError('shared must be True or False, not %r'
                             % (shared,))
        self._backend = backends.for_async_client(client)
        self.client = client
        self.name = name
        #: This waiter's id, the value of its key.
        self.id = (rules.SHARED if shared else '') + \
            threaded_election._make_id()
        self.prefix = self.lock_path + '/' + name
        self._state = rules.LockState(name, self.prefix, self.id, ttl,
                                      asyncio.Event, max_silence,
                                      shared=shared)
        self._busy = False
        self._queued: Optional[str] = None
        self._tasks: set = set()

    # -- what callers ask -------------------------------------------------

    @property
    def ttl(self) -> float:
        return self._state.ttl

    @property
    def is_held(self) -> bool:
        """True while etcd confirmed, within the local lease, that we hold.

        Never True past the local lease deadline (see
        :attr:`etcdwatch.lock.EtcdLock.is_held`).
        """
        return self._state.is_held()

    @property
    def fencing_token(self) -> Optional[int]:
        """The etcd index at which our key queued, while we hold; or None."""
        return self._state.fencing_token

    @property
    def key(self) -> Optional[str]:
        """Our key in the queue while we wait or hold, else None."""
        place = self._state.place
        return None if place is None else place.key

    async def acquire(self, blocking: bool = True,
                      timeout: Optional[float] = None) -> bool:
        """Wait for the lock; True once held, False if not in time.

        As :meth:`etcdwatch.lock.EtcdLock.acquire`.  Cancelled, it
        withdraws (deletes our key) before the cancellation propagates.
        """
        if timeout is not None:
            keys.check_duration('timeout', timeout)
        if not isinstance(blocking, bool):
            raise ValueError('blocking must be True or False, not %r'
                             % (blocking,))
        if self._busy or self._state.place is not None:
            raise RuntimeError('%s: this AsyncEtcdLock is already acquired '
                               'or acquiring (it is not re-entrant)'
                               % self.name)
        self._busy = True
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout

        def time_left():
            return math.inf if deadline is None else deadline - loop.time()

        def stopped():
            return time_left() <= 0

        async def sleep(seconds):
            await asyncio.sleep(max(0.0, min(seconds, time_left())))
            return False
        won = False
        try:
            won = await driving.drive(
                self._state.acquire(stopped, time_left, blocking),
                self._backend, self, sleep=sleep)
            return won
        finally:
            self._busy = False
            if not won:
                await asyncio.shield(self._give_up(sweep=True))

    async def release(self) -> bool:
        """Release the lock: delete our key, so the next waiter holds.

        True if our key was still there (deleted now), False if it had
        gone or etcd could not be reached, as
        :meth:`etcdwatch.lock.EtcdLock.release`.  RuntimeError if not
        acquired; never raises for etcd errors.
        """
        if self._state.place is None and self._queued is None:
            raise RuntimeError('%s: release of an AsyncEtcdLock that is not '
                               'acquired' % self.name)
        return await asyncio.shield(self._give_up())

    def check_in(self) -> None:
        """Show life (see ``max_silence``); raise if the lock is not held.

        Raises :class:`~etcdwatch.rules.lock.EtcdLockLost` if our hold
        has ended.
        """
        self._state.show_life()
        if not self._state.is_held():
            raise EtcdLockLost('%s does not hold the lock %s'
                               % (self.id, self.prefix))

    async def holder(self) -> Optional[str]:
        """The id of the current holder (oldest key's value), or None."""
        queue = await self._backend.read_queue(self.prefix)
        return queue.entries[0].value if queue.entries else None

    def stats(self) -> Dict[str, Any]:
        """Counters and state, as :meth:`etcdwatch.lock.EtcdLock.stats`."""
        return self._state.report()

    async def aclose(self) -> None:
        """Release if held or queued; stop the keepalive; close streams."""
        if self._state.place is not None or self._queued is not None:
            await asyncio.shield(self._give_up())
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._backend.aclose()

    async def __aenter__(self) -> 'AsyncEtcdLock':
        await self.acquire()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.release()

    # -- running the rules -------------------------------------------------

    async def _give_up(self, sweep=False):
        """Leave the queue: end our place and delete our key.

        ``sweep``: also delete any other key of ours in the queue (one a
        cancelled create made, unbeknown to us).
        """
        place = self._state.give_up()
        key = place.key if place is not None else self._queued
        self._queued = None
        deleted = False
        try:
            if key is not None:
                deleted = bool(await self._backend.delete_if(key, self.id))
            if sweep:
                queue = await self._backend.read_queue(self.prefix)
                for entry in queue.entries:
                    if entry.value == self.id:
                        await self._backend.delete_if(entry.key, self.id)
        except exceptions.BackendError:
            LOG.warning('%s: could not delete %s; it will expire',
                        self.name, key, exc_info=True)
        return deleted

    def _ensure_keepalive(self, place):
        self._queued = place.key
        task = asyncio.ensure_future(self._keepalive(place))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _keepalive(self, place):
        try:
            await driving.drive(self._state.keepalive(place), self._backend,
                                self, sleep=driving.sleep_until(place.ended))
        except Exception:
            # A bug, not etcd (the rule handles etcd's errors): the lease
            # deadline still ends the hold.
            LOG.exception('%s: lock keepalive failed', self.name)
