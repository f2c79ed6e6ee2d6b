"""Coming back after an etcd restart: when do 200 watchers return?

On each API, an etcd of its own (v2: ``--enable-v2``; v3: v2 disabled)
and, in one process, two groups of ``WATCHERS`` ``EtcdChangeWatcher``
threads on one prefix of ``TREE_SIZE`` keys, each watcher with its own
client, heartbeat ``HEARTBEAT`` s, ``DANGER_PAUSE`` 2 s (the default):
etcdwatch as it is (after an etcd error it waits a random time in the
upper half of a ceiling that starts at DANGER_PAUSE and doubles with each
consecutive error, up to 8 x DANGER_PAUSE), and the baseline, the same
class with the old fixed pause (``_pause_after_error`` returns
DANGER_PAUSE).  Both groups are synced and share the same outage: etcd is
killed (SIGKILL), kept down ``DOWN`` s and started again (same data, same
port).  For each watcher we note when its first ``do_watch()`` that
returns without raising began, among those begun after the kill: that is
when it reopens its watch (or re-reads) on the new etcd.  Times are
counted from the moment etcd served again: the answer to the first of a
probe's requests, sent every 10 ms from the moment etcd is started again.
A call that began while etcd was starting (its socket accepts connections
before etcd answers them) waits for that moment and counts as returning
at it.
"""

import collections
import logging
import threading
import time

import etcdwatch

from benchmarks import apis
from benchmarks import common
from etcdwatch.testing import server as etcd_server

APIS = apis.NAMES
PREFIX = '/bench/restart'
TREE_SIZE = 100
WATCHERS = 200
QUICK_WATCHERS = 50
HEARTBEAT = 2
DOWN = 10
#: A watcher not back this long after etcd is counted as not back.
RETURN_LIMIT = 60
WINDOW = 0.1
IMPLS = ('etcdwatch', 'fixed')
NAMES = {'etcdwatch': 'etcdwatch', 'fixed': 'fixed DANGER_PAUSE'}


class _Clock(object):
    """When the outage began (time.monotonic()), None before."""

    def __init__(self):
        self.outage = None


class _Timed(etcdwatch.EtcdChangeWatcher):
    """Notes its first successful do_watch() begun after the outage."""

    def __init__(self, *args, **kwargs):
        self.clock = kwargs.pop('clock')
        self.returned = None
        self.finished = None
        self.failures = 0
        self.kinds = collections.Counter()
        super(_Timed, self).__init__(*args, **kwargs)

    def do_watch(self):
        outage = self.clock.outage
        started = time.monotonic()
        try:
            super(_Timed, self).do_watch()
        except Exception as e:
            if self.clock.outage is not None and self.returned is None:
                self.failures += 1
                self.kinds[type(e).__name__] += 1
            raise
        if (outage is not None and started >= outage and
                self.returned is None):
            self.returned = started
            self.finished = time.monotonic()


class _Fixed(_Timed):
    """The baseline: the old fixed pause after every etcd error."""

    def _pause_after_error(self):
        return self.DANGER_PAUSE


def _peak(times, window=WINDOW):
    """The most of ``times`` within any ``window`` seconds."""
    ordered = sorted(times)
    best = start = 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def _probe(api_name, host, port, answered):
    """Ask etcd until it answers; append when it did to ``answered``."""
    client = apis.connect(api_name, host, port, timeout=5)
    deadline = time.monotonic() + RETURN_LIMIT
    while time.monotonic() < deadline:
        try:
            if api_name == apis.V2:
                client.read(PREFIX)
            else:
                apis.v3_call(client, 'kv/range', {'key': apis.b64(PREFIX)})
        except Exception:
            time.sleep(0.01)
            continue
        answered.append(time.monotonic())
        return


