"""Live throughput: one follower while writer processes write flat out.

A follower (an etcdwatch ``EtcdWatcher`` whose callback only counts, or
the bare python-etcd loop) runs in a thread of this process; N writer
processes then write for a fixed time as fast as they can, each to its own
keys under the prefix.  We measure how fast the follower's applied index
advances while they write (events/s; a full re-read advances it by all the
events it covers), how far behind it is when they stop, and how long it
then takes to hold etcd's state.  One trial per implementation in turn.
"""

import collections
import itertools
import multiprocessing
import threading
import time

import etcd
import psutil

from benchmarks import baselines
from benchmarks import common
from benchmarks import followers

PREFIX = '/bench/tp'
WRITER_COUNTS = (1, 4, 8)
QUICK_WRITER_COUNTS = (1, 4)
REPEATS = 5
QUICK_REPEATS = 1
DURATION = 4.0
QUICK_DURATION = 1.5
#: Each writer cycles over this many keys of its own.
KEYS_PER_WRITER = 100
#: Followers' watch timeout: short, so a follower stops promptly.
HEARTBEAT = 1
CONVERGE_TIMEOUT = 60
#: Full reads of the prefix (and watches of one past event) timed to
#: compare the convergence with.
READ_SAMPLES = 3
GOAL_RATE = 0.9
IMPLS = ('etcdwatch', 'bare')


def _writer(host, port, number, commands, results):
    """A writer process: on each command, write flat out for a while."""
    client = etcd.Client(host=host, port=port, read_timeout=30)
    results.put(('ready', number))
    for prefix, duration in iter(commands.get, None):
        count = last = 0
        deadline = time.time() + duration
        while time.time() < deadline:
            key = '%s/w%d/k%d' % (prefix, number, count % KEYS_PER_WRITER)
            last = client.write(key, str(count)).modifiedIndex
            count += 1
        results.put((number, count, last, time.time()))


# Numbers every trial's prefix, so that no two trials share one.
_TRIALS = itertools.count()


class _Writers(object):
    """Writer processes, started once and reused by every trial."""

    def __init__(self, server, count):
        mp = multiprocessing.get_context('spawn')
        self.results = mp.Queue()
        self.commands = [mp.Queue() for _ in range(count)]
        self.procs = [mp.Process(target=_writer, daemon=True, args=(
            server.host, server.port, n, self.commands[n], self.results))
            for n in range(count)]
        for proc in self.procs:
            proc.start()
        for _ in self.procs:
            self.results.get(timeout=CONVERGE_TIMEOUT)

    def write(self, count, prefix, duration):
        """Start the first ``count`` writers."""
        for queue in self.commands[:count]:
            queue.put((prefix, duration))

    def collect(self, count):
        """[(writer, writes, last index, end time)] of ``count`` writers."""
        return [self.results.get(timeout=CONVERGE_TIMEOUT)
                for _ in range(count)]

    def close(self):
        for queue in self.commands:
            queue.put(None)
        for proc in self.procs:
            proc.join(CONVERGE_TIMEOUT)


class _Follower(object):
    """One implementation following ``prefix`` in a thread."""

    def __init__(self, ctx, impl, prefix):
        self.progress = common.Progress()
        client = ctx.client()
        if impl == 'etcdwatch':
            self.follower = followers.CountingWatcher(
                client, 'throughput', prefix, heartbeat=HEARTBEAT,
                progress=self.progress)
            self.thread = common.start_thread(self.follower.watch_forever)
            self.stop = self.follower.stop
            self.data = lambda: self.follower.etcd_data
        else:
            self.follower = baselines.BareFollower(
                client, prefix, HEARTBEAT, progress=self.progress)
            stopped = threading.Event()
            self.thread = common.start_thread(self.follower.run, stopped)
            self.stop = stopped.set
            self.data = lambda: self.follower.data

    def close(self):
        self.stop()
        self.thread.join(HEARTBEAT * 5)


def _trial(ctx, writers, impl, count, number):
    prefix = '%s/%s-%d-%d-%d' % (PREFIX, impl, count, number,
                                 next(_TRIALS))
    client = ctx.client()
    client.write(prefix, None, dir=True)
    follower = _Follower(ctx, impl, prefix)
    duration = ctx.pick(DURATION, QUICK_DURATION)
    cpu = _CpuMeter(ctx.server.pid)
    try:
        writers.write(count, prefix, duration)
        started, first = time.time(), follower.progress.index
        cpu.start()
        time.sleep(duration)
        stopped, reached = time.time(), follower.progress.index
        cpu.stop()
        done = writers.collect(count)
        last = max(index for _n, _w, index, _t in done)
        ended = max(end for _n, _w, _i, end in done)
        follower.progress.aim(last)
        converged = follower.progress.reached.wait(CONVERGE_TIMEOUT)
        _index, tree = common.read_tree(client, prefix)
        applied = max(1, reached - first)
        return {
            'rate': (reached - first) / (stopped - started),
            'write_rate': sum(w for _n, w, _i, _t in done) / duration,
            'share': common.ratio(reached - first,
                                  sum(w for _n, w, _i, _t in done)),
            'follower_cpu': cpu.used['follower'] / applied,
            'etcd_cpu': cpu.used['etcd'] / applied,
            'lag': last - reached,
            'converge': (follower.progress.reached_at - ended
                         if converged else float('nan')),
            'read': _timed(lambda: common.read_tree(client, prefix)),
            'round_trip': _timed(lambda: client.watch(
                prefix, index=last, recursive=True)),
            'reads': follower.progress.reads,
            'correct': follower.data() == tree,
        }
    finally:
        follower.close()


