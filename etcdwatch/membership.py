"""Group membership: announce a member, and watch who is in the group.

:class:`EtcdMembership` keeps ``<group_path>/<member_id>`` (holding the
member's value) alive with a TTL (v2) or a lease (v3) for as long as the
process lives, and removes it on :meth:`~EtcdMembership.close`.
:class:`EtcdGroupWatcher` reports ``joined``, ``updated`` and ``left``
for the members of a group, with :class:`~etcdwatch.EtcdChangeWatcher`'s
guarantees.  :func:`group_members` reads the group once.
"""

import threading
import weakref
from typing import Any, Dict, Optional

from oslo_log import log as logging

from etcdwatch import backends
from etcdwatch.backends import base
from etcdwatch import driving
from etcdwatch import election
from etcdwatch import exceptions
from etcdwatch import handlers
from etcdwatch import keys
from etcdwatch.rules import membership as rules
from etcdwatch import watcher

LOG = logging.getLogger(__name__)

# The longest close() (or the finalizer) waits for a keepalive round in
# flight before deleting the key anyway.
_STEP_WAIT = 30.0


class _Registration(object):
    """What the keepalive task and the finalizer share.

    Never refers to the :class:`EtcdMembership`, so a membership nobody
    holds is collected (and its finalizer removes the key).
    """

    def __init__(self, membership_rules, backend, handler):
        self.rules = membership_rules
        self.backend = backend
        self.handler = handler
        self.stop = handler.event()
        # Held for a whole round of the rules (requests included), never
        # across the keepalive's sleeps: update() and close() never run
        # between a round's requests.
        self.step = handler.lock()
        self.task: Any = None
        self.closed = False

    def drive(self, rule):
        return driving.drive(rule, self.backend, None,
                             sleep=self._sleep_unlocked)

    def _sleep_unlocked(self, seconds):
        self.step.release()
        try:
            return self.stop.wait(seconds)
        finally:
            self.step.acquire()

    def keepalive(self, first_wait):
        with self.step:
            if self.stop.is_set():
                return
            self.drive(self.rules.keepalive(self.stop.is_set, first_wait))

    def shutdown(self, timeout):
        """Stop the keepalive and delete the key; True if it was deleted."""
        self.stop.set()
        self.backend.close()
        locked = self.step.acquire(True, timeout)
        try:
            if self.closed:
                return False
            self.closed = True
            return self.drive(self.rules.leave())
        except exceptions.BackendError:
            LOG.warning('member %s: could not delete the key; it expires '
                        'within %ss', self.rules.key, self.rules.ttl,
                        exc_info=True)
            return False
        finally:
            if locked:
                self.step.release()


def _finalize(registration):
    # A finalizer: must not refer to the membership itself.
    if registration.closed:
        return
    if threading.main_thread().is_alive():
        # Collected as garbage, in whichever thread allocated (maybe in
        # the middle of a call to this client): release from a thread of
        # its own, as the election does.
        threading.Thread(target=registration.shutdown, args=(_STEP_WAIT,),
                         name='etcdwatch-leave').start()
    else:
        registration.shutdown(_STEP_WAIT)


