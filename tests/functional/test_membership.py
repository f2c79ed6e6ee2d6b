"""Group membership on a real etcd, on the v2 and v3 APIs.

Members run in worker processes where a test kills them, in this process
otherwise; the group watcher runs here and timestamps what it reports.
"""

import threading
import time

from etcdwatch.membership import EtcdGroupWatcher
from etcdwatch.membership import EtcdMembership
from etcdwatch.membership import group_members
from tests.functional import procs
from tests.helpers import wait_until

TTL = 3


class Recorder(EtcdGroupWatcher):
    """Records (monotonic time, what, member, value) of every report."""

    def __init__(self, *args, **kwargs):
        self.reports = []
        self.cond = threading.Condition()
        super(Recorder, self).__init__(*args, **kwargs)

    def _note(self, *report):
        with self.cond:
            self.reports.append((time.monotonic(),) + report)
            self.cond.notify_all()

    def joined(self, member, value):
        self._note('joined', member, value)

    def updated(self, member, value):
        self._note('updated', member, value)

    def left(self, member):
        self._note('left', member, None)

    def wait_for(self, what, member, after=0.0, timeout=30.0):
        """The time of the first ``what`` of ``member`` after ``after``.

        Monotonic; fails after ``timeout`` s.
        """
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for t, w, m, _v in self.reports:
                    if t >= after and w == what and m == member:
                        return t
                left = deadline - time.monotonic()
                assert left > 0, 'no %s of %s; reports: %r' % (
                    what, member, self.reports)
                self.cond.wait(left)

    def of(self, member):
        with self.cond:
            return [(w, v) for _t, w, m, v in self.reports if m == member]


def _watch(d, group, heartbeat=2):
    return Recorder(d.client, 'group', group, heartbeat=heartbeat)


def test_a_killed_member_leaves_within_its_ttl(backend_client, etcd_prefix):
    d = backend_client
    group = etcd_prefix + '/agents'
    with _watch(d, group) as watcher, procs.Workers() as workers:
        doomed = workers.start(*d.worker_args('member', group, 'doomed',
                                              'addr-1', TTL))
        stays = workers.start(*d.worker_args('member', group, 'stays',
                                             'addr-2', TTL))
        for worker in (doomed, stays):
            worker.wait_for(lambda lines: lines and
                            lines[0]['registered'])
        watcher.wait_for('joined', 'doomed')
        watcher.wait_for('joined', 'stays')
        # Let the keepalive renew a few times first.
        time.sleep(TTL)
        killed = time.monotonic()
        doomed.kill()
        left = watcher.wait_for('left', 'doomed', after=killed,
                                timeout=TTL + 10)
        print('killed member left after %.2fs (ttl %ss)'
              % (left - killed, TTL))
        assert left - killed <= TTL + 1
        # The live member was never reported gone, and is still there
        # after more than two TTLs (its keepalive kept it).
        time.sleep(TTL)
        assert watcher.of('stays') == [('joined', 'addr-2')]
        assert group_members(d.client, group) == {'stays': 'addr-2'}
        assert watcher.members == {'stays': 'addr-2'}


def test_sigterm_removes_the_key_at_exit(backend_client, etcd_prefix):
    """A clean exit deletes the key at once, long before the TTL."""
    d = backend_client
    group = etcd_prefix + '/agents'
    ttl = 60
    with _watch(d, group) as watcher, procs.Workers() as workers:
        worker = workers.start(*d.worker_args('member', group, 'm', 'v',
                                              ttl))
        worker.wait_for(lambda lines: lines)
        watcher.wait_for('joined', 'm')
        stopped = time.monotonic()
        assert worker.terminate() == 0
        watcher.wait_for('left', 'm', after=stopped, timeout=20)
        assert group_members(d.client, group) == {}


