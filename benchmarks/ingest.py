"""CPU per 1,000 events: etcdwatch against the API's bare loop.

Two ways a follower meets events, each measured as this process's CPU
time (user + system, every thread: etcd3gw reads its stream in a thread
of its own) per 1,000 events delivered to a callback.

*Catching up:* followers of every kind load the (empty) prefix; writer
processes then write N events (puts that cycle over 1,000 keys, so every
event is one callback, and v3 keeps them all: nothing compacts); then each
follower in turn runs from where it loaded until its N-th callback.
etcdwatch walks the events here, as the bare loop does
(``CATCHUP_MIN_LAG`` is infinite): by default it would re-read the tree
instead, which is far cheaper (see the catch-up case).  v2 keeps only its
last 1,000 events, so there N is 900.

*Following live:* a follower follows while writer processes write flat
out for a few seconds (the throughput case's trial, whose CPU figure this
is).

The goal (v3 only: the bare loop's CPU or less) is the v3 issue's; on v2
the figures are measured, not held to a goal.  The bare loops are
:mod:`benchmarks.baselines`: python-etcd's watch per event on v2, one
etcd3gw ``watch_prefix`` stream on v3.  Every follower of one trial sees
the same events, and the kinds take turns.
"""

import collections
import itertools
import sys
import threading
import time

from benchmarks import apis
from benchmarks import baselines
from benchmarks import common
from benchmarks import followers
from benchmarks import throughput
from benchmarks import writing

APIS = apis.NAMES
PREFIX = '/bench/ingest'
#: Events caught up, per API, in a full and in a quick run.
SIZES = {apis.V2: (900,), apis.V3: (20000, 100000)}
QUICK_SIZES = {apis.V2: (900,), apis.V3: (5000,)}
#: Trials (followers of each kind catching up the same events).
REPEATS = 5
QUICK_REPEATS = 2
KEYS = 1000
VALUE_SIZE = 64
LIVE_WRITERS = (1, 4)
QUICK_LIVE_WRITERS = (4,)
#: Live trials per writer count: one trial's ratio of the two varies by
#: +-10% on a 2-core machine that also runs etcd and the writers, so
#: the medians take more trials than the catch-up's.
LIVE_REPEATS = 9
QUICK_LIVE_REPEATS = 1
HEARTBEAT = 5
#: Seconds a follower may take to catch up before we call it stuck.
CATCHUP_TIMEOUT = 300
IMPLS = ('etcdwatch', 'bare')
#: The goal: at or below the bare loop's CPU, allowing this much noise.
GOAL_RATIO = 1.0

_TRIALS = itertools.count()


class _Walker(followers.CountingWatcher):
    """A CountingWatcher that walks every event (never re-reads)."""

    CATCHUP_MIN_LAG = sys.maxsize


class _Counter(object):
    """Counts callbacks; sets ``done`` at the ``target``-th."""

    def __init__(self, target):
        self.target = target
        self.count = 0
        self.done = threading.Event()

    def __call__(self, key, value):
        self.count += 1
        if self.count >= self.target:
            self.done.set()


def _cpu_seconds():
    # Nanoseconds, where psutil's counters tick every 10 ms.
    return time.process_time()


class _CatchingUp(object):
    """One follower, loaded now, run later until ``target`` callbacks."""

    def __init__(self, api, impl, prefix, target):
        self.impl = impl
        self.counter = _Counter(target)
        client = api.client()
        if impl == 'etcdwatch':
            self.follower = _Walker(client, 'ingest', prefix,
                                    heartbeat=HEARTBEAT,
                                    on_event=self.counter)
            self.follower.refresh_all_data()
            self._run = self.follower.watch_forever
            self._stop = self.follower.stop
        else:
            self.follower = baselines.BARE[api.name](
                client, prefix, HEARTBEAT, on_event=self.counter)
            stopped = threading.Event()
            self._run = lambda: self.follower.run(stopped)

            def stop():
                stopped.set()
                self.follower.close()
            self._stop = stop

    def run(self):
        """CPU seconds until the target-th callback (None if stuck)."""
        started = _cpu_seconds()
        thread = common.start_thread(self._run)
        finished = self.counter.done.wait(CATCHUP_TIMEOUT)
        used = _cpu_seconds() - started
        self._stop()
        thread.join(HEARTBEAT * 5)
        return used if finished else None


def _write(api, prefix, count):
    """Write ``count`` puts under ``prefix``; return the last index."""
    operations = [
        (writing.PUT, '%s/k%d' % (prefix, n % KEYS),
         common.value_of_size(n, VALUE_SIZE))
        for n in range(count)]
    return api.writer.apply(operations)