class EtcdMembership(object):
    """One member of a group, announced by a key that lives with it.

    :param etcd_client: a python-etcd ``etcd.Client`` (etcd's v2 API), an
        etcd3gw client (its v3 API), or a FakeEtcdClient.
    :param group_path: the etcd directory of the group.
    :param member_id: this member's name in the group, one key segment;
        its key is ``<group_path>/<member_id>``.
    :param value: a string the key holds (an address, a JSON document).
    :param ttl: seconds the key outlives the process (etcd rounds up to
        whole seconds; v3 to at least its minimum lease, 2 s by default).
    :param handler: the concurrency handler ('threading', 'eventlet', an
        instance, or None for the default chosen from eventlet patching).
    :param max_silence: None (the default): the key is kept alive as long
        as the process lives.  A number of seconds: only while the member
        showed life (:meth:`show_life`, :meth:`update`, the constructor)
        within that long; a member that hangs lets its key expire (within
        ``max_silence + ttl``), and :meth:`show_life` brings it back.

    The constructor registers at once (on the calling thread; if etcd
    cannot be reached it logs and goes on), then a keepalive task of the
    handler refreshes the key every ``ttl / 3`` without waking watchers.
    If the key goes (it expired while etcd or the process was paused, or
    someone deleted it, or etcd lost it), the next round creates it again:
    within ``ttl / 3``.  While etcd cannot be reached, the keepalive
    retries after jittered waits from ``min(ttl / 6, 1)`` up to
    ``min(ttl / 3, 5)`` seconds, logging the outage once.  If the key
    holds another value (another process with the same member_id), it
    waits for that key to go and then takes it.

    A killed process's key expires within ``ttl``.  :meth:`close`, the
    ``with`` block's end, interpreter exit and garbage collection delete
    it at once.

    Bad arguments raise ``ValueError`` naming the argument before
    anything is sent to etcd.
    """

    def __init__(self, etcd_client: Any, group_path: str, member_id: str,
                 value: str, ttl: float,
                 handler: election.HandlerArg = None,
                 max_silence: Optional[float] = None) -> None:
        key = rules.check_arguments(group_path, member_id, value, ttl,
                                    max_silence)
        backend = backends.for_client(etcd_client)
        self._handler = handlers.get_handler(handler)
        self.etcd_client = etcd_client
        self.group_path = key.rsplit('/', 1)[0]
        self.member_id = member_id
        #: The member's key.
        self.key = key
        self._rules = rules.Membership(
            key, value, ttl,
            can_replace=type(backend).replace is not base.Backend.replace,
            max_silence=max_silence)
        self._reg = _Registration(self._rules, backend, self._handler)
        weakref.finalize(self, _finalize, self._reg)
        first_wait = ttl / 3.0
        with self._reg.step:
            try:
                self._reg.drive(self._rules.sync())
            except exceptions.EtcdUnavailable as e:
                first_wait = self._rules.backoff.failed()
                self._rules.outage.failed(e, round(first_wait, 1))
            except exceptions.BackendError:
                first_wait = self._rules.backoff.failed()
                LOG.warning('member %s: could not register; retrying in '
                            '%.1fs', key, first_wait, exc_info=True)
        self._reg.task = self._handler.spawn(self._reg.keepalive,
                                             first_wait)

    @property
    def value(self) -> str:
        """The value the member holds (or is about to write)."""
        return self._rules.value

    @property
    def ttl(self) -> float:
        return self._rules.ttl

    @property
    def is_registered(self) -> bool:
        """True while etcd confirmed, within the TTL, that the key is ours.

        Confirmed means created or refreshed with our current value; it
        turns False a margin (a quarter of the TTL, at most 1 s) before
        the key could expire for want of a refresh.
        """
        return self._rules.is_registered()

    def show_life(self) -> bool:
        """Show life (see ``max_silence``); True while registered.

        If the key is not confirmed ours (it lapsed while we were silent,
        or was lost), one round registers it again now; etcd errors are
        not raised (the keepalive retries).
        """
        self._rules.show_life()
        if self._rules.is_registered():
            return True
        with self._reg.step:
            if self._reg.closed:
                raise RuntimeError('member %s: show_life() after close()'
                                   % self.key)
            try:
                return bool(self._reg.drive(self._rules.sync()))
            except exceptions.BackendError:
                LOG.warning('member %s: could not register again; the '
                            'keepalive retries', self.key, exc_info=True)
                return False

    def update(self, value: str) -> bool:
        """Hold ``value`` from now on; write it now.

        Returns True once etcd holds it, False if the key is held by
        another process with our member_id.  Raises
        :class:`~etcdwatch.exceptions.EtcdUnavailable` (or another
        :class:`~etcdwatch.exceptions.BackendError`) if etcd failed; the
        keepalive then writes the new value when etcd is back.  The value
        is replaced in place: watchers see the member ``updated``.
        """
        rules.check_value('value', value)
        with self._reg.step:
            if self._reg.closed:
                raise RuntimeError('member %s: update() after close()'
                                   % self.key)
            self._rules.show_life()
            self._rules.set_value(value)
            return bool(self._reg.drive(self._rules.sync()))

    def stats(self) -> Dict[str, Any]:
        """Counters and state, as a new dict.

        See :meth:`Membership.report
        <etcdwatch.rules.membership.Membership.report>`.
        """
        return self._rules.report()

    def close(self, timeout: Optional[float] = None) -> bool:
        """Stop the keepalive and delete the key; idempotent.

        Waits for a keepalive round in flight (at most the client's
        timeout; at most ``timeout`` s if given), then deletes the key if
        it still holds our value.  Returns True if it deleted the key;
        never raises for etcd errors (the key then expires within ttl).
        """
        if timeout is not None:
            keys.check_duration('timeout', timeout)
        deleted = self._reg.shutdown(_STEP_WAIT if timeout is None
                                     else timeout)
        task = self._reg.task
        if task is not None:
            task.join(timeout)
        return bool(deleted)

    def __enter__(self) -> 'EtcdMembership':
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return '<EtcdMembership %s%s>' % (
            self.key, ' closed' if self._reg.closed else '')


