"""asyncio: many watchers in one process, async against threads (v3).

Three child processes (``benchmarks.workers aio``) each follow N prefixes
``ROOT/pNNNN`` of the run's v3 etcd, each process on a root of its own:
etcdwatch's ``AsyncEtcdWatcher`` s as tasks of one event loop, all on one
shared ``AsyncEtcd3Client`` (one client per process is what the asyncio
page shows, and it holds one connection per watch stream); etcdwatch's
threaded ``EtcdWatcher`` s, a thread each, all on one shared
``FailoverEtcd3Client`` (``etcdwatch.v3client.client``: what a threaded
application does, one client per process; each watch stream holds a
connection of its own either way); and a bare asyncio loop per prefix with
httpx alone (a range read, then a streaming POST to ``/v3/watch``, its
JSON lines parsed and applied to a dict: no reconnection, heartbeat or
re-read).  A fourth process of each kind follows no prefix: the baseline
of the memory figures.  Every watcher keeps etcdwatch's defaults (a 60 s
heartbeat: a watch silent that long is followed by a quorum read).

They start one after another (time until all N are synced, less the
0-watcher process's start).  Once all are synced we measure each
process's resident memory (RSS) against its 0-watcher process, divided by
N; then, over one idle window as long as the heartbeat (so each watcher's
quorum read falls into it once), each process's CPU time (psutil), in
all and in 5 s slices (their median: the CPU between heartbeats).  Then
sweeps of writes, taking turns between the processes: four writer
processes write one key under each of a process's N prefixes, each value
carrying the time it was sent; the first sweep warms up and is not
counted.  We take, per sweep, the time from its first write to its last
delivery, and per write the time from sending it to its callback; and the
process's CPU time over all the counted sweeps, per 1,000 events
delivered.
"""

import concurrent.futures
import multiprocessing
import time

import psutil

from benchmarks import apis
from benchmarks import common
from benchmarks import procs
from benchmarks import workers

APIS = (apis.V3,)
ROOT = '/bench/aio'
#: The variants, in the order they start and are reported.
IMPLS = ('async', 'threads', 'bare')
LABELS = {'async': 'etcdwatch asyncio', 'threads': 'etcdwatch threads',
          'bare': 'bare httpx loop'}
WATCHERS = 1000
QUICK_WATCHERS = 100
#: etcdwatch's default heartbeat, which every watcher here keeps.
HEARTBEAT = 60
IDLE_WINDOW = HEARTBEAT
QUICK_IDLE_WINDOW = 8
SETTLE = 3
#: The idle window is measured in slices this long too: their median is
#: the CPU between heartbeats.
SLICE = 5
#: Sweeps of one write per prefix and variant (plus one to warm up).
SWEEPS = 7
QUICK_SWEEPS = 2
WRITER_PROCESSES = 4
STARTUP_TIMEOUT = 900
DELIVERY_TIMEOUT = 300
POLL = 0.05
GOAL_IDLE_CPU = 1.0
#: Granularity of the CPU times the kernel reports (1 / CLK_TCK).
CPU_TICK = 0.01

# One client per writer process, made on first use.
_clients = {}


def _put_all(host, port, keys, tag):
    """Write each key once (a writer process); the value says when."""
    if 'v3' not in _clients:
        _clients['v3'] = apis.connect(apis.V3, host, port)
    client = _clients['v3']
    for key in keys:
        apis.put(apis.V3, client, key, '%s:%.6f' % (tag, time.time()))
    return len(keys)


def _cpu(proc):
    times = proc.cpu_times()
    return times.user + times.system


