"""Faults on a real etcd.  Every scenario ends by checking the promise:
once writes stop, what each watcher reported equals what etcd holds; and
with multi_worker_ok=False, no two workers' terms overlap.

Figures (CPU during an outage, recovery times) are printed with ``-s`` and
collected in docs/reliability.rst.
"""

import logging
import threading
import time
import uuid

import etcd
import psutil
import pytest

from tests.functional.chaos import ChaosProxy
from tests.functional.procs import Workers
from tests.helpers import ChangeRecorder as Recorder
from tests.helpers import etcd_state
from tests.helpers import fold_changes
from tests.helpers import wait_until


def address(server):
    return '%s:%d' % (server.host, server.port)


def reported(worker):
    return fold_changes([(line['action'], line['key'], line['value'])
                         for line in worker.lines if 'action' in line])


def cpu_seconds(pids):
    total = 0.0
    for pid in pids:
        proc = psutil.Process(pid)
        for p in [proc] + proc.children(recursive=True):
            times = p.cpu_times()
            total += times.user + times.system
    return total


def terms_never_overlap(workers):
    spans = {}
    for w in workers.all:
        for line in w.events('work'):
            span = spans.setdefault((id(w), line['term']), [line['t']] * 2)
            span[1] = line['t']
    ordered = sorted(spans.values())
    for (_s1, end1), (start2, _e2) in zip(ordered, ordered[1:]):
        assert end1 < start2, ordered
    return len(ordered)


def run_in_thread(watcher):
    thread = threading.Thread(target=watcher.watch_forever, daemon=True)
    thread.start()
    return thread


def test_etcd_killed_and_restarted_under_watchers_and_an_election(
        fresh_etcd_server):
    server, prefix = fresh_etcd_server, '/faults/kill'
    client = server.client()
    for i in range(20):
        client.write('%s/k%d' % (prefix, i), 'v%d' % i)
    name = 'svc' + uuid.uuid4().hex[:8]
    with Workers() as workers:
        watchers = [workers.start('watch', address(server), prefix, 2),
                    workers.start('watch', address(server), prefix, 2,
                                  '--eventlet')]
        for _ in range(3):
            workers.start('lead', address(server), name, 3, 1, 0.1)
        for w in watchers:
            w.wait_for(lambda lines, w=w: len(reported(w)) == 20)
        wait_until(lambda: any(w.events('work') for w in workers.all),
                   timeout=30)

        server.kill()
        # Let everyone notice, then measure a 10 s outage.
        wait_until(lambda: any(w.events('lost') for w in workers.all),
                   timeout=30)
        pids = [w.proc.pid for w in workers.all]
        before, start = cpu_seconds(pids), time.monotonic()
        wait_until(lambda: time.monotonic() - start >= 10, timeout=20,
                   interval=0.5)
        cpu = cpu_seconds(pids) - before
        per_process = cpu / (time.monotonic() - start) / len(pids)
        print('\nCPU during a 10 s outage: %.2f%% of one core per process '
              '(%d processes)' % (100 * per_process, len(pids)))
        assert per_process < 0.02

        restarted = time.monotonic()
        server.restart()
        client = server.client()
        for i in range(20, 30):
            client.write('%s/k%d' % (prefix, i), 'v%d' % i)
        client.delete(prefix + '/k0')
        truth = etcd_state(client, prefix)
        for w in watchers:
            w.wait_for(lambda lines, w=w: reported(w) == truth, timeout=60)
        print('watchers converged %.1f s after the restart'
              % (time.monotonic() - restarted))
        n_work = sum(len(w.events('work')) for w in workers.all)
        wait_until(lambda: sum(len(w.events('work'))
                               for w in workers.all) > n_work + 5,
                   timeout=60)
        print('a leader worked again %.1f s after the restart'
              % (time.monotonic() - restarted))
        assert terms_never_overlap(workers) >= 2


def test_etcd_paused_longer_than_the_heartbeat(fresh_etcd_server):
    server, prefix, heartbeat = fresh_etcd_server, '/faults/pause', 2
    client = server.client()
    client.write(prefix + '/a', '1')
    w = Recorder(client, 'rec', prefix, heartbeat=heartbeat)
    w.DANGER_PAUSE = 0.5
    thread = run_in_thread(w)
    try:
        wait_until(lambda: w.stats()['events'] == 0 and w.synced)
        server.pause()
        paused_at = time.monotonic()
        # The parked watch gives up within heartbeat + 5 s.
        wait_until(lambda: w.stats()['errors'] >= 1,
                   timeout=heartbeat + 5 + 5)
        gave_up = time.monotonic() - paused_at
        wait_until(lambda: time.monotonic() - paused_at > 3 * heartbeat,
                   timeout=30, interval=0.2)
        server.resume()
        client.write(prefix + '/b', '2')
        client.delete(prefix + '/a')
        truth = etcd_state(client, prefix)
        wait_until(lambda: fold_changes(w.changes) == truth ==
                   w.etcd_data, timeout=30)
        print('\nwatch gave up %.1f s into the pause (heartbeat %s s)'
              % (gave_up, heartbeat))
        assert gave_up < heartbeat + 5
    finally:
        w.stop()
        thread.join(heartbeat + 10)
    assert not thread.is_alive()


