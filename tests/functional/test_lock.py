"""EtcdLock on a real etcd: five processes contending, on v2 and v3.

Each worker process (tests/functional/worker.py, mode ``lock``) logs the
wall-clock time just after each acquire() returned and just before each
release(); the promise, at most one holder at a time, is checked from
those intervals.  Also: every worker gets the lock (no starvation), in the
order they queued; a holder killed with SIGKILL frees the lock within its
TTL; threads, eventlet and asyncio (v3) workers.  The time from a release
to the next waiter's acquire is printed (median), not asserted.
"""

import statistics
import time

import pytest

from etcdwatch import backends
from etcdwatch.lock import EtcdLock
from tests.functional import procs
from tests.helpers import wait_until

WORKERS = 5
ROUNDS = 4
TTL = 3
WAIT = 60


def queue_length(client, name):
    return len(backends.for_client(client).read_queue(
        '/locks/' + name).entries)


def holds(workers):
    """(acquired t, releasing t, worker number, token) of every hold."""
    out = []
    for number, worker in enumerate(workers):
        acquired = worker.events('acquired')
        releasing = worker.events('releasing')
        assert all(r['held'] for r in releasing), \
            'a worker lost the lock while holding it: %r' % releasing
        for a, r in zip(acquired, releasing):
            out.append((a['t'], r['t'], number, a['token']))
    return sorted(out)


def check_one_at_a_time(intervals):
    for a, b in zip(intervals, intervals[1:]):
        assert a[1] <= b[0], 'two holders at once: %r and %r' % (a, b)
    tokens = [i[3] for i in intervals]
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens), \
        'fencing tokens do not grow with every holder: %r' % tokens


def handovers(intervals):
    """Seconds from each release to the next holder's acquire."""
    return [b[0] - a[1] for a, b in zip(intervals, intervals[1:])]


def contend(args_for, name, flags=()):
    """Run WORKERS processes taking the lock ROUNDS times each."""
    with procs.Workers() as workers:
        started = [workers.start(*(args_for(name) + list(flags)))
                   for _ in range(WORKERS)]
        for worker in started:
            worker.wait_for(lambda lines: any(
                line.get('event') == 'done' for line in lines), WAIT)
        intervals = holds(started)
    assert len(intervals) == WORKERS * ROUNDS
    for number in range(WORKERS):
        assert sum(1 for i in intervals if i[2] == number) == ROUNDS, \
            'worker %d starved' % number
    check_one_at_a_time(intervals)
    gaps = handovers(intervals)
    return intervals, gaps


@pytest.mark.parametrize('flags', [(), ('--eventlet',)],
                         ids=['threads', 'eventlet'])
def test_five_processes_take_turns(backend_client, flags):
    d = backend_client
    name = 'turns-%s' % time.monotonic_ns()

    def args_for(name):
        return d.worker_args('lock', name, TTL, 0.02, ROUNDS)
    started = time.monotonic()
    intervals, gaps = contend(args_for, name, flags)
    print('%s %s: %d holds by %d processes in %.1fs; release -> next '
          'acquire: median %.1f ms, max %.1f ms'
          % (type(d).__name__, flags or 'threads', len(intervals), WORKERS,
             time.monotonic() - started,
             1000 * statistics.median(gaps), 1000 * max(gaps)))
    assert queue_length(d.client, name) == 0


def test_five_asyncio_processes_take_turns(etcd3_client, etcd_v3_server):
    address = '%s:%d' % (etcd_v3_server.host, etcd_v3_server.port)
    name = 'aio-%s' % time.monotonic_ns()

    def args_for(name):
        return ['lock', address, name, TTL, 0.02, ROUNDS, '--asyncio']
    intervals, gaps = contend(args_for, name)
    print('asyncio v3: release -> next acquire: median %.1f ms'
          % (1000 * statistics.median(gaps)))
    assert queue_length(etcd3_client, name) == 0


def test_waiters_are_served_in_the_order_they_queued(backend_client):
    """And a median over 20 handovers of release -> next acquire."""
    d = backend_client
    name = 'order-%s' % time.monotonic_ns()
    mine = EtcdLock(d.client, name, '/locks', TTL)
    gaps = []
    with procs.Workers() as workers:
        for _round in range(4):
            assert mine.acquire(timeout=WAIT)
            queued = []
            for i in range(WORKERS):
                queued.append(workers.start(*d.worker_args(
                    'lock', name, TTL, 0.01, 1)))
                # Its key is in the queue before the next one starts.
                wait_until(lambda: queue_length(d.client, name) == i + 2,
                           WAIT)
            released = time.time()
            mine.release()
            for worker in queued:
                worker.wait_for(lambda lines: any(
                    line.get('event') == 'done' for line in lines), WAIT)
            intervals = holds(queued)
            check_one_at_a_time(intervals)
            assert [i[2] for i in intervals] == list(range(WORKERS)), \
                'not served in the order they queued'
            gaps.append(intervals[0][0] - released)
            gaps.extend(handovers(intervals))
    assert len(gaps) >= 20
    print('%s: release -> next waiter\'s acquire over %d handovers: '
          'median %.1f ms, max %.1f ms'
          % (type(d).__name__, len(gaps), 1000 * statistics.median(gaps),
             1000 * max(gaps)))


@pytest.mark.parametrize('flags', [(), ('--eventlet',)],
                         ids=['threads', 'eventlet'])
def test_a_holder_killed_frees_the_lock_within_its_ttl(backend_client,
                                                       flags):
    d = backend_client
    name = 'kill-%s' % time.monotonic_ns()
    with procs.Workers() as workers:
        holder = workers.start(*(d.worker_args('lock', name, TTL, 0, 0) +
                                 list(flags)))
        holder.wait_for(lambda lines: holder.events('acquired'), WAIT)
        waiter = workers.start(*(d.worker_args('lock', name, TTL, 0.01, 1)
                                 + list(flags)))
        wait_until(lambda: queue_length(d.client, name) == 2, WAIT)
        # Let the keepalives renew past a TTL first.
        time.sleep(TTL + 0.5)
        assert not waiter.events('acquired')
        killed = time.time()
        holder.kill()
        [acquired] = waiter.wait_for(
            lambda lines: waiter.events('acquired'), WAIT)
        took = acquired['t'] - killed
        print('%s %s: a killed holder freed the lock after %.2fs (ttl %ss)'
              % (type(d).__name__, flags or 'threads', took, TTL))
        assert took <= TTL + 1.5
        assert acquired['token'] > holder.events('acquired')[0]['token']
