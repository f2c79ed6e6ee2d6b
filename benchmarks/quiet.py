"""A quiet prefix on a busy etcd (v3): one stream, or one per heartbeat.

An etcd of its own (v2 API disabled).  A writer process runs
``WRITERS`` threads, each with its own etcd3gw client, each writing about
``WRITE_RATE`` times a second to keys of its own under another prefix;
every ``COMPACT_EVERY`` seconds the whole keyspace is compacted at the
current revision.  Two ``EtcdChangeWatcher`` threads follow a quiet prefix
of ``TREE_SIZE`` keys side by side, heartbeat ``HEARTBEAT`` seconds:
etcdwatch as it is (its v3 stream stays open across silent heartbeats,
asking for progress notifications), and the baseline "reopen every
heartbeat": the same class with its stream closed after every silent
heartbeat, as etcdwatch did before, so that each call reopens the stream
at the last revision seen under the prefix (etcd replays the keyspace's
history since, and after a compaction answers "compacted", which forces a
full re-read).  A write under the quiet prefix near the end is the
control: both must see it.  Counted per watcher: full re-reads after the
initial load, watch streams opened (calls of ``V3Backend._open`` that
returned a stream), quorum checks after silent heartbeats, and the CPU
time of the watcher's thread.  Then etcdwatch alone runs the same load
again on an etcd started with
``--experimental-watch-progress-notify-interval=1s`` (etcd's default is
10 minutes).
"""

import multiprocessing
import os
import threading
import time

import etcdwatch

from benchmarks import apis
from benchmarks import common
from etcdwatch.testing import server as etcd_server

APIS = (apis.V3,)
PREFIX = '/bench/quiet'
BUSY = '/bench/busy'
TREE_SIZE = 1000
WRITERS = 20
#: Writes per second of each writer thread (rate-limited).
WRITE_RATE = 25
#: Keys each writer cycles through (the keyspace stays small).
WRITER_KEYS = 100
COMPACT_EVERY = 10
HEARTBEAT = 2
DURATION = 120
QUICK_DURATION = 30
#: The control write goes this many seconds before the end.
CONTROL_BEFORE_END = 8
PROGRESS_ARGS = ('--experimental-watch-progress-notify-interval=1s',)
#: Goal from the issue: full re-reads of the quiet watcher in 2 minutes.
GOAL_RESYNCS = 0
IMPLS = ('etcdwatch', 'reopen')
NAMES = {'etcdwatch': 'etcdwatch', 'reopen': 'reopen every heartbeat',
         'progress': 'etcdwatch, progress notify 1 s'}


class _Watcher(etcdwatch.EtcdChangeWatcher):
    """Counts the streams it opens; notes when control keys arrive."""

    def __init__(self, *args, **kwargs):
        self.seen = {}
        self.streams = 0
        self.cpu = None
        super(_Watcher, self).__init__(*args, **kwargs)
        inner = self._backend._open

        def counting(*a, **kw):
            stream = inner(*a, **kw)
            if stream is not None:
                self.streams += 1
            return stream
        self._backend._open = counting

    def added(self, short_key, value):
        if short_key.startswith('control'):
            self.seen[short_key] = time.time()

    def run(self):
        self.watch_forever()
        self.cpu = time.thread_time()


class _Reopening(_Watcher):
    """The baseline: the stream is closed after every silent heartbeat.

    The next call reopens it at the last revision seen under the prefix
    (the etcd here sends no progress notification within the run, its
    interval being 10 minutes), as etcdwatch did before it kept streams.
    """

    def do_watch(self):
        checks = self._stats['checks']
        try:
            super(_Reopening, self).do_watch()
        finally:
            if self._stats['checks'] != checks:
                self._backend.close()


def _busy_writer(host, port, slot, rate, stop, counts):
    client = apis.connect(apis.V3, host, port, timeout=10)
    started = time.monotonic()
    done = 0
    while not stop.is_set():
        key = '%s/w%02d/k%03d' % (BUSY, slot, done % WRITER_KEYS)
        try:
            apis.put(apis.V3, client, key, common.value_of_size(done, 64))
        except Exception:
            time.sleep(0.1)
            continue
        done += 1
        counts[slot] = done
        delay = started + done / rate - time.monotonic()
        if delay > 0:
            stop.wait(delay)


