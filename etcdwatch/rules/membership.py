"""The rules of group membership on one etcd key, without I/O.

A member announces itself with ``<group_path>/<member_id>`` holding its
value, kept alive by a TTL (v2) or a lease (v3) that the backend hides.
:class:`Membership` is one member's state and its rules, as generators
that yield :mod:`~etcdwatch.rules.requests`:

- :meth:`~Membership.sync`: one round: create the key, or refresh it, or
  rewrite it after :meth:`~Membership.set_value`; re-create it when
  refresh says it is gone (expired, deleted, lost with etcd's data);
- :meth:`~Membership.keepalive`: ``sync`` every ``ttl / 3`` until
  stopped, backing off on etcd errors;
- :meth:`~Membership.leave`: delete the key if it still holds our value.

No HOOK or CALLBACK requests: the host needs no callbacks, so a
keepalive task holds no reference to the object that owns it.
:class:`etcdwatch.membership.EtcdMembership` (threads and eventlet) is
the host.
"""

import time
from typing import Any, Callable, Dict, Optional

from oslo_log import log as logging

from etcdwatch import backoff
from etcdwatch import exceptions
from etcdwatch import keys
from etcdwatch import outage
from etcdwatch.rules import requests

LOG = logging.getLogger('etcdwatch.membership')


def check_arguments(group_path: str, member_id: str, value: Any,
                    ttl: float, max_silence: Optional[float] = None) -> str:
    """Refuse bad membership arguments, naming each; the member's key."""
    path = keys.check_path('group_path', group_path)
    keys.check_name('member_id', member_id)
    check_value('value', value)
    keys.check_duration('ttl', ttl)
    keys.check_duration('max_silence', max_silence, allow_none=True)
    return path + '/' + member_id