class _Variant(object):
    """One child process following ``count`` prefixes of its own."""

    def __init__(self, api, impl, count):
        self.impl = impl
        self.count = count
        self.root = '%s/%s%d' % (ROOT, impl, count)
        self.keys = [workers.aio_prefix(self.root, number) + '/k'
                     for number in range(count)]
        self.started = time.monotonic()
        self.child = procs.Child('aio', impl, api.server.host,
                                 api.server.port, self.root, count)
        self.proc = psutil.Process(self.child.pid)
        self.startup = None
        self.expected = 0
        self._asked = 0
        self.cpu_sweeps = 0.0
        self.events_sweeps = 0

    def wait_ready(self):
        self.child.wait_event('ready', timeout=STARTUP_TIMEOUT)
        self.startup = time.monotonic() - self.started

    def cpu(self):
        return _cpu(self.proc)

    def rss(self):
        return self.proc.memory_info().rss

    def connections(self, port):
        return sum(1 for conn in self.proc.net_connections(kind='tcp')
                   if conn.raddr and conn.raddr.port == port and
                   conn.status == psutil.CONN_ESTABLISHED)

    def received_count(self):
        self._asked += 1
        self.child.send('count')
        return self.child.wait_event('count', self._asked)['n']

    def wait_delivered(self):
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        while self.received_count() < self.expected:
            if time.monotonic() > deadline:
                raise procs.ChildFailed('%s: %d of %d events delivered' % (
                    self.impl, self.received_count(), self.expected))
            time.sleep(POLL)

    def received(self):
        self.child.close_input()
        return self.child.wait_event('received',
                                     timeout=DELIVERY_TIMEOUT)['received']

    def close(self):
        self.child.kill()


def _start(api, impl, count):
    variant = _Variant(api, impl, count)
    try:
        variant.wait_ready()
    except BaseException:
        variant.close()
        raise
    return variant


def _sweep(pool, host, port, variant, tag, counted):
    """One write on each of the variant's prefixes, all delivered."""
    shards = [variant.keys[number::WRITER_PROCESSES]
              for number in range(WRITER_PROCESSES)]
    cpu = variant.cpu()
    futures = [pool.submit(_put_all, host, port, shard, tag)
               for shard in shards if shard]
    variant.expected += sum(f.result() for f in futures)
    variant.wait_delivered()
    if counted:
        variant.cpu_sweeps += variant.cpu() - cpu
        variant.events_sweeps += variant.count


def _deliveries(received, sweeps):
    """Per counted sweep: (first write -> last delivery, [latencies])."""
    by_sweep = {}
    for value, seen in received:
        tag, sent = value.split(':')
        by_sweep.setdefault(tag, []).append((float(sent), seen))
    result = []
    for number in range(1, sweeps + 1):
        pairs = by_sweep.get('s%d' % number, [])
        if not pairs:
            continue
        result.append({
            'delivered': len(pairs),
            'span': max(s for _, s in pairs) - min(t for t, _ in pairs),
            'writing': max(t for t, _ in pairs) - min(t for t, _ in pairs),
            'drain': max(s for _, s in pairs) - max(t for t, _ in pairs),
            'latencies': [s - t for t, s in pairs]})
    return result


