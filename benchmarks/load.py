"""Initial load / resync of a big prefix: time and peak memory (v2).

The tree grows to each size in turn (written by a few processes in
parallel).  At each size we time, alternately, a bare
``client.read(recursive=True)`` into a dict, constructing an etcdwatch
``EtcdWatcher`` (one read, ``do_all_work`` does nothing) and constructing
an ``EtcdChangeWatcher`` (which also records every key as implemented);
then, separately under tracemalloc, their peak memory.  Last, the change
watcher's re-read diff with nothing changed (``do_all_work`` again),
against the read it follows.
"""

import gc
import time
import tracemalloc

from benchmarks import apis
from benchmarks import common
from benchmarks import followers
from benchmarks import writing

#: v2 only: the v3 figures of this run are those of latency, throughput,
#: catch-up and election.
APIS = (apis.V2,)
PREFIX = '/bench/load'
SIZES = (1000, 10000, 100000)
QUICK_SIZES = (1000, 10000)
VALUE_SIZE = 100
REPEATS = 5
QUICK_REPEATS = 2
MEMORY_REPEATS = 2
#: Writing the tree may take this long at most; beyond, sizes shrink.
WRITE_BUDGET = 180
#: Keys written per batch handed to the writer processes.
WRITE_BATCH = 10000
GOAL_TIME = 1.2
GOAL_MEMORY = 1.5
#: "The diff is proportional to the changes, not the tree", read as: with
#: nothing changed it costs under this fraction of the read it follows
#: (finding that nothing changed takes one look per key, so never zero).
GOAL_DIFF_SHARE = 0.05
IMPLS = ('bare', 'watcher', 'change')


def _key(number):
    return '%s/k%06d' % (PREFIX, number)


def _grow(api, have, size):
    """Write keys have..size-1; return seconds taken."""
    start = time.monotonic()
    for low in range(have, size, WRITE_BATCH):
        high = min(size, low + WRITE_BATCH)
        api.writer.put_all((_key(n), common.value_of_size(n, VALUE_SIZE))
                           for n in range(low, high))
    return time.monotonic() - start


def _loader(api, impl):
    client = api.client()
    if impl == 'bare':
        return lambda: common.read_tree(client, PREFIX)
    if impl == 'watcher':
        return lambda: followers.CountingWatcher(client, 'load', PREFIX)
    return lambda: followers.QuietChangeWatcher(client, 'load', PREFIX)


def _timed(load):
    gc.collect()
    start = common.now()
    result = load()
    elapsed = common.now() - start
    del result
    return elapsed


def _peak(load):
    gc.collect()
    tracemalloc.start()
    try:
        result = load()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    del result
    return peak


def _diff_time(api, repeats):
    """Median seconds of do_all_work() with nothing changed."""
    watcher = followers.QuietChangeWatcher(api.client(), 'diff', PREFIX)
    samples = []
    for _ in range(repeats):
        gc.collect()
        start = common.now()
        watcher.do_all_work()
        samples.append(common.now() - start)
    return common.median(samples)


def _measure_size(api, repeats):
    loaders = {impl: _loader(api, impl) for impl in IMPLS}
    result = {'time': {impl: [] for impl in IMPLS},
              'memory': {impl: [] for impl in IMPLS}}
    for rep in range(repeats):
        order = IMPLS if rep % 2 == 0 else IMPLS[::-1]
        for impl in order:
            result['time'][impl].append(_timed(loaders[impl]))
    for _ in range(MEMORY_REPEATS):
        for impl in IMPLS:
            result['memory'][impl].append(_peak(loaders[impl]))
    result['diff'] = _diff_time(api, repeats)
    return result