def test_watcher_carries_on_through_another_cluster_member(etcd_cluster):
    prefix = '/faults/cluster'
    hosts = ','.join('%s:%d' % hp for hp in etcd_cluster.hosts)
    etcd_cluster.wait_for_leader()
    writer = etcd_cluster.client()
    writer.write(prefix + '/a', '1')
    with Workers() as workers:
        w = workers.start('watch', hosts, prefix, 1)
        # 'synced' is printed once the constructor (and its first
        # notifications) returned.
        synced = w.wait_for(lambda lines: w.events('synced'))[0]
        w.wait_for(lambda lines: reported(w) == {prefix + '/a': '1'})
        member = next(m for m in etcd_cluster.members
                      if m.client_url == synced['base_uri'])
        member.kill()
        etcd_cluster.wait_for_leader()
        survivor = next(m for m in etcd_cluster.members if m.is_running)
        writer = survivor.client()
        for i in range(10):
            writer.write('%s/k%d' % (prefix, i), str(i))
        truth = etcd_state(writer, prefix)
        w.wait_for(lambda lines: reported(w) == truth, timeout=60)


def test_history_cleared_while_the_watcher_was_stopped(etcd_client,
                                                       etcd_prefix):
    p = etcd_prefix
    w = Recorder(etcd_client, 'rec', p, heartbeat=1)
    for i in range(1200):
        etcd_client.write('%s/k%d' % (p, i % 150), str(i))
    for i in range(0, 150, 4):
        etcd_client.delete('%s/k%d' % (p, i))
    thread = run_in_thread(w)
    try:
        truth = etcd_state(etcd_client, p)
        wait_until(lambda: fold_changes(w.changes) == truth == w.etcd_data,
                   timeout=30)
        assert w.stats()['resyncs'] >= 2
    finally:
        w.stop()
        thread.join(10)


def test_elected_worker_killed_and_terminated(etcd_server):
    name = 'svc' + uuid.uuid4().hex[:8]
    with Workers() as workers:
        for _ in range(3):
            workers.start('lead', address(etcd_server), name, 2, 0.5, 0.1)

        def leaders():
            return [w for w in workers.all if w.proc.poll() is None and
                    w.events('elected') and not w.events('lost')]
        first = wait_until(leaders, timeout=30)[0]
        first.kill()
        second = wait_until(lambda: [w for w in leaders()
                                     if w is not first], timeout=30)[0]
        assert second.terminate() == 0
        wait_until(lambda: [w for w in leaders()
                            if w not in (first, second)], timeout=30)
        assert terms_never_overlap(workers) >= 3


def test_a_callback_failing_every_third_call_for_a_minute(etcd_client,
                                                          etcd_prefix,
                                                          caplog):
    p = etcd_prefix

    class Flaky(Recorder):
        CALLBACK_RETRY_MIN = 0.05
        CALLBACK_RETRY_MAX = 0.5
        calls = 0

        def key_change(self, action, key, value):
            self.calls += 1
            if self.calls % 3 == 0:
                raise RuntimeError('every third call fails')
            super(Flaky, self).key_change(action, key, value)

    w = Flaky(etcd_client, 'flaky', p, heartbeat=1)
    with caplog.at_level(logging.ERROR, logger='etcdwatch'):
        thread = run_in_thread(w)
        try:
            cpu, start, i = time.process_time(), time.monotonic(), 0
            while time.monotonic() - start < 60:
                etcd_client.write('%s/k%d' % (p, i % 40), str(i))
                if i % 7 == 0:
                    try:
                        etcd_client.delete('%s/k%d' % (p, (i * 3) % 40))
                    except etcd.EtcdKeyNotFound:
                        pass
                i += 1
                time.sleep(0.05)
            truth = etcd_state(etcd_client, p)
            wait_until(lambda: fold_changes(w.changes) == truth ==
                       w.etcd_data, timeout=60)
            cpu = time.process_time() - cpu
            elapsed = time.monotonic() - start
        finally:
            w.stop()
            thread.join(10)
    failures = [r for r in caplog.records
                if 'callback' in r.getMessage() and r.exc_info]
    print('\n%d writes, %d callback failures, all logged; CPU %.1f%% of '
          'one core (writer included)' % (i, w.stats()['callback_errors'],
                                          100 * cpu / elapsed))
    assert w.stats()['callback_errors'] >= 100
    assert len(failures) == w.stats()['callback_errors']
    assert cpu / elapsed < 0.5


