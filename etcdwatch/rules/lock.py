"""The rules of a fair distributed lock on etcd, without I/O.

The recipe is etcd's own concurrency mutex: each waiter creates a key of
its own below ``<lock_path>/<name>/`` (v2: an in-order key with a TTL; v3:
a key on a lease of its own), so the keys queue up by creation index.  The
waiter whose key is oldest holds the lock; every other waiter watches only
the key just before its own, and looks at the queue again when that key
goes.  So waiters are served in the order they queued, and a release (a
delete) wakes only the next waiter.  A *shared* waiter (a reader: its
key's value starts with :data:`SHARED`) holds once no exclusive key is
older than its own, so readers hold together; it waits for the newest
exclusive key before its own.  An exclusive waiter waits for every key
before its own, shared or not; a reader that queues behind a waiting
writer waits for it.  A keepalive renews the waiter's key
while it waits and while it holds; a holder that dies stops renewing, and
its key expires within its TTL.

:class:`LockState` is one waiter's state and the rules it follows, as
generators that yield :mod:`~etcdwatch.rules.requests`:

- :meth:`~LockState.acquire`: queue (create our key), then wait until our
  key is the oldest;
- :meth:`~LockState.keepalive`: renew our key every ``ttl / 3``.

The rules ask their host for one thing, with a HOOK request:
``_ensure_keepalive(place)``, to run :meth:`~LockState.keepalive` for a new
:class:`Place` in the background.  :class:`etcdwatch.lock.EtcdLock`
(threads, eventlet) and :class:`etcdwatch.aio.lock.AsyncEtcdLock`
(asyncio) are the hosts.
"""

import math
import time
from typing import Any, Callable, Dict, Optional

from oslo_log import log as logging

from etcdwatch import backoff
from etcdwatch import exceptions
from etcdwatch import keys
from etcdwatch import outage
from etcdwatch.rules import requests

LOG = logging.getLogger('etcdwatch.lock')


#: The start of a shared (reader) waiter's value, before its id.
SHARED = 'shared:'


def is_shared(value: Any) -> bool:
    """Whether a queue entry's value is a shared (reader) waiter's."""
    return str(value).startswith(SHARED)


class EtcdLockLost(exceptions.EtcdWatchError):
    """This lock is not (or no longer) held by its caller."""


class Place(object):
    """One place in a lock's queue: our key, from creation to deletion.

    ``key`` is our key; ``fencing_token`` its creation index, by which the
    queue is ordered (it grows with every holder); ``held`` turns True when
    the place reaches the head of the queue; ``ended`` is an event set when
    the place is given up (released, withdrawn) or lost (the key was
    deleted or expired).
    """

    def __init__(self, key: str, fencing_token: int, ended: Any) -> None:
        self.key = key
        self.fencing_token = fencing_token
        self.ended = ended
        self.held = False

    def __repr__(self) -> str:
        return '<Place %s %s%s%s>' % (self.key, self.fencing_token,
                                      ' held' if self.held else '',
                                      ' ended' if self.ended.is_set() else '')


def check_arguments(name: str, lock_path: str, ttl: float,
                    max_silence: Optional[float]) -> str:
    """Refuse bad lock arguments, naming each; the normalised path."""
    keys.check_name('name', name)
    path = keys.check_path('lock_path', lock_path)
    keys.check_duration('ttl', ttl)
    keys.check_duration('max_silence', max_silence, allow_none=True)
    return path


