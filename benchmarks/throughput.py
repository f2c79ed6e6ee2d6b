"""Live throughput: one follower while writer processes write flat out.

A follower (an etcdwatch ``EtcdWatcher`` whose callback only counts, or
the API's bare loop: python-etcd's watch per event on v2, an etcd3gw watch
stream on v3) runs in a thread of this process; N writer processes then
write for a fixed time as fast as they can, each to its own keys under the
prefix.  We measure how fast the follower's applied index advances while
they write (events/s; a full re-read advances it by all the events it
covers), how far behind it is when they stop, and how long it then takes
to hold etcd's state.  One trial per implementation in turn, the two APIs
taking turns too (each writes to its own etcd).
"""

import collections
import itertools
import multiprocessing
import os
import threading
import time

import psutil

from benchmarks import apis
from benchmarks import baselines
from benchmarks import common
from benchmarks import followers

APIS = apis.NAMES
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


def _writer(etcds, number, commands, results):
    """A writer process: on each command, write flat out for a while.

    ``etcds`` maps each API to its etcd's (host, port); a command names
    the API to write with.
    """
    clients = {api: apis.connect(api, host, port)
               for api, (host, port) in etcds.items()}
    results.put(('ready', number))
    for api, prefix, duration in iter(commands.get, None):
        client = clients[api]
        count = last = 0
        deadline = time.time() + duration
        while time.time() < deadline:
            key = '%s/w%d/k%d' % (prefix, number, count % KEYS_PER_WRITER)
            last = apis.put(api, client, key, str(count))
            count += 1
        results.put((number, count, last, time.time()))


# Numbers every trial's prefix, so that no two trials share one.
_TRIALS = itertools.count()


class Writers(object):
    """Writer processes, started once and reused by every trial."""

    def __init__(self, api_list, count):
        mp = multiprocessing.get_context('spawn')
        etcds = {api.name: (api.server.host, api.server.port)
                 for api in api_list}
        self.results = mp.Queue()
        self.commands = [mp.Queue() for _ in range(count)]
        self.procs = [mp.Process(target=_writer, daemon=True, args=(
            etcds, n, self.commands[n], self.results))
            for n in range(count)]
        for proc in self.procs:
            proc.start()
        for _ in self.procs:
            self.results.get(timeout=CONVERGE_TIMEOUT)

    def write(self, count, api, prefix, duration):
        """Start the first ``count`` writers."""
        for queue in self.commands[:count]:
            queue.put((api.name, prefix, duration))

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

    def __init__(self, api, impl, prefix):
        self.progress = common.Progress()
        client = api.client()
        if impl == 'etcdwatch':
            self.follower = followers.CountingWatcher(
                client, 'throughput', prefix, heartbeat=HEARTBEAT,
                progress=self.progress)
            self.thread = common.start_thread(self.follower.watch_forever)
            self.stop = self.follower.stop
            self.data = lambda: self.follower.etcd_data
        else:
            self.follower = baselines.BARE[api.name](
                client, prefix, HEARTBEAT, progress=self.progress)
            stopped = threading.Event()
            self.thread = common.start_thread(self.follower.run, stopped)

            def stop():
                stopped.set()
                self.follower.close()
            self.stop = stop
            self.data = lambda: self.follower.data

    def close(self):
        self.stop()
        self.thread.join(HEARTBEAT * 5)