def measure(ctx):
    """{'sizes': {size: measurements}, 'write_seconds': {size: s}}."""
    api, = ctx.select(APIS)
    sizes = ctx.pick(SIZES, QUICK_SIZES)
    results = {'sizes': {}, 'write_seconds': {}, 'skipped': []}
    have = 0
    for size in sizes:
        rate = have / sum(results['write_seconds'].values() or [1])
        if have and (size - have) / rate > WRITE_BUDGET:
            results['skipped'].append(size)
            ctx.log('load: writing %d keys would take over %d s; skipped'
                    % (size, WRITE_BUDGET))
            continue
        results['write_seconds'][size] = _grow(api, have, size)
        have = size
        measured = _measure_size(api, ctx.pick(REPEATS, QUICK_REPEATS))
        results['sizes'][size] = measured
        ctx.log('load %d keys (written in %.0f s): %s' % (
            size, results['write_seconds'][size], ', '.join(
                '%s %.1f ms %.1f MiB' % (
                    impl, common.median(measured['time'][impl]) * 1e3,
                    common.median(measured['memory'][impl]) / 2 ** 20)
                for impl in IMPLS)))
    return results


def _median(measured, kind, impl):
    return common.median(measured[kind][impl])


def rows(results):
    table = []
    for size, measured in sorted(results['sizes'].items()):
        param = '%d keys' % size
        bare_time = _median(measured, 'time', 'bare')
        bare_memory = _median(measured, 'memory', 'bare')
        for impl, title in (('watcher', 'EtcdWatcher'),
                            ('change', 'EtcdChangeWatcher')):
            goal_line = impl == 'watcher'
            time_ratio = common.ratio(_median(measured, 'time', impl),
                                      bare_time)
            memory_ratio = common.ratio(_median(measured, 'memory', impl),
                                        bare_memory)
            table.append(common.row(
                'initial load', param, '%s time' % title, 'ms',
                _median(measured, 'time', impl) * 1e3, 'bare read',
                bare_time * 1e3, 'ours/bare', time_ratio,
                '<= %.1fx bare' % GOAL_TIME if goal_line else '',
                time_ratio <= GOAL_TIME if goal_line else None))
            table.append(common.row(
                'initial load', param, '%s peak memory' % title, 'MiB',
                _median(measured, 'memory', impl) / 2 ** 20, 'bare read',
                bare_memory / 2 ** 20, 'ours/bare', memory_ratio,
                '<= %.1fx bare' % GOAL_MEMORY if goal_line else '',
                memory_ratio <= GOAL_MEMORY if goal_line else None))
        share = common.ratio(measured['diff'], bare_time)
        table.append(common.row(
            'initial load', param, 'change-watcher resync diff, 0 changes',
            'ms', measured['diff'] * 1e3, 'bare read', bare_time * 1e3,
            'diff/read', share,
            '< %d%% of the read' % (GOAL_DIFF_SHARE * 100),
            share < GOAL_DIFF_SHARE))
    return table


def plot_series(results):
    """{(kind, impl): [(size, value)]}: ms and MiB by tree size."""
    series = {}
    for size, measured in sorted(results['sizes'].items()):
        for impl in IMPLS:
            series.setdefault(('time', impl), []).append(
                (size, _median(measured, 'time', impl) * 1e3))
            series.setdefault(('memory', impl), []).append(
                (size, _median(measured, 'memory', impl) / 2 ** 20))
    return series


def findings(results):
    """Sentences the figures support, for the page."""
    said = []
    sizes = results['sizes']
    if sizes:
        largest = max(sizes)
        memory = sizes[largest]['memory']
        said.append(
            'Peak memory of a load of %d keys: bare read %.1f MiB, '
            'EtcdWatcher %.1f MiB, EtcdChangeWatcher %.1f MiB.  The peak '
            'comes inside python-etcd, while it holds the raw answer and '
            'the parsed JSON, before any of them builds its dict; '
            'etcdwatch\'s own copies stay below it.' % (
                largest, common.median(memory['bare']) / 2 ** 20,
                common.median(memory['watcher']) / 2 ** 20,
                common.median(memory['change']) / 2 ** 20))
    for size, seconds in sorted(results['write_seconds'].items()):
        said.append('The tree grew to %d keys in %.0f s (%d writer '
                    'processes).' % (size, seconds,
                                     writing.WRITER_PROCESSES))
    for size in results['skipped']:
        said.append('%d keys were not measured: writing them would have '
                    'taken over %d s.' % (size, WRITE_BUDGET))
    return said