def measure(ctx):
    api, = ctx.select(APIS)
    count = ctx.pick(WATCHERS, QUICK_WATCHERS)
    window = ctx.pick(IDLE_WINDOW, QUICK_IDLE_WINDOW)
    sweeps = ctx.pick(SWEEPS, QUICK_SWEEPS)
    host, port = api.server.host, api.server.port
    empty, variants = {}, {}
    pool = concurrent.futures.ProcessPoolExecutor(
        WRITER_PROCESSES, mp_context=multiprocessing.get_context('spawn'))
    try:
        for impl in IMPLS:
            empty[impl] = _start(api, impl, 0)
            ctx.log('asyncio: %s, 0 watchers: ready in %.1f s'
                    % (impl, empty[impl].startup))
        for impl in IMPLS:
            variants[impl] = _start(api, impl, count)
            ctx.log('asyncio: %s, %d watchers: synced in %.1f s'
                    % (impl, count, variants[impl].startup))
        time.sleep(SETTLE)
        memory = {impl: {'rss': variants[impl].rss(),
                         'empty_rss': empty[impl].rss()} for impl in IMPLS}
        for variant in empty.values():
            variant.close()
        cpu = {impl: v.cpu() for impl, v in variants.items()}
        slices = {impl: [] for impl in variants}
        started = last = time.monotonic()
        marks = dict(cpu)
        while last - started < window - SLICE / 2:
            time.sleep(min(SLICE, window - (last - started)))
            now = time.monotonic()
            for impl, variant in variants.items():
                used = variant.cpu()
                slices[impl].append(100 * (used - marks[impl]) /
                                    (now - last))
                marks[impl] = used
            last = now
        elapsed = last - started
        idle = {impl: {
            'cpu_percent': 100 * (marks[impl] - cpu[impl]) / elapsed,
            'slices': slices[impl],
            'connections': v.connections(port)}
            for impl, v in variants.items()}
        ctx.log('asyncio: idle CPU over %.0f s: %s' % (elapsed, ', '.join(
            '%s %.2f%%' % (impl, idle[impl]['cpu_percent'])
            for impl in IMPLS)))
        order = [variants[impl] for impl in IMPLS]
        for number in range(sweeps + 1):
            shift = number % len(order)
            for variant in order[shift:] + order[:shift]:
                _sweep(pool, host, port, variant, 's%d' % number,
                       counted=number > 0)
        received = {impl: v.received() for impl, v in variants.items()}
    finally:
        pool.shutdown()
        for variant in list(empty.values()) + list(variants.values()):
            variant.close()
    results = {'count': count, 'window': elapsed, 'sweeps': sweeps,
               'idle': idle, 'memory': memory, 'impls': {}}
    for impl, variant in variants.items():
        results['impls'][impl] = {
            'startup': variant.startup - empty[impl].startup,
            'cpu_sweeps': variant.cpu_sweeps,
            'events_sweeps': variant.events_sweeps,
            'deliveries': _deliveries(received[impl], sweeps)}
    for impl in IMPLS:
        figures = _figures(results, impl)
        ctx.log('asyncio %s: idle %.2f%%, %.1f KiB/watcher, sweep %.0f ms, '
                'write->callback %.1f ms, %.0f ms CPU/1000 events' % (
                    impl, figures['idle'], figures['memory'],
                    figures['sweep'], figures['latency'], figures['cpu']))
    return results


def _figures(results, impl):
    """The headline figures of one variant, in the units reported."""
    data = results['impls'][impl]
    memory = results['memory'][impl]
    deliveries = data['deliveries']
    latencies = [x for d in deliveries for x in d['latencies']]
    count = results['count']
    return {
        'idle': results['idle'][impl]['cpu_percent'],
        'idle_between': common.median(
            results['idle'][impl].get('slices') or [float('nan')]),
        'connections': results['idle'][impl]['connections'],
        'memory': (memory['rss'] - memory['empty_rss']) / count / 1024.0,
        'sweep': common.median([d['span'] for d in deliveries]) * 1e3,
        'writing': common.median([d['writing'] for d in deliveries]) * 1e3,
        'drain': common.median([d.get('drain', float('nan'))
                                for d in deliveries]) * 1e3,
        'latency': common.median(latencies) * 1e3,
        'latency_p99': common.percentile(latencies, 0.99) * 1e3,
        'cpu': 1e3 * common.ratio(data['cpu_sweeps'],
                                  data['events_sweeps']) * 1e3,
        'startup': data['startup'],
        'complete': sum(d['delivered'] == count for d in deliveries),
    }