def trial(ctx, writers, api, impl, count, number):
    prefix = '%s/%s-%s-%d-%d-%d' % (PREFIX, api.name, impl, count, number,
                                    next(_TRIALS))
    client = api.client()
    api.make_dir(client, prefix)
    follower = _Follower(api, impl, prefix)
    duration = ctx.pick(DURATION, QUICK_DURATION)
    cpu = _CpuMeter(api.server.pid)
    try:
        writers.write(count, api, prefix, duration)
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
        _index, tree = api.read_tree(client, prefix)
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
            'read': _timed(lambda: api.read_tree(client, prefix)),
            'round_trip': _timed(lambda: api.watch_one(client, prefix,
                                                       last)),
            'reads': follower.progress.reads,
            'duration': duration,
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
        if proc.pid == os.getpid():
            # Nanoseconds, where psutil's counters tick every 10 ms.
            return time.process_time()
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
    """{api: {writers: {impl: [trial, ...]}}}."""
    counts = ctx.pick(WRITER_COUNTS, QUICK_WRITER_COUNTS)
    api_list = ctx.select(APIS)
    writers = Writers(api_list, max(counts))
    results = {api.name: collections.defaultdict(
        lambda: collections.defaultdict(list)) for api in api_list}
    try:
        for rep in range(ctx.pick(REPEATS, QUICK_REPEATS)):
            for count in counts:
                for api in api_list:
                    shift = rep % len(IMPLS)
                    for impl in IMPLS[shift:] + IMPLS[:shift]:
                        result = trial(ctx, writers, api, impl, count, rep)
                        results[api.name][count][impl].append(result)
                        ctx.log(
                            'throughput %s %d writers %s: %.0f ev/s '
                            '(writes %.0f/s), lag %d, converge %.0f ms, '
                            'reads %d' % (
                                api.name, count, impl, result['rate'],
                                result['write_rate'], result['lag'],
                                result['converge'] * 1e3, result['reads']))
    finally:
        writers.close()
    return {api: {count: dict(by_impl) for count, by_impl in by_count.items()}
            for api, by_count in results.items()}


def _med(trials, field):
    return common.median([t[field] for t in trials])


def rows(results):
    table = []
    for api in [name for name in apis.NAMES if name in results]:
        table += _api_rows(api, results[api])
    return table


def _api_rows(api, results):
    table = []
    bare_name = apis.BARE_NAMES[api]
    for count in sorted(results):
        param = '%s, %d writers' % (api, count)
        ours, bare = results[count]['etcdwatch'], results[count]['bare']
        rate_ratio = common.ratio(_med(ours, 'rate'), _med(bare, 'rate'))
        table.append(common.row(
            'throughput', param, 'events applied/s', 'ev/s',
            _med(ours, 'rate'), bare_name, _med(bare, 'rate'),
            'ours/bare', rate_ratio, '>= %.1fx bare' % GOAL_RATE,
            rate_ratio >= GOAL_RATE,
            'writes/s while etcdwatch / bare followed: %.0f / %.0f; lag at '
            "stop %d / %d events; all hold etcd's state: %s" % (
                _med(ours, 'write_rate'), _med(bare, 'write_rate'),
                _med(ours, 'lag'), _med(bare, 'lag'),
                all(t['correct'] for t in ours + bare))))
        table.append(common.row(
            'throughput', param,
            'share of written events applied while writing', '%',
            _med(ours, 'share') * 100, bare_name,
            _med(bare, 'share') * 100, 'ours/bare',
            common.ratio(_med(ours, 'share'), _med(bare, 'share'))))
        table.append(common.row(
            'throughput', param, 'follower CPU per 1000 events applied',
            'ms', _med(ours, 'follower_cpu') * 1e6, bare_name,
            _med(bare, 'follower_cpu') * 1e6, 'ours/bare',
            common.ratio(_med(ours, 'follower_cpu'),
                         _med(bare, 'follower_cpu')),
            note="CPU of this process (the follower's threads, and "
            "etcd3gw's on v3); etcd's per 1000 events while etcdwatch / "
            'bare followed: %.0f / %.0f ms' % (
                _med(ours, 'etcd_cpu') * 1e6, _med(bare, 'etcd_cpu') * 1e6)))
        bound = (_med(ours + bare, 'read') +
                 _med(ours + bare, 'round_trip'))
        converge = _med(ours, 'converge')
        table.append(common.row(
            'throughput', param, 'converge after stop', 'ms',
            converge * 1e3, bare_name, _med(bare, 'converge') * 1e3,
            'ours/bare', common.ratio(converge, _med(bare, 'converge')),
            '<= one read + one watch (%.1f ms)' % (bound * 1e3),
            converge <= bound,
            'full re-reads while writing: etcdwatch %s, bare %s%s' % (
                _med(ours, 'reads') - 1, _med(bare, 'reads') - 1,
                '' if api == apis.V2 else '; the watch in the goal is a '
                'stream opened at a past revision, which waits for etcd\'s '
                'next round for late watchers (0-100 ms)')))
    return table