def test_a_deleted_key_is_registered_again(backend_client, etcd_prefix):
    d = backend_client
    group = etcd_prefix + '/agents'
    with _watch(d, group) as watcher, \
            EtcdMembership(d.client, group, 'm', 'v1', TTL) as member:
        watcher.wait_for('joined', 'm')
        deleted = time.monotonic()
        d.delete(group + '/m')
        watcher.wait_for('left', 'm', after=deleted)
        back = watcher.wait_for('joined', 'm', after=deleted)
        # The next keepalive round, at most ttl / 3 later (and slack).
        assert back - deleted < TTL / 3.0 + 3
        assert d.get(group + '/m') == 'v1'
        assert member.stats()['keys_lost'] == 1
        assert member.update('v2')
        wait_until(lambda: watcher.members == {'m': 'v2'}, timeout=20)
        assert d.get(group + '/m') == 'v2'
    # close() deleted it.
    assert group_members(d.client, group) == {}


def test_every_live_member_is_back_after_etcd_restarts(fresh_backend):
    """etcd down for longer than the TTL, then up with its data."""
    d = fresh_backend
    group = '/restart/agents'
    members = [EtcdMembership(d.client, group, 'm%d' % i, 'v%d' % i, TTL)
               for i in range(3)]
    watcher = _watch(d, group, heartbeat=1).start()
    try:
        wait_until(lambda: len(watcher.members) == 3, timeout=20)
        gone = members.pop()
        assert gone.close()
        wait_until(lambda: len(watcher.members) == 2, timeout=20)
        d.server.stop()
        time.sleep(TTL + 1)
        d.server.start()
        d.reconnect()
        expected = {'m0': 'v0', 'm1': 'v1'}
        wait_until(lambda: group_members(d.client, group) == expected,
                   timeout=3 * TTL + 10)
        wait_until(lambda: all(m.is_registered for m in members),
                   timeout=3 * TTL + 10)
        # Kept alive from then on: still there two TTLs later.
        time.sleep(2 * TTL)
        assert group_members(d.client, group) == expected
        wait_until(lambda: watcher.members == expected, timeout=20)
    finally:
        for m in members:
            m.close()
        watcher.close()


def test_a_key_expired_while_etcd_was_paused_is_registered_again(
        fresh_backend):
    d = fresh_backend
    group = '/paused/agents'
    member = EtcdMembership(d.client, group, 'm', 'v', TTL)
    try:
        created = d.get(group + '/m')
        assert created == 'v'
        d.server.pause()
        # Past the TTL: once etcd runs again, the key has expired (unless
        # a keepalive queued meanwhile lands first).
        time.sleep(TTL + 2)
        d.server.resume()
        wait_until(lambda: member.is_registered and
                   group_members(d.client, group) == {'m': 'v'},
                   timeout=3 * TTL + 20)
        time.sleep(2 * TTL)
        assert group_members(d.client, group) == {'m': 'v'}
        assert member.is_registered
        print('keys lost while paused: %d' % member.stats()['keys_lost'])
    finally:
        assert member.close()
    assert group_members(d.client, group) == {}


def test_update_is_seen_as_updated_and_the_key_lives_on(backend_client,
                                                        etcd_prefix):
    """A value replaced in place: one 'updated', no leave, still renewed."""
    d = backend_client
    group = etcd_prefix + '/agents'
    with _watch(d, group) as watcher, \
            EtcdMembership(d.client, group, 'm', 'v1', TTL) as member:
        watcher.wait_for('joined', 'm')
        assert member.update('v2')
        watcher.wait_for('updated', 'm')
        assert watcher.of('m') == [('joined', 'v1'), ('updated', 'v2')]
        # Renewed several times more on the same key, with the new value.
        renewals = member.stats()['renewals']
        wait_until(lambda: member.stats()['renewals'] >= renewals + 4,
                   timeout=4 * TTL, interval=0.2)
        assert watcher.of('m') == [('joined', 'v1'), ('updated', 'v2')]
        assert d.get(group + '/m') == 'v2' and member.is_registered