def group_members(etcd_client: Any, group_path: str) -> Dict[str, str]:
    """``{member_id: value}`` of the group as etcd holds it now.

    Only keys directly under ``group_path`` are members.
    """
    path = keys.check_path('group_path', group_path)
    snapshot = backends.for_client(etcd_client).read_tree(path)
    prefix = path + '/'
    return {key[len(prefix):]: value
            for key, value in snapshot.items.items()
            if key.startswith(prefix) and '/' not in key[len(prefix):]}


class EtcdGroupWatcher(watcher.EtcdChangeWatcher):
    """Report members joining, changing value and leaving a group.

    Subclass and override :meth:`joined`, :meth:`updated` and
    :meth:`left`; run it like any watcher (``start()`` / ``close()``, a
    ``with`` block, or ``watch_forever()``).  The arguments are
    :class:`~etcdwatch.EtcdChangeWatcher`'s, with ``group_path`` as the
    watch path.

    The change watcher's guarantees hold: exactly one call per real
    change, whether seen in a watch event or found by a re-read (after
    history was lost, etcd restarted, or etcd went back in time); a
    callback that raises is retried, and later changes wait behind it.
    A member whose process died is reported ``left`` when its key
    expires: within its ttl.  ``members`` maps each member reported
    joined to its value, as delivered.  Keys deeper than one level below
    ``group_path`` are not members and are ignored.
    """

    def __init__(self, etcd_client: Any, name: str, group_path: str,
                 **kwargs: Any) -> None:
        #: member_id -> value, as last delivered without error.
        self.members: Dict[str, Any] = {}
        super(EtcdGroupWatcher, self).__init__(etcd_client, name,
                                               group_path, **kwargs)

    def key_change(self, action: str, key: str, value: Any) -> None:
        member = self.make_short_key(key)
        if member is None or '/' in member:
            return
        if action == watcher.DELETE:
            self.left(member)
            self.members.pop(member, None)
        elif action == watcher.ADD:
            self.joined(member, value)
            self.members[member] = value
        else:
            self.updated(member, value)
            self.members[member] = value

    def joined(self, member: str, value: Any) -> None:
        """``member`` joined the group, holding ``value``."""

    def updated(self, member: str, value: Any) -> None:
        """``member``'s value changed to ``value``."""

    def left(self, member: str) -> None:
        """``member`` left (its key was deleted or expired)."""
