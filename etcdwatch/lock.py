"""A fair distributed lock on etcd, on threads or eventlet.

Waiters queue up as etcd's concurrency mutex does: each creates a key of
its own below ``<lock_path>/<name>/`` with a TTL (v2: an in-order key;
v3: a key on a lease of its own); the oldest key holds the lock; each
other waiter watches only the key just before its own.  So waiters are
served in the order they queued, and a release wakes only the next one.
The rules are :mod:`etcdwatch.rules.lock`; this module runs them on the
handler's threads (or green threads).
"""

import math
import time
import weakref
from typing import Any, Dict, Optional

from oslo_log import log as logging

from etcdwatch import backends
from etcdwatch import driving
from etcdwatch import election
from etcdwatch import exceptions
from etcdwatch import handlers
from etcdwatch import keys
from etcdwatch.rules import lock as rules

LOG = logging.getLogger(__name__)

EtcdLockLost = rules.EtcdLockLost


def _delete_if_queued(backend, queued):
    # A finalizer (at exit, or when the lock is collected): must not refer
    # to the lock itself.
    if queued[0] is not None:
        key, value = queued[0]
        queued[0] = None
        election._release(backend, key, value)


class EtcdLock(object):
    """A lock named ``name`` below ``lock_path``, shared through etcd.

    :param client: a python-etcd ``etcd.Client`` (etcd's v2 API), an
        etcd3gw client (its v3 API), or a FakeEtcdClient.
    :param name: the lock's name; one holder per name and lock_path.
    :param lock_path: the etcd directory that holds the locks' queues.
    :param ttl: the TTL (seconds) of each waiter's key.  A keepalive renews
        it every ``ttl / 3`` while the waiter waits or holds; a holder
        killed (SIGKILL, a crash) frees the lock within ``ttl``.
    :param handler: the concurrency handler ('threading', 'eventlet', an
        instance, or None for the default chosen from eventlet patching).
    :param max_silence: None (the default): a holder's key is kept alive
        as long as the process lives.  A number of seconds: only while
        the holder showed life (:meth:`acquire`, :meth:`check_in`) within
        that long; a holder that hangs loses the lock.
    :param shared: False (the default): an exclusive lock.  True: a shared
        (reader) hold: it holds together with other shared holders, once
        no exclusive waiter queued before it; an exclusive waiter waits
        for every earlier holder, shared or not, and a reader queued
        after a waiting writer waits for that writer.  Its key's value is
        ``shared:<id>``.

    Not re-entrant: :meth:`acquire` while this object holds or waits
    raises RuntimeError.  One thread at a time acquires; :meth:`release`
    may come from any thread.  All arguments are checked before anything
    is sent to etcd; bad ones raise ``ValueError`` naming the argument.
    """

    def __init__(self, client: Any, name: str, lock_path: str, ttl: float,
                 handler: election.HandlerArg = None,
                 max_silence: Optional[float] = None,
                 shared: bool = False) -> None:
        self.lock_path = rules.check_arguments(name, lock_path, ttl,
                                               max_silence)
        if not isinstance(shared, bool):
            raise ValueError('shared must be True or False, not %r'
                             % (shared,))
        self._backend = backends.for_client(client)
        self._handler = handlers.get_handler(handler)
        self.client = client
        self.name = name
        #: This waiter's id, the value of its key.
        self.id = (rules.SHARED if shared else '') + election._make_id()
        self.prefix = self.lock_path + '/' + name
        self._lock = self._handler.rlock()
        self._state = rules.LockState(name, self.prefix, self.id, ttl,
                                      self._handler.event, max_silence,
                                      shared=shared)
        self._busy = False
        # (key, value) of a key we may hold, for the finalizer.
        self._queued: list = [None]
        weakref.finalize(self, _delete_if_queued, self._backend,
                         self._queued)

    # -- what callers ask -------------------------------------------------

    @property
    def ttl(self) -> float:
        return self._state.ttl

    @property
    def is_held(self) -> bool:
        """True while etcd confirmed, within the local lease, that we hold.

        Never True past the local lease deadline: the monotonic time the
        last successful create or refresh of our key was sent, plus the
        TTL, minus a margin (a quarter of the TTL, at most 1 s).  That
        falls before the key can expire in etcd, so the next waiter can
        only take the lock after this turns False.
        """
        return self._state.is_held()

    @property
    def fencing_token(self) -> Optional[int]:
        """The etcd index at which our key queued, while we hold; or None.

        Holders take turns in the order of these indexes, so the token
        grows with every holder: a resource can refuse work tagged with a
        token lower than one it has seen.
        """
        return self._state.fencing_token

    @property
    def key(self) -> Optional[str]:
        """Our key in the queue while we wait or hold, else None."""
        place = self._state.place
        return None if place is None else place.key

    def acquire(self, blocking: bool = True,
                timeout: Optional[float] = None) -> bool:
        """Wait for the lock; True once held, False if not in time.

        ``blocking=False``: take the lock only if nobody holds it or waits
        for it (one round trip or three), else False at once.
        ``timeout`` (seconds): False if not held by then.  Either way a
        waiter that gives up deletes its key, leaving the queue.  While
        etcd cannot be reached it keeps trying (after jittered pauses).
        """
        if timeout is not None:
            keys.check_duration('timeout', timeout)
        if not isinstance(blocking, bool):
            raise ValueError('blocking must be True or False, not %r'
                             % (blocking,))
        with self._lock:
            if self._busy or self._state.place is not None:
                raise RuntimeError('%s: this EtcdLock is already acquired '
                                   'or acquiring (it is not re-entrant)'
                                   % self.name)
            self._busy = True
        try:
            deadline = None if timeout is None else \
                time.monotonic() + timeout
            stop = self._handler.event()

            def time_left():
                return math.inf if deadline is None else \
                    deadline - time.monotonic()

            def stopped():
                return time_left() <= 0

            def sleep(seconds):
                return stop.wait(max(0.0, min(seconds, time_left())))
            won = False
            try:
                won = driving.drive(
                    self._state.acquire(stopped, time_left, blocking),
                    self._backend, self, lock=self._lock,
                    hooks_locked=False, sleep=sleep)
            finally:
                if not won:
                    self._give_up(sweep=True)
            return won
        finally:
            with self._lock:
                self._busy = False

    def release(self) -> bool:
        """Release the lock: delete our key, so the next waiter holds.

        Returns True if our key was still there (it is deleted now): no
        one else can have held the lock since we got it.  False if it had
        gone (expired or deleted: another may have held the lock in the
        meantime) or etcd could not be reached to tell.

        Raises RuntimeError if this object neither holds nor lost the lock
        since its last acquire, or if an acquire is in progress (a timeout
        is the way to bound a wait).  Never raises for etcd errors (the key
        then expires by its TTL).
        """
        with self._lock:
            if self._busy:
                raise RuntimeError('%s: release of an EtcdLock while an '
                                   'acquire is in progress' % self.name)
            if self._state.place is None and self._queued[0] is None:
                raise RuntimeError('%s: release of an EtcdLock that is not '
                                   'acquired' % self.name)
        return self._give_up()

    def check_in(self) -> None:
        """Show life (see ``max_silence``); raise if the lock is not held.

        Raises :class:`EtcdLockLost` if our hold has ended (our key was
        deleted or expired, or the local lease ran out unconfirmed).
        """
        with self._lock:
            self._state.show_life()
            if self._state.is_held():
                return
        raise EtcdLockLost('%s does not hold the lock %s'
                           % (self.id, self.prefix))

    def holder(self) -> Optional[str]:
        """The id of the current holder (oldest key's value), or None."""
        queue = self._backend.read_queue(self.prefix)
        return queue.entries[0].value if queue.entries else None

    def stats(self) -> Dict[str, Any]:
        """Counters and state, as a new dict.

        See :meth:`etcdwatch.rules.lock.LockState.report`.
        """
        with self._lock:
            return self._state.report()

    def __enter__(self) -> 'EtcdLock':
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # -- running the rules -------------------------------------------------

    def _give_up(self, sweep=False):
        """Leave the queue: end our place and delete our key.

        ``sweep``: also delete any other key of ours in the queue (one an
        interrupted create made, unbeknown to us).  Returns whether our
        key was there to delete.
        """
        with self._lock:
            place = self._state.give_up()
            queued, self._queued[0] = self._queued[0], None
        key = place.key if place is not None else (
            queued[0] if queued is not None else None)
        deleted = False
        try:
            if key is not None:
                deleted = bool(self._backend.delete_if(key, self.id))
            if sweep:
                for entry in self._backend.read_queue(self.prefix).entries:
                    if entry.value == self.id:
                        self._backend.delete_if(entry.key, self.id)
        except exceptions.BackendError:
            LOG.warning('%s: could not delete %s; it will expire',
                        self.name, key, exc_info=True)
        return deleted

    def _ensure_keepalive(self, place):
        with self._lock:
            self._queued[0] = (place.key, self.id)
            self._handler.spawn(_keepalive, weakref.ref(self), place)


class _LockGone(Exception):
    """The lock a keepalive served was collected."""


class _WeakHost(object):
    def __init__(self, ref):
        self._ref = ref

    def __getattr__(self, name):
        host = self._ref()
        if host is None:
            raise _LockGone(name)
        return getattr(host, name)


def _keepalive(lock_ref, place):
    """Renew ``place``'s key on this thread until the place ends."""
    host = lock_ref()
    if host is None:
        return
    rule = host._state.keepalive(place)
    backend, guard = host._backend, host._lock
    del host
    try:
        driving.drive(rule, backend, _WeakHost(lock_ref), lock=guard,
                      hooks_locked=False, sleep=place.ended.wait)
    except _LockGone:
        pass