#: (key, metric, unit) of the section's table, in order.
METRICS = (
    ('idle', 'idle CPU over the whole window ({window} s)', '% of a core'),
    ('idle_between', 'idle CPU between heartbeats',
     '% of a core, median of 5 s slices'),
    ('sweep', 'one write on each prefix: first write -> last delivery',
     'ms, median of sweeps'),
    ('writing', 'the same sweeps: first -> last write sent (the writers)',
     'ms, median'),
    ('drain', 'the same sweeps: last write sent -> last delivery',
     'ms, median'),
    ('latency', 'write -> callback, per write', 'ms, median'),
    ('latency_p99', 'write -> callback, per write', 'ms, p99'),
    ('cpu', 'CPU per 1,000 events delivered', 'ms'),
    ('memory', 'memory per watcher (RSS less a 0-watcher process)', 'KiB'),
    ('startup', 'start and sync all watchers', 's'),
    ('connections', 'open connections to etcd (idle)', 'count'),
)


def table(results):
    """(header, rows): async, threads and bare side by side, and ratios."""
    figures = {impl: _figures(results, impl) for impl in IMPLS}
    header = ['metric', LABELS['async'], LABELS['threads'], LABELS['bare'],
              'asyncio/threads', 'asyncio/bare']
    body = []
    for key, metric, unit in METRICS:
        values = [figures[impl][key] for impl in IMPLS]
        metric = metric.replace('{window}', '%.0f' % results['window'])
        body.append(['%s (%s)' % (metric, unit)] + values + [
            common.ratio(values[0], values[1]),
            common.ratio(values[0], values[2])])
    return header, body


def plot_series(results):
    """{panel: {impl: value}} for the bar plot."""
    figures = {impl: _figures(results, impl) for impl in IMPLS}
    return {key: {LABELS[impl]: figures[impl][key] for impl in IMPLS}
            for key in ('idle', 'cpu', 'sweep', 'memory')}


def rows(results):
    figures = {impl: _figures(results, impl) for impl in IMPLS}
    ours, threads, bare = (figures[impl] for impl in IMPLS)
    param = '%s, %d watchers' % (apis.V3, results['count'])

    def row(key, metric, unit, baseline='threads', **extra):
        other = figures[baseline]
        third = 'bare' if baseline == 'threads' else 'threads'
        note = extra.pop('note', '')
        note += '%s: %s' % (LABELS[third], _short(figures[third][key]))
        return common.row('asyncio', param, metric, unit, ours[key],
                          LABELS[baseline], other[key], 'asyncio/%s'
                          % baseline, common.ratio(ours[key], other[key]),
                          note=note, **extra)

    return [
        row('idle', 'idle CPU over %.0f s' % results['window'],
            '% of a core', goal='< %g%% of one core' % GOAL_IDLE_CPU,
            met=ours['idle'] < GOAL_IDLE_CPU,
            note='heartbeat %d s, so every watcher\'s quorum read falls '
            'in the window once; between heartbeats (median of %d s '
            'slices): asyncio %s, threads %s; measured to %.2f%% (CPU tick '
            '/ window); ' % (HEARTBEAT, SLICE, _short(ours['idle_between']),
                             _short(threads['idle_between']),
                             100 * CPU_TICK / results['window'])),
        row('sweep', 'one write per prefix: first write -> last delivery',
            'ms', note='median of %d sweeps; the writers took %s ms '
            '(asyncio sweeps); ' % (results['sweeps'],
                                    _short(ours['writing']))),
        row('latency', 'write -> callback (median per write)', 'ms'),
        row('memory', 'memory per watcher', 'KiB',
            note='RSS less a 0-watcher process; '),
        row('cpu', 'CPU per 1,000 events delivered', 'ms',
            baseline='bare'),
        row('startup', 'start and sync all', 's'),
    ]


