"""Event latency: from just before a write to the follower's callback.

The follower (etcdwatch's ``EtcdWatcher`` or the bare loop) runs in a
thread and is idle when each write is sent: the next write waits until the
last one was seen and then a short gap.  The writer uses its own client.
Both followers run together; the writes alternate between them.
"""

import threading
import time

from benchmarks import baselines
from benchmarks import common
from benchmarks import followers

PREFIX = '/bench/latency'
SAMPLES = 500
QUICK_SAMPLES = 30
#: The follower is idle this long before each write.
GAP = 0.01
#: Watch timeout: short, so the followers stop promptly (writes come far
#: more often, so no watch times out while sampling).
HEARTBEAT = 1
#: A write not seen within this long counts as lost (infinitely late).
SEEN_TIMEOUT = 10
P50, P99 = 0.5, 0.99
#: Goal from the issue: within this many seconds of the bare loop.
GOAL_WITHIN = 0.002
IMPLS = ('etcdwatch', 'bare')


class _Seen(object):
    """Times at which the follower saw each value."""

    def __init__(self):
        self.times = {}
        self.cond = threading.Condition()

    def on_event(self, key, value):
        with self.cond:
            self.times[value] = common.now()
            self.cond.notify_all()

    def wait_for(self, value):
        with self.cond:
            return self.cond.wait_for(lambda: value in self.times,
                                      SEEN_TIMEOUT)


def _start(ctx, impl, prefix, seen):
    client = ctx.client()
    if impl == 'etcdwatch':
        watcher = followers.CountingWatcher(
            client, 'latency', prefix, heartbeat=HEARTBEAT,
            on_event=seen.on_event)
        thread = common.start_thread(watcher.watch_forever)
        return thread, watcher.stop
    loop = baselines.BareFollower(client, prefix, HEARTBEAT,
                                  on_event=seen.on_event)
    stop = threading.Event()
    return common.start_thread(loop.run, stop), stop.set


def measure(ctx):
    """{impl: [seconds, ...]}.

    Both followers run all along, each on its own prefix; the writes
    alternate between them, so that whatever else the machine does hits
    both alike.
    """
    writer = ctx.client()
    running = {}
    for impl in IMPLS:
        prefix = '%s/%s' % (PREFIX, impl)
        writer.write(prefix, None, dir=True)
        seen = _Seen()
        running[impl] = (prefix, seen) + _start(ctx, impl, prefix, seen)
    results = {impl: [] for impl in IMPLS}
    try:
        for sample in range(ctx.pick(SAMPLES, QUICK_SAMPLES)):
            order = IMPLS if sample % 2 == 0 else IMPLS[::-1]
            for impl in order:
                prefix, seen = running[impl][:2]
                results[impl].append(_sample(writer, prefix, seen, sample))
    finally:
        for _prefix, _seen, thread, stop in running.values():
            stop()
            thread.join(HEARTBEAT * 2)
    for impl in IMPLS:
        ctx.log('latency %s: p50 %.2f ms p99 %.2f ms (n=%d)' % (
            impl, common.percentile(results[impl], P50) * 1e3,
            common.percentile(results[impl], P99) * 1e3,
            len(results[impl])))
    return results


def _sample(writer, prefix, seen, number):
    """Seconds from sending one write to the follower's callback."""
    value = 'v%d' % number
    time.sleep(GAP)
    sent = common.now()
    writer.write(prefix + '/key', value)
    if not seen.wait_for(value):
        return float('inf')
    return seen.times[value] - sent


def rows(results):
    table = []
    for name, fraction in (('p50', P50), ('p99', P99)):
        ours = common.percentile(results['etcdwatch'], fraction)
        bare = common.percentile(results['bare'], fraction)
        table.append(common.row(
            'latency', 'idle watcher', 'write -> callback %s' % name, 'ms',
            ours * 1e3, 'bare loop', bare * 1e3, 'ours/bare',
            common.ratio(ours, bare),
            'within %g ms of bare' % (GOAL_WITHIN * 1e3),
            ours - bare <= GOAL_WITHIN,
            'n=%d each' % len(results['etcdwatch'])))
    return table