def _catch_up(ctx, api, size):
    """{impl: [CPU seconds per 1,000 events, ...]} for one size."""
    prefix = '%s/%s-%d-%d' % (PREFIX, api.name, size, next(_TRIALS))
    api.make_dir(api.client(), prefix)
    repeats = ctx.pick(REPEATS, QUICK_REPEATS)
    # Every follower loads before the writes, so all walk the same events.
    plan = [impl for rep in range(repeats)
            for impl in (IMPLS if rep % 2 == 0 else IMPLS[::-1])]
    waiting = [_CatchingUp(api, impl, prefix, size) for impl in plan]
    _write(api, prefix, size)
    results = collections.defaultdict(list)
    for follower in waiting:
        used = follower.run()
        if used is None:
            ctx.log('ingest %s catch-up %d %s: stuck at %d callbacks' % (
                api.name, size, follower.impl, follower.counter.count))
            continue
        results[follower.impl].append(used / size * 1000)
        ctx.log('ingest %s catch-up %d %s: %.1f ms CPU per 1000 events'
                % (api.name, size, follower.impl, used / size * 1e6))
    return dict(results)


def _live(ctx, writers, api, count, rep):
    """{impl: CPU seconds per 1,000 events} of one live trial per impl."""
    shift = rep % len(IMPLS)
    result = {}
    for impl in IMPLS[shift:] + IMPLS[:shift]:
        trial = throughput.trial(ctx, writers, api, impl, count, rep)
        result[impl] = trial['follower_cpu'] * 1000
        ctx.log('ingest %s live %d writers %s: %.1f ms CPU per 1000 events '
                '(%.0f ev/s)' % (api.name, count, impl,
                                 result[impl] * 1e3, trial['rate']))
    return result


def measure(ctx):
    """{api: {'catchup': {N: {impl: [...]}}, 'live': {W: {impl: [...]}}}}."""
    api_list = ctx.select(APIS)
    results = {}
    for api in api_list:
        sizes = ctx.pick(SIZES, QUICK_SIZES)[api.name]
        results[api.name] = {
            'catchup': {size: _catch_up(ctx, api, size) for size in sizes},
            'live': collections.defaultdict(
                lambda: collections.defaultdict(list))}
    counts = ctx.pick(LIVE_WRITERS, QUICK_LIVE_WRITERS)
    writers = throughput.Writers(api_list, max(counts))
    try:
        for rep in range(ctx.pick(LIVE_REPEATS, QUICK_LIVE_REPEATS)):
            for count in counts:
                for api in api_list:
                    trial = _live(ctx, writers, api, count, rep)
                    for impl, cpu in trial.items():
                        results[api.name]['live'][count][impl].append(cpu)
    finally:
        writers.close()
    for by_api in results.values():
        by_api['live'] = {count: dict(by_impl)
                          for count, by_impl in by_api['live'].items()}
    return results


def rows(results):
    table = []
    for api in [name for name in apis.NAMES if name in results]:
        bare_name = apis.BARE_NAMES[api]
        measured = results[api]
        for label, by_param in (
                ('catching up %d events', measured['catchup']),
                ('live, %d writers', measured['live'])):
            for param in sorted(by_param):
                ours = by_param[param].get('etcdwatch', [])
                bare = by_param[param].get('bare', [])
                value = common.ratio(common.median(ours),
                                     common.median(bare))
                held = api == apis.V3
                table.append(common.row(
                    'ingest', '%s, %s' % (api, label % param),
                    'CPU per 1,000 events delivered', 'ms',
                    common.median(ours) * 1e3, bare_name,
                    common.median(bare) * 1e3, 'ours/bare', value,
                    '<= bare' if held else '',
                    value <= GOAL_RATIO if held else None,
                    'medians of %d / %d trials; etcdwatch per trial: %s; '
                    'bare: %s' % (
                        len(ours), len(bare),
                        ', '.join('%.1f' % (v * 1e3) for v in ours),
                        ', '.join('%.1f' % (v * 1e3) for v in bare))))
    return table


def findings(results):
    lines = []
    for api in [name for name in apis.NAMES if name in results]:
        for size, by_impl in sorted(results[api]['catchup'].items()):
            ours = common.median(by_impl.get('etcdwatch', []))
            bare = common.median(by_impl.get('bare', []))
            lines.append(
                'Catching up %d events on %s, etcdwatch spent %.1f ms of '
                'CPU per 1,000 events, %s %.1f ms (%.2f times).' % (
                    size, api, ours * 1e3, apis.BARE_NAMES[api],
                    bare * 1e3, common.ratio(ours, bare)))
    return lines
