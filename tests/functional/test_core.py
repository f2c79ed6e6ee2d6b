"""The core behaviours on a real etcd, on both of its APIs.

Every test here runs twice, through the ``backend_client`` or
``fresh_backend`` fixture: on etcd's v2 API (python-etcd) and on its v3
API (etcd3gw, on an etcd with v2 disabled), with the same assertions.
Workers run in their own processes, both plain (threads) and eventlet
monkey-patched.
"""

import signal
import time
import uuid

import pytest

from tests.functional.procs import Workers
from tests.helpers import ChangeRecorder as Recorder
from tests.helpers import converged
from tests.helpers import fold_changes
from tests.helpers import Runner
from tests.helpers import wait_until

# Generous: a 2-core machine shared with other test runs.
WAIT = 30
POLL = 0.02


def reported(lines):
    return fold_changes([(line['action'], line['key'], line['value'])
                         for line in lines if 'action' in line])


def test_watcher_follows_every_kind_of_change(backend_client, etcd_prefix):
    d, p = backend_client, etcd_prefix
    d.put(p + '/a', '1')
    if d.has_directories:
        d.make_dir(p + '/empty')                # not data
    w = Recorder(d.client, 'rec', p, heartbeat=1)
    assert w.etcd_data == {p + '/a': '1'}
    with Runner(w):
        d.put(p + '/a', '1')                        # same value
        assert d.cas(p + '/a', '1', '2')
        d.put_many({p + '/m/1': 'x', p + '/m/2': 'y', p + '/m/3': 'z'})
        d.put(p + '/d/x', 'x')
        d.put(p + '/d/y/z', 'z')
        d.put(p + '/ttl', 't', ttl=1)               # expires (lease on v3)
        d.put(p + '/cad', 'c')
        assert d.cad(p + '/cad', 'c')               # compare-and-delete
        d.delete(p + '/m/2')
        d.delete_prefix(p + '/d')                   # prefix delete
        if d.has_directories:
            d.make_dir(p + '/newdir')
        d.put(p + '/é', 'vé')                       # UTF-8 both ways
        wait_until(lambda: p + '/ttl' not in d.state(p), timeout=WAIT,
                   interval=POLL)
        wait_until(lambda: converged(w, d, p), timeout=WAIT, interval=POLL)
    assert w.etcd_data == {p + '/a': '2', p + '/m/1': 'x',
                           p + '/m/3': 'z', p + '/é': 'vé'}
    deletes = sorted(k for a, k, v in w.changes if a == 'delete')
    assert deletes == sorted([p + '/cad', p + '/d/x', p + '/d/y/z',
                              p + '/ttl', p + '/m/2'])
    assert ('change', p + '/a', '1') not in w.changes
    assert ('change', p + '/a', '2') in w.changes


def test_missing_watch_path_then_created(backend_client, etcd_prefix):
    d, p = backend_client, etcd_prefix + '/not/yet'
    w = Recorder(d.client, 'rec', p, heartbeat=1)
    assert w.etcd_data == {} and w.synced
    with Runner(w):
        d.put(p + '/k', 'v')
        wait_until(lambda: w.changes == [('add', p + '/k', 'v')],
                   timeout=WAIT, interval=POLL)


def test_elected_watcher_loads_then_releases(backend_client, etcd_prefix):
    d, p = backend_client, etcd_prefix
    d.put(p + '/data/k', 'v')
    w = Recorder(d.client, 'rec', p + '/data', election_path=p + '/el',
                 wait_until_elected=True, recovery_time=1, heartbeat=1)
    assert w.etcd_data is None
    with Runner(w):
        wait_until(lambda: w.changes == [('add', p + '/data/k', 'v')],
                   timeout=WAIT, interval=POLL)
        assert list(d.state(p + '/el')) == [p + '/el/master_rec']
        d.put(p + '/data/k', 'w')
        wait_until(lambda: converged(w, d, p + '/data'), timeout=WAIT,
                   interval=POLL)
    # watch_forever released the election on its way out.
    assert d.state(p + '/el') == {}