def _trial(ctx, api_name, count):
    server = etcd_server.EtcdServer(name='etcd-restart-%s' % api_name,
                                    enable_v2=api_name == apis.V2)
    # Hundreds of watchers (and their python-etcd clients) would log the
    # outage, each its own errors.
    quiet = [logging.getLogger(name) for name in ('etcdwatch', 'etcd')]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.CRITICAL)
    watchers = {impl: [] for impl in IMPLS}
    threads = []
    clock = _Clock()
    try:
        with server:
            host, port = server.host, server.port
            client = apis.connect(api_name, host, port)
            for slot in range(TREE_SIZE):
                apis.put(api_name, client, '%s/k%04d' % (PREFIX, slot),
                         common.value_of_size(slot, 64))
            for number in range(count):
                for impl in IMPLS:
                    cls = _Fixed if impl == 'fixed' else _Timed
                    watcher = cls(apis.connect(api_name, host, port),
                                  '%s-%d' % (impl, number), PREFIX,
                                  heartbeat=HEARTBEAT, clock=clock)
                    watchers[impl].append(watcher)
                    threads.append(threading.Thread(
                        target=watcher.watch_forever, daemon=True))
            for thread in threads:
                thread.start()
            everyone = watchers['etcdwatch'] + watchers['fixed']
            if not all(w.wait_synced(30) for w in everyone):
                raise RuntimeError('restart: watchers did not sync')
            # Every watcher in its steady loop (a watch, a quorum check).
            time.sleep(HEARTBEAT + 1)
            server.kill()
            clock.outage = time.monotonic()
            time.sleep(DOWN)
            spawned = time.monotonic()
            answered = []
            probe = common.start_thread(_probe, api_name, host, port,
                                        answered)
            server.start()
            healthy = time.monotonic()
            probe.join(RETURN_LIMIT)
            if not answered:
                raise RuntimeError('restart: etcd did not answer again')
            ready = answered[0]
            deadline = ready + RETURN_LIMIT
            while (time.monotonic() < deadline and
                   any(w.returned is None for w in everyone)):
                time.sleep(0.2)
    finally:
        for impl in IMPLS:
            for watcher in watchers[impl]:
                watcher.stop()
        for thread in threads:
            thread.join(HEARTBEAT + 10)
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
    results = {}
    for impl in IMPLS:
        group = watchers[impl]
        began = [w.returned - ready for w in group
                 if w.returned is not None]
        back = [max(0.0, t) for t in began]
        kinds = collections.Counter()
        for watcher in group:
            kinds.update(watcher.kinds)
        results[impl] = {
            'returns': back,
            'waiting': sum(1 for t in began if t < 0),
            'not_back': len(group) - len(back),
            'failures': common.median([w.failures for w in group]),
            'failures_total': sum(w.failures for w in group),
            'kinds': dict(kinds),
        }
    results['startup'] = ready - spawned
    results['healthy'] = healthy - spawned
    results['down'] = spawned - clock.outage
    results['watchers'] = count
    ctx.log('restart %s (%d + %d watchers, etcd down %.1f s, answered '
            '%.1f s after its start, healthy after %.1f s): %s' % (
                api_name, count, count, results['down'], results['startup'],
                results['healthy'], '; '.join(
                    '%s: %s' % (impl, _summary(results[impl]))
                    for impl in IMPLS)))
    return results


def _summary(figures):
    back = figures['returns']
    return ('back %.2f / %.2f / %.2f / %.2f / %.2f s (min/p10/median/p90/'
            'max), mean %.2f s, at most %d within %d ms, %d waiting when '
            'etcd answered, %d not back, errors %s' % (
                min(back or [float('nan')]), common.percentile(back, 0.1),
                common.median(back), common.percentile(back, 0.9),
                max(back or [float('nan')]), _mean(back), _peak(back),
                WINDOW * 1e3, figures['waiting'], figures['not_back'],
                figures['kinds']))


def _mean(values):
    return sum(values) / len(values) if values else float('nan')


def measure(ctx):
    """{api: {'etcdwatch': figures, 'fixed': figures, ...}}."""
    count = ctx.pick(WATCHERS, QUICK_WATCHERS)
    return {api.name: _trial(ctx, api.name, count)
            for api in ctx.select(APIS)}


_STATS = (
    ('min', 'return after etcd was back: min', lambda b: min(b)),
    ('p10', 'return after etcd was back: p10',
     lambda b: common.percentile(b, 0.1)),
    ('median', 'return after etcd was back: median', common.median),
    ('p90', 'return after etcd was back: p90',
     lambda b: common.percentile(b, 0.9)),
    ('max', 'return after etcd was back: max', lambda b: max(b)),
    ('mean', 'mean wait after etcd was back', _mean),
)


def rows(results):
    table = []
    for api in [name for name in apis.NAMES if name in results]:
        by_impl = results[api]
        param = '%s, %d+%d watchers, down %.0f s' % (
            api, by_impl['watchers'], by_impl['watchers'], by_impl['down'])
        ours, base = by_impl['etcdwatch'], by_impl['fixed']
        for _, metric, stat in _STATS:
            a = stat(ours['returns']) if ours['returns'] else float('nan')
            b = stat(base['returns']) if base['returns'] else float('nan')
            table.append(common.row(
                'restart', param, metric, 's', a, NAMES['fixed'], b,
                'ours/baseline', common.ratio(a, b)))
        a, b = _peak(ours['returns']), _peak(base['returns'])
        table.append(common.row(
            'restart', param, 'most returns within %d ms' % (WINDOW * 1e3),
            'watchers', a, NAMES['fixed'], b, 'ours/baseline',
            common.ratio(a, b)))
        table.append(common.row(
            'restart', param, 'waiting when etcd answered again',
            'watchers', ours['waiting'], NAMES['fixed'], base['waiting'],
            'ours/baseline', common.ratio(ours['waiting'],
                                          base['waiting'])))
        table.append(common.row(
            'restart', param, 'failed calls per watcher in the outage '
            '(median)', 'count', ours['failures'], NAMES['fixed'],
            base['failures'], 'ours/baseline',
            common.ratio(ours['failures'], base['failures'])))
        table.append(common.row(
            'restart', param, 'not back within %d s' % RETURN_LIMIT,
            'watchers', ours['not_back'], NAMES['fixed'], base['not_back'],
            note='etcd answered %.1f s after its start' % by_impl['startup']))
    return table