class _CpuMeter(object):
    """CPU seconds used by this process (the follower) and by etcd."""

    def __init__(self, etcd_pid):
        self.procs = {'follower': psutil.Process(),
                      'etcd': psutil.Process(etcd_pid)}
        self.used = {}

    @staticmethod
    def _seconds(proc):
        times = proc.cpu_times()
        return times.user + times.system

    def start(self):
        self.used = {name: -self._seconds(proc)
                     for name, proc in self.procs.items()}

    def stop(self):
        for name, proc in self.procs.items():
            self.used[name] += self._seconds(proc)


def _timed(request):
    """Median seconds of a few calls of ``request``."""
    samples = []
    for _ in range(READ_SAMPLES):
        start = common.now()
        request()
        samples.append(common.now() - start)
    return common.median(samples)


def measure(ctx):
    """{writers: {impl: [trial, ...]}}."""
    counts = ctx.pick(WRITER_COUNTS, QUICK_WRITER_COUNTS)
    writers = _Writers(ctx.server, max(counts))
    results = collections.defaultdict(lambda: collections.defaultdict(list))
    try:
        for rep in range(ctx.pick(REPEATS, QUICK_REPEATS)):
            for count in counts:
                shift = rep % len(IMPLS)
                order = IMPLS[shift:] + IMPLS[:shift]
                for impl in order:
                    trial = _trial(ctx, writers, impl, count, rep)
                    results[count][impl].append(trial)
                    ctx.log('throughput %d writers %s: %.0f ev/s (writes '
                            '%.0f/s), lag %d, converge %.0f ms, reads %d'
                            % (count, impl, trial['rate'],
                               trial['write_rate'], trial['lag'],
                               trial['converge'] * 1e3, trial['reads']))
    finally:
        writers.close()
    return {count: dict(by_impl) for count, by_impl in results.items()}


def _med(trials, field):
    return common.median([t[field] for t in trials])


def rows(results):
    table = []
    for count in sorted(results):
        ours, bare = results[count]['etcdwatch'], results[count]['bare']
        rate_ratio = common.ratio(_med(ours, 'rate'), _med(bare, 'rate'))
        table.append(common.row(
            'throughput', '%d writers' % count, 'events applied/s', 'ev/s',
            _med(ours, 'rate'), 'bare loop', _med(bare, 'rate'),
            'ours/bare', rate_ratio, '>= %.1fx bare' % GOAL_RATE,
            rate_ratio >= GOAL_RATE,
            'writes/s while etcdwatch / bare followed: %.0f / %.0f; lag at '
            "stop %d / %d events; all hold etcd's state: %s" % (
                _med(ours, 'write_rate'), _med(bare, 'write_rate'),
                _med(ours, 'lag'), _med(bare, 'lag'),
                all(t['correct'] for t in ours + bare))))
        table.append(common.row(
            'throughput', '%d writers' % count,
            'share of written events applied while writing', '%',
            _med(ours, 'share') * 100, 'bare loop',
            _med(bare, 'share') * 100, 'ours/bare',
            common.ratio(_med(ours, 'share'), _med(bare, 'share')),
            note='CPU per 1000 events applied, follower process / etcd, in '
            'ms: %s' % '; '.join(
                '%s %.0f / %.0f' % (
                    impl, _med(results[count][impl], 'follower_cpu') * 1e6,
                    _med(results[count][impl], 'etcd_cpu') * 1e6)
                for impl in IMPLS)))
        bound = (_med(ours + bare, 'read') +
                 _med(ours + bare, 'round_trip'))
        converge = _med(ours, 'converge')
        table.append(common.row(
            'throughput', '%d writers' % count, 'converge after stop', 'ms',
            converge * 1e3, 'bare loop', _med(bare, 'converge') * 1e3,
            'ours/bare', common.ratio(converge, _med(bare, 'converge')),
            '<= one read + one watch (%.1f ms)' % (bound * 1e3),
            converge <= bound,
            'full re-reads while writing: etcdwatch %s, bare %s' % (
                _med(ours, 'reads') - 1, _med(bare, 'reads') - 1)))
    return table


def plot_series(results):
    """{impl: [(writers, events/s)]} for the plot."""
    return {impl: [(count, _med(results[count][impl], 'rate'))
                   for count in sorted(results)] for impl in IMPLS}