def plot_series(results):
    """{label: [(writers, events/s)]} for the plot."""
    return {'%s %s' % (api, impl if impl == 'etcdwatch'
                       else apis.BARE_NAMES[api]):
            [(count, _med(results[api][count][impl], 'rate'))
             for count in sorted(results[api])]
            for api in apis.NAMES if api in results for impl in IMPLS}


def v3_findings(results):
    """What the figures say about v3, for the page's v3 section."""
    if not set(apis.NAMES) <= set(results):
        return []
    counts = sorted(set(results[apis.V2]) & set(results[apis.V3]))

    def med(api, count, impl, field, scale=1):
        return _med(results[api][count][impl], field) * scale
    return [
        'Live throughput is lower on v3 because the writers wrote less: '
        '%s writes/s on v3 against %s on v2 (%s writers; v3 writes go '
        'through etcd\'s gateway too).  etcdwatch applied %s %% of the '
        'written events while they wrote on v3, %s %% on v2.' % (
            ' / '.join('%.0f' % med(apis.V3, c, 'etcdwatch', 'write_rate')
                       for c in counts),
            ' / '.join('%.0f' % med(apis.V2, c, 'etcdwatch', 'write_rate')
                       for c in counts),
            ' / '.join(str(c) for c in counts),
            ' / '.join('%.1f' % med(apis.V3, c, 'etcdwatch', 'share', 100)
                       for c in counts),
            ' / '.join('%.1f' % med(apis.V2, c, 'etcdwatch', 'share', 100)
                       for c in counts)),
        'Following live writes, etcdwatch spent %s ms of CPU per 1000 '
        'events on v3 against %s ms on v2 (%s writers): a v3 stream '
        'brings many events per read, where v2 costs one HTTP request per '
        'event.  etcd spent %s ms (v3) and %s ms (v2) per 1000 events, '
        'writes included (v3 writes also go through the gateway).' % (
            ' / '.join('%.0f' % med(apis.V3, c, 'etcdwatch', 'follower_cpu',
                                    1e6) for c in counts),
            ' / '.join('%.0f' % med(apis.V2, c, 'etcdwatch', 'follower_cpu',
                                    1e6) for c in counts),
            ' / '.join(str(c) for c in counts),
            ' / '.join('%.0f' % med(apis.V3, c, 'etcdwatch', 'etcd_cpu',
                                    1e6) for c in counts),
            ' / '.join('%.0f' % med(apis.V2, c, 'etcdwatch', 'etcd_cpu',
                                    1e6) for c in counts)),
        'Full re-reads while writing (%s writers): etcdwatch on v3 %s; on '
        'v2 %s; the bare loops have none.  On v3 a re-read restarts the '
        'watch stream at a past revision, which etcd answers at its next '
        'round for late watchers (every 100 ms) with the events of that '
        'round at once: with v2\'s threshold (16 events) an earlier run '
        're-read about every 100 ms for as long as 4 or 8 writers wrote '
        '(up to 40 re-reads in 4 s); v3\'s own defaults (re-read only '
        'past max(1000, tree size) events) walk the stream instead.' % (
            ' / '.join(str(c) for c in counts),
            _reread_summary(results[apis.V3], counts),
            _reread_summary(results[apis.V2], counts)),
    ]


def _reread_summary(by_count, counts):
    """'in a of n trials, up to m' for each writer count."""
    parts = []
    for count in counts:
        reads = [t['reads'] - 1 for t in by_count[count]['etcdwatch']]
        most = max(range(len(reads)), key=reads.__getitem__)
        parts.append('%d of %d trials (up to %d in %g s)' % (
            sum(1 for r in reads if r), len(reads), reads[most],
            by_count[count]['etcdwatch'][most]['duration']))
    return ' / '.join(parts)