def section_findings(results):
    """Sentences the figures support, for the case's own section."""
    figures = {impl: _figures(results, impl) for impl in IMPLS}
    ours, threads, bare = (figures[impl] for impl in IMPLS)
    count = results['count']
    said = [
        '%d asyncio watchers on one ``AsyncEtcd3Client`` use %.2f %% of a '
        'core while idle over %.0f s (the goal is under %g %%), against '
        '%.2f %% for %d threaded ``EtcdWatcher`` s and %.2f %% for the '
        'bare loop (which never sends a heartbeat read).  Between '
        'heartbeats (median of %d s slices, to within %.1f %%) asyncio '
        'uses %.2f %%, threads %.2f %%.' % (
            count, ours['idle'], results['window'], GOAL_IDLE_CPU,
            threads['idle'], count, bare['idle'], SLICE,
            100 * CPU_TICK / SLICE, ours['idle_between'],
            threads['idle_between']),
    ]
    if (results['window'] >= HEARTBEAT and
            ours['idle_between'] < ours['idle'] / 3):
        said[-1] += ('  So the idle cost is the heartbeat\'s quorum read, '
                     'one per watcher per %d s.' % HEARTBEAT)
    if ours['idle'] > 2 * threads['idle'] and results['window'] >= HEARTBEAT:
        said.append(
            'Why the heartbeat costs asyncio more (profiled with py-spy): '
            'the reads share one httpx pool with the %d open watch '
            'streams, and httpcore\'s connection pool looks at every '
            'connection it holds each time a request starts or a response '
            'is closed, so each read costs time in proportion to the '
            'number of watchers.  With the streams on an httpx client of '
            'their own (tried outside this benchmark: one process, 1000 '
            'watchers, 75 s idle including one heartbeat round), idle CPU '
            'fell from 12.6 %% to 2.2 %% of a core.' % count)
    said += [
        'One write on each of the %d prefixes reaches the last watcher '
        '%.0f ms after the first write on asyncio, %.0f ms on threads and '
        '%.0f ms with the bare loop (medians of %d sweeps).  That is mostly '
        'how fast etcd takes %d writes here: the four writer processes '
        'took %.0f, %.0f and %.0f ms to send those sweeps, and the last '
        'delivery came %.0f, %.0f and %.0f ms after the last write; the '
        'time from each write to its callback tells the watchers apart.' % (
            count, ours['sweep'], threads['sweep'], bare['sweep'],
            results['sweeps'], count, ours['writing'], threads['writing'],
            bare['writing'], ours['drain'], threads['drain'],
            bare['drain']),
        'Following live writes, the asyncio process spends %.0f ms of CPU '
        'per 1,000 events delivered, %.1f times the bare loop\'s %.0f ms '
        '(threads: %.0f ms).' % (ours['cpu'], ours['cpu'] / bare['cpu'],
                                 bare['cpu'], threads['cpu']),
    ]
    if ours['cpu'] > 1.5 * bare['cpu']:
        said.append(
            'Where the asyncio watchers\' extra CPU per event goes (py-spy, '
            'outside this benchmark, before ``MessageStream`` got one reader '
            'task per stream instead of a task and a wait per chunk, which '
            'did not change the ratio): about a quarter of the samples are '
            'in etcdwatch\'s own frames (the watcher\'s loop returning to '
            '``run_once`` after every event, the rules, the backend\'s '
            'watch call, ``MessageStream``), and asyncio\'s scheduling '
            'takes several times the bare loop\'s share per event.  Both '
            'do the same number of socket reads per event (one).  Applying '
            'a whole watch message per call does not help here: each '
            'watcher\'s messages hold one event (one write per prefix).')
    said += [
        'Each watcher costs %.0f KiB of memory on asyncio, %.0f KiB as a '
        'thread, %.0f KiB in the bare loop.' % (
            ours['memory'], threads['memory'], bare['memory']),
    ]
    incomplete = [impl for impl in IMPLS
                  if figures[impl]['complete'] != results['sweeps']]
    if incomplete:
        said.append('Sweeps where not every watcher reported: %s.' % ', '.join(
            '%s %d of %d complete' % (impl, figures[impl]['complete'],
                                      results['sweeps'])
            for impl in incomplete))
    return said


def _short(value):
    return '%.2f' % value if isinstance(value, float) else str(value)
