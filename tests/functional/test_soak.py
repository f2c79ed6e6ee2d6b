"""A bounded soak: 45 s of everything at once, on each API.

3 electing processes and 5 watcher processes (two of them eventlet-patched)
under a mixed write load; the leader is killed every 10 s (and replaced by
a fresh process), and etcd itself is killed and restarted once.  At the end:
every watcher reported exactly what etcd holds, and no two terms overlapped.
Runs on etcd's v2 API and on its v3 API (``fresh_backend``): about a
minute and a half in all.
"""

import random
import threading
import time
import uuid

from tests.drivers import make_driver
from tests.functional.procs import Workers
from tests.functional.test_faults import reported
from tests.functional.test_faults import terms_never_overlap
from tests.helpers import wait_until

DURATION = 45           # seconds of load, plus start-up and convergence
LEADER_KILL_EVERY = 10
RESTART_ETCD_AT = 2     # the second kill is etcd's


def _writer(driver, prefix, stop, counts):
    rng = random.Random(7)
    d = make_driver(driver.name, driver.server)     # a client of its own
    while not stop.is_set():
        key = '%s/%s/k%d' % (prefix, rng.choice('abc'), rng.randint(0, 60))
        try:
            roll = rng.random()
            if roll < 0.65:
                d.put(key, str(rng.randint(0, 9)))
            elif roll < 0.85:
                d.delete(key)
            elif roll < 0.95:
                d.put(key, 'ttl', ttl=1)
            else:
                d.delete_prefix('%s/%s' % (prefix, rng.choice('abc')))
            counts['ok'] += 1
        except Exception:   # noqa: either API's errors: etcd is down
            counts['failed'] += 1
            stop.wait(0.2)      # don't spin
        stop.wait(0.01)


def test_soak(fresh_backend):
    d, prefix = fresh_backend, '/soak'
    server = d.server
    name = 'soak' + uuid.uuid4().hex[:8]
    stop, counts = threading.Event(), {'ok': 0, 'failed': 0}
    with Workers() as workers:
        watchers = [workers.start(*d.worker_args(
            'watch', prefix, 2, *(['--eventlet'] if i < 2 else [])))
            for i in range(5)]
        electors = [workers.start(*d.worker_args('lead', name, 3, 1, 0.1))
                    for _ in range(3)]
        for w in watchers:
            w.wait_for(lambda lines, w=w: w.events('synced'))
        writer = threading.Thread(target=_writer,
                                  args=(d, prefix, stop, counts),
                                  daemon=True)
        writer.start()
        start = time.monotonic()
        restarted_etcd = kills = 0
        try:
            while time.monotonic() - start < DURATION:
                wait_until(lambda: time.monotonic() - start >
                           (kills + 1) * LEADER_KILL_EVERY, timeout=60,
                           interval=0.2)
                kills += 1
                if kills == RESTART_ETCD_AT and not restarted_etcd:
                    server.kill()
                    server.restart()
                    restarted_etcd = 1
                    continue
                leaders = [w for w in electors if w.proc.poll() is None
                           and w.events('work') and
                           len(w.events('elected')) > len(w.events('lost'))]
                if leaders:
                    leaders[0].kill()
                    electors.remove(leaders[0])
                    electors.append(workers.start(*d.worker_args(
                        'lead', name, 3, 1, 0.1)))
        finally:
            stop.set()
            writer.join(30)
        d.reconnect()
        # TTL keys may still expire: wait for etcd to settle too.
        wait_until(lambda: all(v != 'ttl' for v in
                               d.state(prefix).values()), timeout=30)
        truth = d.state(prefix)
        for w in watchers:
            w.wait_for(lambda lines, w=w: reported(w) == truth, timeout=90)
        terms = terms_never_overlap(workers)
        print('\n%s soak: %d writes (%d refused while etcd was down), %d '
              'leader kills, %d terms, etcd restarted once'
              % (d.name, counts['ok'], counts['failed'], kills - 1, terms))
        assert restarted_etcd and kills - 1 >= 3
        assert terms >= 3 and counts['ok'] > 1000
