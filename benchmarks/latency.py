"""Event latency: from just before a write to the follower's callback.

On each API, etcdwatch's ``EtcdWatcher`` and that API's bare loop (v2: a
python-etcd watch per event; v3: an etcd3gw watch stream) each follow a
prefix of their own, in a thread, and are idle when each write is sent:
the next write waits until the last one was seen and then a short gap.
The writer uses its own client.  All the followers run together, and the
writes take turns between them, so whatever else the machine does hits
them all alike.
"""

import threading
import time

from benchmarks import apis
from benchmarks import baselines
from benchmarks import common
from benchmarks import followers

APIS = apis.NAMES
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


def _start(api, impl, prefix, seen):
    """Start one follower in a thread; return (thread, stop)."""
    client = api.client()
    if impl == 'etcdwatch':
        watcher = followers.CountingWatcher(
            client, 'latency', prefix, heartbeat=HEARTBEAT,
            on_event=seen.on_event)
        thread = common.start_thread(watcher.watch_forever)
        return thread, watcher.stop
    loop = baselines.BARE[api.name](client, prefix, HEARTBEAT,
                                    on_event=seen.on_event)
    stopped = threading.Event()

    def stop():
        stopped.set()
        loop.close()
    return common.start_thread(loop.run, stopped), stop


class _Running(object):
    """One follower on its own prefix, and the client that writes there."""

    def __init__(self, api, impl):
        self.api = api
        self.writer = api.client()
        self.prefix = '%s/%s' % (PREFIX, impl)
        api.make_dir(self.writer, self.prefix)
        self.seen = _Seen()
        self.thread, self.stop = _start(api, impl, self.prefix, self.seen)

    def sample(self, number):
        """Seconds from sending one write to the follower's callback."""
        value = 'v%d' % number
        time.sleep(GAP)
        sent = common.now()
        self.api.put(self.writer, self.prefix + '/key', value)
        if not self.seen.wait_for(value):
            return float('inf')
        return self.seen.times[value] - sent

    def close(self):
        self.stop()
        self.thread.join(HEARTBEAT * 2)


def measure(ctx):
    """{api: {impl: [seconds, ...]}}."""
    running = {}
    try:
        for api in ctx.select(APIS):
            for impl in IMPLS:
                running[(api.name, impl)] = _Running(api, impl)
        turns = list(running)
        results = {api: {} for api, _impl in turns}
        for api, impl in turns:
            results[api][impl] = []
        for sample in range(ctx.pick(SAMPLES, QUICK_SAMPLES)):
            shift = sample % len(turns)
            for api, impl in turns[shift:] + turns[:shift]:
                results[api][impl].append(
                    running[(api, impl)].sample(sample))
    finally:
        for follower in running.values():
            follower.close()
    for api, impl in turns:
        ctx.log('latency %s %s: p50 %.2f ms p99 %.2f ms (n=%d)' % (
            api, impl, common.percentile(results[api][impl], P50) * 1e3,
            common.percentile(results[api][impl], P99) * 1e3,
            len(results[api][impl])))
    return results


def rows(results):
    table = []
    for api in [name for name in apis.NAMES if name in results]:
        for name, fraction in (('p50', P50), ('p99', P99)):
            ours = common.percentile(results[api]['etcdwatch'], fraction)
            bare = common.percentile(results[api]['bare'], fraction)
            table.append(common.row(
                'latency', '%s, idle watcher' % api,
                'write -> callback %s' % name, 'ms', ours * 1e3,
                apis.BARE_NAMES[api], bare * 1e3, 'ours/bare',
                common.ratio(ours, bare),
                'within %g ms of bare' % (GOAL_WITHIN * 1e3),
                ours - bare <= GOAL_WITHIN,
                'n=%d each' % len(results[api]['etcdwatch'])))
    return table