class LockState(object):
    """One waiter for (and holder of) a lock: its state and its rules.

    :param name: the lock's name, for log lines.
    :param prefix: the queue's directory, ``<lock_path>/<name>``.
    :param me: this waiter's id, the value of its key.
    :param ttl: the TTL of its key (seconds).
    :param make_event: returns a new event (threading, eventlet or
        asyncio) for each :class:`Place`.
    :param max_silence: None: the key is renewed while the process lives.
        A number: a holder's key is renewed only while the holder showed
        life (acquired, or called ``check_in()``) in the last
        ``max_silence`` seconds; a hung holder's key then expires.
    :param clock: monotonic seconds (a test may pass its own).
    :param shared: a shared (reader) waiter; ``me`` must then start with
        :data:`SHARED`.
    """

    def __init__(self, name: str, prefix: str, me: str, ttl: float,
                 make_event: Callable[[], Any],
                 max_silence: Optional[float] = None,
                 clock: Callable[[], float] = time.monotonic,
                 shared: bool = False) -> None:
        if bool(shared) != is_shared(me):
            raise ValueError('me: %r does not match shared=%r'
                             % (me, shared))
        self.shared = bool(shared)
        self.name = name
        self.prefix = prefix
        self.me = me
        self.ttl = ttl
        self.make_event = make_event
        self.max_silence = max_silence
        self.clock = clock
        # Monotonic time of etcd's last answer to a renewal, or None.
        self.last_contact: Optional[float] = None
        #: Our current :class:`Place`, or None.
        self.place: Optional[Place] = None
        # When the last confirmed create/refresh of our key was *sent*,
        # plus the TTL, minus a margin for etcd expiring keys early.
        self.lease_deadline: Optional[float] = None
        self.lease_margin = min(1.0, ttl / 4.0)
        # Until when the holder has shown life (max_silence only).
        self.alive_until = math.inf
        # After an error, retry after a jittered pause: from ttl / 3 up to
        # the TTL, so a waiter's key never expires for want of a renewal.
        self.backoff = backoff.Backoff(ttl / 3.0, ttl)
        self.outage = outage.OutageLog(
            LOG, '%s: waiting for the lock %s' % (name, prefix))
        self.stats: Dict[str, Any] = {
            'acquired': 0, 'released': 0, 'lost': 0, 'renewals': 0,
            'failed_renewals': 0, 'wait_seconds': 0.0}

    # -- state ------------------------------------------------------------

    def is_held(self) -> bool:
        """Whether etcd confirmed, within the local lease, that we hold."""
        place, deadline = self.place, self.lease_deadline
        return (place is not None and place.held and
                not place.ended.is_set() and deadline is not None and
                self.clock() < deadline)

    @property
    def fencing_token(self) -> Optional[int]:
        """The fencing token of the current hold, or None."""
        place = self.place
        if place is None or not place.held or place.ended.is_set():
            return None
        return place.fencing_token

    def show_life(self) -> None:
        """The holder is alive for ``max_silence`` more (if set)."""
        if self.max_silence is not None:
            self.alive_until = self.clock() + self.max_silence

    def give_up(self) -> Optional[Place]:
        """Leave the queue (release or withdraw): the place to delete."""
        place, self.place = self.place, None
        self.lease_deadline = None
        if place is not None:
            if place.held:
                self.stats['released'] += 1
            place.ended.set()
        return place

    def lose(self, place: Place, why: str) -> None:
        """Our key ``place`` went away (deleted, expired): forget it."""
        if self.place is not place or place.ended.is_set():
            return
        self.place = None
        self.lease_deadline = None
        place.ended.set()
        if place.held:
            self.stats['lost'] += 1
            LOG.warning('%s: %s lost the lock (token %s): %s', self.name,
                        self.me, place.fencing_token, why)
        else:
            LOG.warning('%s: %s lost its place in the queue: %s',
                        self.name, self.me, why)

    def report(self) -> Dict[str, Any]:
        """Counters and state, as a new dict.

        acquired, released, lost (holds that ended without a release),
        renewals and failed_renewals of our key, wait_seconds (time spent
        in acquire in all), held, fencing_token.
        """
        result = dict(self.stats)
        result['held'] = self.is_held()
        result['fencing_token'] = self.fencing_token
        return result

    def _confirmed(self, place: Place, sent: float) -> None:
        if self.place is place:
            self.lease_deadline = sent + self.ttl - self.lease_margin

    # -- acquiring --------------------------------------------------------

    def acquire(self, stopped: Callable[[], bool],
                time_left: Optional[Callable[[], float]] = None,
                blocking: bool = True):
        """Queue and wait until we hold (True), or ``stopped()`` (False).

        Not ``blocking``: False at once if the lock is held by another
        (our key then stays queued: the host withdraws it).
        ``time_left()``, if given, bounds each wait.  The host gives up
        the place when this returns False.
        """
        self.alive_until = math.inf
        started = self.clock()
        try:
            won = yield from self._acquire(stopped, time_left, blocking)
        finally:
            self.stats['wait_seconds'] += self.clock() - started
        if won:
            self.alive_until = math.inf
            self.show_life()
        return won

    def _acquire(self, stopped, time_left, blocking):
        while not stopped():
            try:
                if self.place is None:
                    yield from self._queue()
                place = self.place
                if place is None:
                    continue
                queue = yield requests.backend('read_queue', self.prefix)
                self.outage.succeeded()
                self.backoff.succeeded()
                if place is not self.place:
                    continue
                mine = [i for i, entry in enumerate(queue.entries)
                        if entry.key == place.key]
                if not mine:
                    self.lose(place, 'our key is gone from the queue')
                    continue
                ahead = queue.entries[:mine[0]]
                if self.shared:
                    # Readers ahead hold with us; writers ahead do not.
                    ahead = [entry for entry in ahead
                             if not is_shared(entry.value)]
                if not ahead:
                    if (yield from self._take(place)):
                        return True
                    continue
                if not blocking:
                    return False
                before = ahead[-1]
                wait = self.ttl if time_left is None else \
                    max(0.01, min(self.ttl, time_left()))
                try:
                    yield requests.backend('watch_key', before.key,
                                           queue.index + 1, wait)
                except exceptions.ClusterRewound:
                    raise
                except exceptions.HistoryGone:
                    pass
            except exceptions.ClusterRewound as e:
                # A wiped or restored etcd may no longer hold the key of
                # whoever held the lock, which believes it holds it until
                # its local lease deadline, at most a TTL away.
                LOG.warning('%s: %s; waiting %ss before taking the lock',
                            self.name, e, self.ttl)
                yield requests.sleep(self.ttl)
            except exceptions.BackendError as e:
                pause = self.backoff.failed()
                if isinstance(e, exceptions.EtcdUnavailable):
                    self.outage.failed(e, round(pause, 1))
                else:
                    LOG.warning('%s: acquiring failed on an etcd error; '
                                'retrying in %.1fs', self.name, pause,
                                exc_info=True)
                if time_left is not None:
                    pause = max(0.0, min(pause, time_left()))
                yield requests.sleep(pause)
        return False

    def _queue(self):
        """Create our key: our place at the end of the queue."""
        sent = self.clock()
        key, index = yield requests.backend('create_unique', self.prefix,
                                            self.me, self.ttl)
        place = Place(key, index, self.make_event())
        self.place = place
        self._confirmed(place, sent)
        yield requests.hook('_ensure_keepalive', place)

    def _take(self, place):
        """Our key is the oldest: hold, within a fresh enough lease."""
        deadline = self.lease_deadline
        if deadline is None or deadline - self.clock() < self.ttl / 2.0:
            # Renew first, so the hold starts with most of a lease.
            if not (yield from self._renew(place)):
                return False
        if self.place is not place or not self.is_fresh():
            return False
        place.held = True
        self.stats['acquired'] += 1
        LOG.debug('%s: %s holds the lock (token %s)', self.name, self.me,
                  place.fencing_token)
        return True

    def is_fresh(self) -> bool:
        deadline = self.lease_deadline
        return deadline is not None and self.clock() < deadline

    def _renew(self, place):
        """Refresh our key; False (and the place lost) if it is gone."""
        sent = self.clock()
        if (yield from requests.refresh(self, place.key, self.me, self.ttl)):
            self._confirmed(place, sent)
            return True
        self.lose(place, 'our key was deleted or expired')
        return False

    # -- while queued or holding -------------------------------------------

    def keepalive(self, place: Place):
        """Renew ``place``'s key every ``ttl / 3`` until it ends.

        Sleeps (SLEEP requests) are meant to end early when
        ``place.ended`` is set.  With ``max_silence``, a holder that has
        not shown life for that long is not renewed: its key expires.
        """
        while not place.ended.is_set():
            interval = self.ttl / 3.0
            if place.held and self.clock() >= self.alive_until:
                if not self.is_fresh():
                    self.lose(place, 'the holder stopped checking in')
                    return
            else:
                try:
                    if not (yield from self._renew(place)):
                        return
                except exceptions.BackendError:
                    if not self.is_fresh() and self.place is place:
                        if place.held:
                            self.lose(place, 'etcd unreachable past the '
                                      'lease')
                            return
                    LOG.warning('%s: keepalive could not reach etcd; '
                                'retrying', self.name, exc_info=True)
                    interval /= 3.0
            yield requests.sleep(interval)