@pytest.mark.parametrize('mode', ['threading', 'eventlet'])
def test_watcher_process_converges_after_falling_behind_history(
        backend_client, etcd_prefix, mode):
    d, p = backend_client, etcd_prefix
    for i in range(10):
        d.put('%s/k%d' % (p, i), 'init')
    args = d.worker_args('watch', p, 1)
    if mode == 'eventlet':
        args.append('--eventlet')
    with Workers() as workers:
        w = workers.start(*args)
        synced = w.wait_for(lambda lines: w.events('synced'))
        assert synced[0]['handler'] == mode
        w.wait_for(lambda lines: len(reported(lines)) == 10)
        # Stop the process while its watch is parked, then write more
        # than etcd v2's 1000-event history (and compact v3's).
        w.signal(signal.SIGSTOP)
        written = 0
        for i in range(1500):
            d.put('%s/k%d' % (p, i % 200), str(i))
            written += 1
        for i in range(0, 200, 3):
            d.delete('%s/k%d' % (p, i))
            written += 1
        d.put(p + '/dir/a', 'a')
        d.delete_prefix(p + '/dir')
        d.forget_history(written + 2)
        w.signal(signal.SIGCONT)
        truth = d.state(p)
        w.wait_for(lambda lines: reported(lines) == truth, timeout=60)


def _elected(workers):
    return sorted(((line, worker) for worker in workers.all
                   for line in worker.events('elected')),
                  key=lambda pair: pair[0]['t'])


def _start_electors(workers, d, name, work_time, recovery_time):
    for _ in range(3):
        workers.start(*d.worker_args('elect', name, work_time,
                                     recovery_time))
    for worker in workers.all:
        worker.wait_for(lambda lines: worker.events('campaigning'))
    wait_until(lambda: _elected(workers), timeout=WAIT)
    elected = _elected(workers)
    assert len(elected) == 1, elected
    return elected[0]


def test_kill_9_of_the_leader_fails_over_within_bounds(backend_client):
    # etcd v3's minimum lease is 2 s: the bound holds on both APIs.
    d, work_time, recovery_time = backend_client, 2, 1
    name = 'svc' + uuid.uuid4().hex[:8]
    with Workers() as workers:
        first, leader = _start_electors(workers, d, name, work_time,
                                        recovery_time)
        killed_at = time.time()
        leader.kill()
        wait_until(lambda: len(_elected(workers)) == 2, timeout=WAIT)
        second, new_leader = _elected(workers)[1]
        assert new_leader is not leader
        assert second['term'] > first['term']
        failover = second['t'] - killed_at
        assert failover <= work_time + recovery_time + 1, failover


def test_clean_exit_of_the_leader_hands_over_within_a_second(
        backend_client):
    name = 'svc' + uuid.uuid4().hex[:8]
    with Workers() as workers:
        first, leader = _start_electors(workers, backend_client, name, 10, 5)
        exited_at = time.time()
        assert leader.terminate() == 0
        wait_until(lambda: len(_elected(workers)) == 2, timeout=WAIT)
        second, new_leader = _elected(workers)[1]
        assert new_leader is not leader
        handover = second['t'] - exited_at
        assert handover < 1.0, handover


def test_a_paused_etcd_costs_one_timeout_not_four(fresh_backend):
    """A stalled watch fails after one heartbeat, not after retries.

    (urllib3 would retry a GET whose answer never came three times.)
    """
    from etcdwatch import EtcdUnavailable
    d, heartbeat = fresh_backend, 2
    w = Recorder(d.client, 'rec', '/paused', heartbeat=heartbeat)
    d.server.pause()
    try:
        start = time.monotonic()
        with pytest.raises(EtcdUnavailable):
            w.do_watch()
        took = time.monotonic() - start
    finally:
        d.server.resume()
    assert took < heartbeat + 5, took
    d.put('/paused/k', 'v')
    wait_until(lambda: (w.do_watch(), w.changes)[1] == [
        ('add', '/paused/k', 'v')], timeout=WAIT)