def test_garbage_and_cut_connections(etcd_server, etcd_client, etcd_prefix,
                                     caplog):
    p = etcd_prefix
    proxy = ChaosProxy(etcd_server.host, etcd_server.port)
    try:
        via_proxy = etcd.Client(host=proxy.host, port=proxy.port,
                                read_timeout=5)
        etcd_client.write(p + '/a', '1')
        w = Recorder(via_proxy, 'rec', p, heartbeat=1)
        w.DANGER_PAUSE = 0.2
        thread = run_in_thread(w)
        try:
            for mode in ('garbage', 'close'):
                errors = w.stats()['errors']
                proxy.set_mode(mode)
                wait_until(lambda: w.stats()['errors'] >= errors + 3,
                           timeout=30)
                etcd_client.write(p + '/during-' + mode, mode)
                etcd_client.delete(p + '/a')
                etcd_client.write(p + '/a', mode)
                proxy.set_mode('pass')
                truth = etcd_state(etcd_client, p)
                wait_until(lambda: fold_changes(w.changes) == truth ==
                           w.etcd_data, timeout=30)
            assert thread.is_alive()
            assert proxy.requests['garbage'] and proxy.requests['close']
        finally:
            w.stop()
            thread.join(10)
    finally:
        proxy.close()


@pytest.mark.parametrize('shape', ['big-values', 'wide', 'deep'])
def test_hostile_data(etcd_client, etcd_prefix, shape):
    p = etcd_prefix
    w = Recorder(etcd_client, 'rec', p, heartbeat=1)
    thread = run_in_thread(w)
    try:
        if shape == 'big-values':
            for i in range(3):
                etcd_client.write('%s/big%d' % (p, i), chr(65 + i) * 2 ** 20)
        elif shape == 'wide':
            _write_many(etcd_client, ['%s/dir/k%05d' % (p, i)
                                      for i in range(10000)])
        else:
            deep = p + ''.join('/d%d' % i for i in range(20))
            etcd_client.write(deep + '/leaf', 'deep')
            etcd_client.write(p + '/d0/d1/side', 'side')
        truth = etcd_state(etcd_client, p)
        wait_until(lambda: fold_changes(w.changes) == truth == w.etcd_data,
                   timeout=120)
        if shape == 'deep':
            etcd_client.delete(p + '/d0/d1', recursive=True)
            wait_until(lambda: w.etcd_data == {} and
                       fold_changes(w.changes) == {}, timeout=30)
    finally:
        w.stop()
        thread.join(10)


def _write_many(client, keys, threads=8):
    chunks = [keys[i::threads] for i in range(threads)]

    def write(chunk):
        c = etcd.Client(host=client.host, port=client.port)
        for key in chunk:
            c.write(key, 'v')
    workers = [threading.Thread(target=write, args=(c,)) for c in chunks]
    for t in workers:
        t.start()
    for t in workers:
        t.join(300)


def test_keys_other_tools_write(etcd_server, etcd_client, etcd_prefix):
    """Keys python-etcd cannot address are reported exactly.

    Other tools can write keys with spaces, unicode, ?, # or %.
    """
    import urllib.parse
    import urllib.request
    p = etcd_prefix
    w = Recorder(etcd_client, 'rec', p, heartbeat=1)
    thread = run_in_thread(w)
    names = ['with space', 'caf\u00e9', 'a+b', 'q?x', 'h#x', 'pc%2Fx']
    try:
        for name in names:
            url = '%s/v2/keys%s/%s' % (etcd_server.client_url, p,
                                       urllib.parse.quote(name, safe=''))
            req = urllib.request.Request(
                url, data=urllib.parse.urlencode({'value': name}).encode(),
                method='PUT')
            urllib.request.urlopen(req, timeout=10).read()
        truth = etcd_state(etcd_client, p)
        assert sorted(truth) == sorted('%s/%s' % (p, n) for n in names)
        wait_until(lambda: fold_changes(w.changes) == truth == w.etcd_data,
                   timeout=30)
    finally:
        w.stop()
        thread.join(10)
