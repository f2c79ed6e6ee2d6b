"""The core behaviours on a real etcd, with workers in their own processes.

Watchers run both in a plain process (threads) and in an eventlet
monkey-patched one.
"""

import signal
import threading
import time
import uuid

import pytest

from tests.functional.procs import Workers
from tests.helpers import ChangeRecorder as Recorder
from tests.helpers import etcd_state
from tests.helpers import fold_changes
from tests.helpers import wait_until


def address(server):
    return '%s:%d' % (server.host, server.port)


def reported(lines):
    return fold_changes([(line['action'], line['key'], line['value'])
                         for line in lines if 'action' in line])


def test_watcher_in_process_follows_every_kind_of_change(
        etcd_client, etcd_prefix):
    p = etcd_prefix
    etcd_client.write(p + '/empty', None, dir=True)
    etcd_client.write(p + '/a', '1')
    w = Recorder(etcd_client, 'rec', p, heartbeat=1)
    assert w.etcd_data == {p + '/a': '1'}
    thread = threading.Thread(target=w.watch_forever, daemon=True)
    thread.start()
    try:
        etcd_client.write(p + '/a', '1')                   # same value
        etcd_client.write(p + '/a', '2', prevValue='1')    # CAS
        etcd_client.write(p + '/d/x', 'x')
        etcd_client.write(p + '/d/y/z', 'z')
        etcd_client.write(p + '/ttl', 't', ttl=1)
        etcd_client.write(p + '/cad', 'c')
        etcd_client.delete(p + '/cad', prevValue='c')
        etcd_client.delete(p + '/d', recursive=True)
        etcd_client.write(p + '/newdir', None, dir=True)
        wait_until(lambda: p + '/ttl' not in etcd_state(etcd_client, p),
                   timeout=10)
        wait_until(lambda: w.etcd_data == etcd_state(etcd_client, p)
                   and fold_changes(w.changes) == w.etcd_data)
    finally:
        w.stop()
        thread.join(5)
    assert not thread.is_alive()
    assert w.etcd_data == {p + '/a': '2'}
    deletes = sorted(k for a, k, v in w.changes if a == 'delete')
    assert deletes == sorted([p + '/cad', p + '/d/x', p + '/d/y/z',
                              p + '/ttl'])
    assert ('change', p + '/a', '1') not in w.changes


def test_missing_watch_path_then_created(etcd_client, etcd_prefix):
    p = etcd_prefix + '/not/yet'
    w = Recorder(etcd_client, 'rec', p, heartbeat=1)
    assert w.etcd_data == {} and w.synced
    thread = threading.Thread(target=w.watch_forever, daemon=True)
    thread.start()
    try:
        etcd_client.write(p + '/k', 'v')
        wait_until(lambda: w.changes == [('add', p + '/k', 'v')])
    finally:
        w.stop()
        thread.join(5)


@pytest.mark.parametrize('mode', ['threading', 'eventlet'])
def test_watcher_process_converges_after_falling_behind_history(
        etcd_server, etcd_client, etcd_prefix, mode):
    p = etcd_prefix
    for i in range(10):
        etcd_client.write('%s/k%d' % (p, i), 'init')
    args = ['watch', address(etcd_server), p, 1]
    if mode == 'eventlet':
        args.append('--eventlet')
    with Workers() as workers:
        w = workers.start(*args)
        synced = w.wait_for(lambda lines: w.events('synced'))
        assert synced[0]['handler'] == mode
        w.wait_for(lambda lines: len(reported(lines)) == 10)
        # Stop the process while its watch is parked, then write more
        # than etcd's 1000-event history.
        w.signal(signal.SIGSTOP)
        for i in range(1500):
            etcd_client.write('%s/k%d' % (p, i % 200), str(i))
        for i in range(0, 200, 3):
            etcd_client.delete('%s/k%d' % (p, i))
        etcd_client.write(p + '/dir/a', 'a')
        etcd_client.delete(p + '/dir', recursive=True)
        w.signal(signal.SIGCONT)
        truth = etcd_state(etcd_client, p)
        w.wait_for(lambda lines: reported(lines) == truth, timeout=60)


def _elected(workers):
    return sorted(((line, worker) for worker in workers.all
                   for line in worker.events('elected')),
                  key=lambda pair: pair[0]['t'])


def _start_electors(workers, server, name, work_time, recovery_time):
    for _ in range(3):
        workers.start('elect', address(server), name, work_time,
                      recovery_time)
    for worker in workers.all:
        worker.wait_for(lambda lines: worker.events('campaigning'))
    wait_until(lambda: _elected(workers), timeout=30)
    elected = _elected(workers)
    assert len(elected) == 1, elected
    return elected[0]


def test_kill_9_of_the_leader_fails_over_within_bounds(etcd_server):
    work_time, recovery_time = 2, 1
    name = 'svc' + uuid.uuid4().hex[:8]
    with Workers() as workers:
        first, leader = _start_electors(workers, etcd_server, name,
                                        work_time, recovery_time)
        killed_at = time.time()
        leader.kill()
        wait_until(lambda: len(_elected(workers)) == 2, timeout=30)
        second, new_leader = _elected(workers)[1]
        assert new_leader is not leader
        assert second['term'] > first['term']
        failover = second['t'] - killed_at
        assert failover <= work_time + recovery_time + 1, failover


def test_clean_exit_of_the_leader_hands_over_within_a_second(etcd_server):
    name = 'svc' + uuid.uuid4().hex[:8]
    with Workers() as workers:
        first, leader = _start_electors(workers, etcd_server, name, 10, 5)
        exited_at = time.time()
        assert leader.terminate() == 0
        wait_until(lambda: len(_elected(workers)) == 2, timeout=30)
        second, new_leader = _elected(workers)[1]
        assert new_leader is not leader
        handover = second['t'] - exited_at
        assert handover < 1.0, handover


def test_a_paused_etcd_costs_one_timeout_not_four(fresh_etcd_server):
    """urllib3 would retry a stalled watch three times; we must not."""
    from etcdwatch import EtcdUnavailable
    client = fresh_etcd_server.client()
    heartbeat = 2
    w = Recorder(client, 'rec', '/paused', heartbeat=heartbeat)
    fresh_etcd_server.pause()
    try:
        start = time.monotonic()
        with pytest.raises(EtcdUnavailable):
            w.do_watch()
        took = time.monotonic() - start
    finally:
        fresh_etcd_server.resume()
    assert took < heartbeat + 5, took
    client.write('/paused/k', 'v')
    wait_until(lambda: (w.do_watch(), w.changes)[1] == [
        ('add', '/paused/k', 'v')], timeout=30)