def _busy_process(host, port, writers, rate, stop, counts):
    """The writer process: ``writers`` threads until ``stop`` is set."""
    threads = [threading.Thread(target=_busy_writer,
                                args=(host, port, slot, rate, stop, counts))
               for slot in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


class _Compactor(object):
    """Compacts the whole keyspace at its current revision, periodically."""

    def __init__(self, host, port):
        self.client = apis.connect(apis.V3, host, port, timeout=10)
        self.count = 0
        self.stopped = threading.Event()
        self.thread = common.start_thread(self._run)

    def _run(self):
        while not self.stopped.wait(COMPACT_EVERY):
            revision = apis.revision(apis.v3_call(
                self.client, 'kv/range', {'key': apis.b64(BUSY)}))
            apis.v3_call(self.client, 'kv/compaction',
                         {'revision': revision})
            self.count += 1

    def stop(self):
        self.stopped.set()
        self.thread.join()


def _cpu_of(pid):
    """User + system CPU seconds of process ``pid`` (Linux), or None."""
    try:
        with open('/proc/%d/stat' % pid) as stat:
            fields = stat.read().rsplit(')', 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def _phase(ctx, impls, extra_args, duration):
    """Run ``impls`` side by side on a busy etcd; {impl: figures}."""
    server = etcd_server.EtcdServer(name='etcd-quiet', enable_v2=False,
                                    extra_args=extra_args)
    with server:
        host, port = server.host, server.port
        client = apis.connect(apis.V3, host, port)
        for slot in range(TREE_SIZE):
            apis.put(apis.V3, client, '%s/k%04d' % (PREFIX, slot),
                     common.value_of_size(slot, 64))
        spawn = multiprocessing.get_context('spawn')
        stop = spawn.Event()
        counts = spawn.Array('l', WRITERS, lock=False)
        writer = spawn.Process(target=_busy_process, daemon=True, args=(
            host, port, WRITERS, WRITE_RATE, stop, counts))
        writer.start()
        watchers = {}
        threads = []
        compactor = None
        try:
            time.sleep(1)      # the writers get going before the loads
            for impl in impls:
                cls = _Reopening if impl == 'reopen' else _Watcher
                watchers[impl] = cls(apis.connect(apis.V3, host, port),
                                     'quiet-' + impl, PREFIX,
                                     heartbeat=HEARTBEAT)
                assert watchers[impl].synced
            writes_before = sum(counts)
            etcd_cpu = _cpu_of(server.pid)
            times = os.times()
            started = time.monotonic()
            threads = [common.start_thread(w.run) for w in watchers.values()]
            compactor = _Compactor(host, port)
            time.sleep(max(0, duration - CONTROL_BEFORE_END))
            control = time.time()
            apis.put(apis.V3, client, PREFIX + '/control', 'end')
            time.sleep(max(0, started + duration - time.monotonic()))
            elapsed = time.monotonic() - started
            writes = sum(counts) - writes_before
            ended = os.times()
            etcd_cpu_end = _cpu_of(server.pid)
        finally:
            if compactor is not None:
                compactor.stop()
            for watcher in watchers.values():
                watcher.stop()
            for thread in threads:
                thread.join(HEARTBEAT + 10)
            stop.set()
            writer.join(30)
            if writer.is_alive():
                writer.terminate()
    results = {}
    for impl, watcher in watchers.items():
        stats = watcher.stats()
        seen = watcher.seen.get('control')
        results[impl] = {
            'resyncs': stats['resyncs'] - 1,
            'streams': watcher.streams,
            'checks': stats['checks'],
            'errors': stats['errors'],
            'events': stats['events'],
            'cpu': watcher.cpu,
            'control_ms': None if seen is None else (seen - control) * 1e3,
        }
    shared = {
        'seconds': elapsed,
        'writes_per_s': writes / elapsed,
        'compactions': compactor.count,
        'process_cpu': (ended.user + ended.system -
                        times.user - times.system),
        'etcd_cpu': (None if etcd_cpu is None or etcd_cpu_end is None
                     else etcd_cpu_end - etcd_cpu),
    }
    for figures in results.values():
        figures.update(shared)
    ctx.log('quiet %s%s: %s; %.0f writes/s, %d compactions, process CPU '
            '%.1f s, etcd CPU %s s' % (
                '+'.join(impls), ' ' + ' '.join(extra_args)
                if extra_args else '', '; '.join(
                    '%s: %d re-reads, %d streams, %d checks, %d errors, '
                    'CPU %.2f s, control %s' % (
                        i, f['resyncs'], f['streams'], f['checks'],
                        f['errors'], f['cpu'] or 0,
                        'missed' if f['control_ms'] is None else
                        '%.0f ms' % f['control_ms'])
                    for i, f in results.items()),
                shared['writes_per_s'], shared['compactions'],
                shared['process_cpu'], '%.1f' % shared['etcd_cpu']
                if shared['etcd_cpu'] is not None else '?'))
    return results


def measure(ctx):
    """The figures of each watcher, and the run's duration.

    ``{'duration': s, 'etcdwatch': {...}, 'reopen': {...}, 'progress':
    {...}}``.
    """
    duration = ctx.pick(DURATION, QUICK_DURATION)
    results = {'duration': duration}
    results.update(_phase(ctx, IMPLS, (), duration))
    results['progress'] = _phase(ctx, ('etcdwatch',), PROGRESS_ARGS,
                                 duration)['etcdwatch']
    return results


_METRICS = (
    ('resyncs', 'full re-reads after the initial load', 'count'),
    ('streams', 'watch streams opened', 'count'),
    ('checks', 'quorum checks after silent heartbeats', 'count'),
    ('cpu', 'CPU of the watcher thread', 's'),
    ('control_ms', 'control write seen after', 'ms'),
)


def rows(results):
    duration = results['duration']
    param = 'v3, %d keys, %d s' % (TREE_SIZE, duration)
    ours, base = results['etcdwatch'], results['reopen']
    table = []
    for field, metric, unit in _METRICS:
        goal, met = '', None
        if field == 'resyncs':
            goal = '%d in 2 min' % GOAL_RESYNCS
            met = ours['resyncs'] <= GOAL_RESYNCS
        table.append(common.row(
            'quiet', param, metric, unit, ours[field], NAMES['reopen'],
            base[field], 'ours/baseline',
            _ratio(ours[field], base[field]), goal, met,
            _note(ours) if field == 'resyncs' else ''))
    progress = results['progress']
    param = 'v3, progress notify 1 s, %d s' % duration
    for field, metric, unit in _METRICS:
        table.append(common.row(
            'quiet', param, metric, unit, progress[field],
            'etcdwatch, default etcd', ours[field], 'ratio',
            _ratio(progress[field], ours[field]), '', None,
            _note(progress) if field == 'resyncs' else ''))
    return table


def _ratio(ours, base):
    if ours is None or base is None:
        return None
    return common.ratio(ours, base)


def _note(figures):
    return ('%.0f writes/s to other prefixes, %d compactions; process CPU '
            '%.1f s, etcd CPU %s s' % (
                figures['writes_per_s'], figures['compactions'],
                figures['process_cpu'], '?' if figures['etcd_cpu'] is None
                else '%.1f' % figures['etcd_cpu']))