def check_value(argument: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError('%s must be a string, not %r' % (argument, value))
    return value


class Membership(object):
    """One member of a group: its key, its value and its rules.

    :param key: the member's key, ``<group_path>/<member_id>``.
    :param value: the value to hold.
    :param ttl: the key's TTL in seconds (etcd rounds it up to whole
        seconds, and v3 to its minimum lease, 2 s by default).
    :param can_replace: the backend has ``replace(key, old, new, ttl)``
        (an atomic compare-and-swap that keeps the key); without it a new
        value is written by deleting the key and creating it again, so
        watchers see the member leave and join.
    :param max_silence: None: the key is kept alive while the host runs.
        Seconds: :meth:`keepalive` renews (or re-creates) it only while
        the member showed life (:meth:`show_life`) within that long; a
        member that stops showing life lets its key expire, and gets it
        back when it shows life again.
    :param clock: monotonic seconds (a test may pass its own).
    """

    def __init__(self, key: str, value: str, ttl: float,
                 can_replace: bool = False,
                 clock: Callable[[], float] = time.monotonic,
                 max_silence: Optional[float] = None) -> None:
        self.key = key
        self.max_silence = max_silence
        #: When the member last showed life (monotonic).
        self.life_shown = clock()
        #: The value the member wants its key to hold.
        self.value = value
        self.ttl = ttl
        self.can_replace = can_replace
        self.clock = clock
        # [value etcd last confirmed our key holds, or None]: shared with
        # the host's finalizer, which deletes the key if it holds that.
        self.written: list = [None]
        # Monotonic time until which etcd's last confirmation holds
        # (sent + ttl, less a margin for etcd's own clock), or None.
        self.confirmed_until: Optional[float] = None
        self.margin = min(1.0, ttl / 4.0)
        initial = min(ttl / 6.0, 1.0)
        self.backoff = backoff.Backoff(initial,
                                       max(initial, min(ttl / 3.0, 5.0)))
        self.outage = outage.OutageLog(LOG, 'member %s' % key)
        # Whether the last create found the key held by someone else.
        self.conflict = False
        #: Counters for stats(): see :meth:`report`.
        self.stats: Dict[str, Any] = {
            'registrations': 0, 'renewals': 0, 'failed_renewals': 0,
            'keys_lost': 0, 'conflicts': 0}
        self.last_contact: Optional[float] = None

    def _ask(self, name: str, *args: Any):
        """One backend request; notes when etcd last answered."""
        return requests.ask(self, name, *args)

    # -- state ------------------------------------------------------------

    def show_life(self) -> None:
        """The member is alive: keep its key (see ``max_silence``)."""
        self.life_shown = self.clock()

    def silent(self) -> bool:
        """Whether the member showed no life for ``max_silence``."""
        return (self.max_silence is not None
                and self.clock() - self.life_shown > self.max_silence)

    def is_registered(self) -> bool:
        """Whether etcd confirmed, within the TTL, that the key is ours."""
        until = self.confirmed_until
        return until is not None and self.clock() < until \
            and self.written[0] == self.value

    def set_value(self, value: str) -> None:
        """Hold ``value`` from now on; the next :meth:`sync` writes it."""
        self.value = value

    def report(self) -> Dict[str, Any]:
        """Counters and state, as a new dict.

        registrations (keys created), renewals, failed_renewals (a
        refresh refused or not answered), keys_lost (our key found gone:
        expired or deleted), conflicts (the key found held by another
        value), registered, seconds_since_contact (since etcd last
        answered, or None).
        """
        result = dict(self.stats)
        result['registered'] = self.is_registered()
        result['silent'] = self.silent()
        result['seconds_since_contact'] = (
            None if self.last_contact is None else
            self.clock() - self.last_contact)
        return result

    def _confirmed(self, value: str, sent: float) -> None:
        self.written[0] = value
        self.confirmed_until = sent + self.ttl - self.margin

    def _lost(self) -> None:
        self.written[0] = None
        self.confirmed_until = None

    # -- the rules ----------------------------------------------------------

    def sync(self):
        """One round: make etcd hold our key and value, for one more TTL.

        Returns True if etcd confirmed it, False if the key is held by
        another value (another process with our member_id: we retry at
        the next round, and take the key once it is gone).  Raises
        :class:`~etcdwatch.exceptions.BackendError` on etcd errors.
        """
        written = self.written[0]
        if written is not None and written != self.value:
            yield from self._rewrite(written)
            written = self.written[0]
        if written is not None:
            sent = self.clock()
            if (yield from requests.refresh(self, self.key, written,
                                            self.ttl)):
                self._confirmed(written, sent)
                return True
            self.stats['keys_lost'] += 1
            LOG.warning('member %s: the key was gone (expired or deleted); '
                        'registering again', self.key)
            self._lost()
        return (yield from self._register())

    def _register(self):
        value = self.value
        sent = self.clock()
        index = yield from self._ask('create', self.key, value, self.ttl)
        if index is not None:
            self.stats['registrations'] += 1
            self._confirmed(value, sent)
            self.conflict = False
            LOG.info('member %s registered (index %s)', self.key, index)
            return True
        # The key exists.  It may be ours: a create whose answer was lost,
        # or this member_id's key from before a restart of the process.
        sent = self.clock()
        if (yield from self._ask('refresh', self.key, value, self.ttl)):
            self.stats['renewals'] += 1
            self._confirmed(value, sent)
            self.conflict = False
            LOG.info('member %s registered (took up the key it held)',
                     self.key)
            return True
        self.stats['conflicts'] += 1
        if not self.conflict:
            LOG.warning('member %s: the key holds another value; waiting '
                        'for it to go', self.key)
        self.conflict = True
        return False

    def _rewrite(self, old: str):
        """Give our key the new value (it held ``old``)."""
        new = self.value
        if self.can_replace:
            sent = self.clock()
            if (yield from self._ask('replace', self.key, old, new,
                                     self.ttl)):
                self._confirmed(new, sent)
                return
        else:
            yield from self._ask('delete_if', self.key, old)
        self._lost()

    def keepalive(self, stopped: Callable[[], bool],
                  first_wait: float = 0.0):
        """``sync`` every ``ttl / 3`` until ``stopped()``.

        The first round comes after ``first_wait`` seconds.  A key found
        gone is created again at once.  etcd errors are retried after a
        jittered backoff from ``min(ttl / 6, 1)`` s up to
        ``min(ttl / 3, 5)`` s; an outage is logged once, not per retry.
        Sleeps (SLEEP requests) are meant to end early when stopped.
        """
        if first_wait > 0 and (yield requests.sleep(first_wait)):
            return
        while not stopped():
            interval = self.ttl / 3.0
            if self.silent():
                # No renewal: the key expires, as the member shows no
                # life.  Checked again every round.
                if (yield requests.sleep(interval)):
                    return
                continue
            try:
                yield from self.sync()
                self.outage.succeeded()
                self.backoff.succeeded()
            except exceptions.BackendError as e:
                interval = self.backoff.failed()
                if isinstance(e, exceptions.EtcdUnavailable):
                    self.outage.failed(e, round(interval, 1))
                else:
                    LOG.warning('member %s: keepalive failed on an etcd '
                                'error; retrying in %.1fs', self.key,
                                interval, exc_info=True)
            if stopped():
                break
            yield requests.sleep(interval)

    def leave(self):
        """Delete the key if it holds our value; True if it was deleted."""
        written = self.written[0]
        self._lost()
        deleted = False
        for value in {written, self.value} - {None}:
            if (yield from self._ask('delete_if', self.key, value)):
                deleted = True
        return deleted
