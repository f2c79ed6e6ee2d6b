"""Fan-out: many watchers in one eventlet process, sharing one client (v2).

A child process (``benchmarks.workers fanout``, eventlet monkey-patched
first) follows N distinct, nested prefixes (``ROOT/c``, ``ROOT/c/c``, ...
N levels deep), one follower each, all on one python-etcd client with its
default pool (10 connections per host).  Four such children run at once,
each on its own ROOT: etcdwatch's EtcdWatcher and the bare loop, each with
etcdwatch's default heartbeat (60 s) and with a short one (10 s).  While
they are all idle we measure, over the same window, each child's CPU time
and its TCP connections to etcd (psutil): how many are open, and how many
new ones appear (churn).  Then writes to a key at the deepest level, taking
turns between the children, each reach all N followers of one child: we
time them to every follower, and watch for new connections again.
"""

import collections
import time

import psutil

from benchmarks import apis
from benchmarks import common
from benchmarks import procs
from benchmarks import workers

#: v2 only: python-etcd's pool and long polls are what it measures.
APIS = (apis.V2,)
WATCHERS = 200
QUICK_WATCHERS = 50
FAN_ROOT = '/bench/fan'
#: etcdwatch's default heartbeat (each watch's timeout) ...
DEFAULT_HEARTBEAT = 60
#: ... and a short one: each watch that times out costs a new connection
#: (python-etcd/urllib3 close a timed-out one), so a window of two such
#: heartbeats shows what a heartbeat costs.
SHORT_HEARTBEAT = 10
IDLE_WINDOW = 20
QUICK_IDLE_WINDOW = 4
#: How often the children's connections are listed while idle.
SAMPLE_INTERVAL = 2
SETTLE = 2
WRITES = 20
QUICK_WRITES = 5
WRITE_GAP = 0.3
#: Time for the last notifications to arrive after the last write.
DRAIN = 2
STARTUP_TIMEOUT = 300
GOAL_IDLE_CPU = 1.0
#: Granularity of the CPU times the kernel reports (1 / CLK_TCK).
CPU_TICK = 0.01
#: python-etcd's default per_host_pool_size.
DEFAULT_POOL = 10

#: (variant, implementation in the child, heartbeat); all run at once.
VARIANTS = (('etcdwatch', 'etcdwatch', DEFAULT_HEARTBEAT),
            ('bare', 'bare', DEFAULT_HEARTBEAT),
            ('etcdwatch-short', 'etcdwatch', SHORT_HEARTBEAT),
            ('bare-short', 'bare', SHORT_HEARTBEAT))


def _ports(proc, etcd_port):
    """Local ports of ``proc``'s established connections to etcd."""
    return {conn.laddr.port
            for conn in proc.net_connections(kind='tcp')
            if conn.raddr and conn.raddr.port == etcd_port and
            conn.status == psutil.CONN_ESTABLISHED}


def _cpu(proc):
    times = proc.cpu_times()
    return times.user + times.system


class _Variant(object):
    """One child process following its own chain of prefixes."""

    def __init__(self, api, name, impl, heartbeat, count):
        self.name = name
        self.heartbeat = heartbeat
        self.etcd_port = api.server.port
        root = '%s/%s' % (FAN_ROOT, name)
        self.hit_key = workers.fan_prefix(root, count) + '/hit'
        # One write at the deepest level makes every nested directory.
        api.client().write(self.hit_key, 'start')
        self.child = procs.Child('fanout', impl, api.server.host,
                                 api.server.port, root, count, heartbeat)
        self.proc = None
        self.sent = {}
        self.seen_ports = set()

    def wait_ready(self):
        self.child.wait_event('ready', timeout=STARTUP_TIMEOUT)
        self.proc = psutil.Process(self.child.pid)

    def ports(self):
        ports = _ports(self.proc, self.etcd_port)
        self.seen_ports |= ports
        return ports

    def cpu(self):
        return _cpu(self.proc)

    def write(self, client, number):
        value = 'w%d' % number
        self.sent[value] = time.time()
        client.write(self.hit_key, value)

    def received(self):
        self.child.close_input()
        return self.child.wait_event('received')['received']

    def close(self):
        self.child.kill()


def _idle(variants, window):
    """Idle CPU and connection churn of every variant, in one window."""
    cpu = {v.name: v.cpu() for v in variants}
    first = {v.name: v.ports() for v in variants}
    started = time.monotonic()
    while time.monotonic() - started < window:
        time.sleep(SAMPLE_INTERVAL)
        for variant in variants:
            variant.ports()
    elapsed = time.monotonic() - started
    result = {}
    for variant in variants:
        last = variant.ports()
        used = variant.cpu() - cpu[variant.name]
        new = len(variant.seen_ports - first[variant.name])
        result[variant.name] = {
            'cpu_percent': 100 * used / elapsed, 'open': len(last),
            'new_ports': new,
            'cpu_per_new_port': used / new if new else float('nan')}
        variant.seen_ports = set(last)
    return result


def _fan_writes(api, variants, writes):
    """Writes that reach every watcher, taking turns between variants."""
    client = api.client()
    before = {v.name: set(v.seen_ports) for v in variants}
    for number in range(writes):
        shift = number % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            variant.write(client, number)
            time.sleep(WRITE_GAP)
            variant.ports()
    time.sleep(DRAIN)
    return {v.name: {
        'latencies': _latencies(v.sent, v.received()),
        'new_ports': len(v.seen_ports - before[v.name])} for v in variants}


def _latencies(sent, received):
    """{value: sorted seconds from write to each follower's callback}."""
    by_value = collections.defaultdict(list)
    for value, seen in received:
        if value in sent:
            by_value[value].append(seen - sent[value])
    return {value: sorted(times) for value, times in by_value.items()}


def measure(ctx):
    """{'count': n, 'idle': {variant: ...}, 'writes': {variant: ...}}."""
    api, = ctx.select(APIS)
    count = ctx.pick(WATCHERS, QUICK_WATCHERS)
    variants = []
    try:
        for name, impl, heartbeat in VARIANTS:
            variants.append(_Variant(api, name, impl, heartbeat, count))
        for variant in variants:
            variant.wait_ready()
        time.sleep(SETTLE)
        idle = _idle(variants, ctx.pick(IDLE_WINDOW, QUICK_IDLE_WINDOW))
        writes = _fan_writes(api, variants, ctx.pick(WRITES, QUICK_WRITES))
    finally:
        for variant in variants:
            variant.close()
    results = {'count': count, 'idle': idle, 'writes': writes,
               'window': ctx.pick(IDLE_WINDOW, QUICK_IDLE_WINDOW)}
    for name, _impl, _heartbeat in VARIANTS:
        ctx.log('fan-out %s: idle CPU %.2f%%, %d open, %d new ports idle, '
                '%d new ports in writes, last-watcher latency %.0f ms' % (
                    name, idle[name]['cpu_percent'], idle[name]['open'],
                    idle[name]['new_ports'], writes[name]['new_ports'],
                    _fan_figure(writes[name], -1) * 1e3))
    return results


def _fan_figure(writes, position):
    """Median over writes of the latency at ``position`` in each one.

    ``position`` -1 is the last watcher; None the median watcher.
    """
    def pick(times):
        return common.median(times) if position is None else times[position]
    return common.median([pick(times)
                          for times in writes['latencies'].values()])


def _delivered(results, name):
    return sum(len(times) == results['count']
               for times in results['writes'][name]['latencies'].values())


def rows(results):
    idle, writes = results['idle'], results['writes']
    param = '%d watchers' % results['count']

    def pair(metric, unit, source, field, scale=1, **extra):
        ours = source['etcdwatch'][field] * scale
        bare = source['bare'][field] * scale
        note = extra.pop('note', '')
        note = ('%sheartbeat %d s: etcdwatch %s, bare %s' % (
            note, SHORT_HEARTBEAT,
            _short(source['etcdwatch-short'][field] * scale),
            _short(source['bare-short'][field] * scale)))
        return common.row('fan-out', param, metric, unit, ours, 'bare loops',
                          bare, 'ours/bare', common.ratio(ours, bare),
                          note=note, **extra)

    table = [pair(
        'idle CPU, heartbeat %d s' % DEFAULT_HEARTBEAT, '% of a core',
        idle, 'cpu_percent', goal='< %g%% of one core' % GOAL_IDLE_CPU,
        met=idle['etcdwatch']['cpu_percent'] < GOAL_IDLE_CPU,
        note='measured to %.2f%% (CPU tick / window); CPU per re-opened '
        'watch: %.2f ms, so %d watchers at a %d s heartbeat use about '
        '%.2f%% of a core; at ' % (
            100 * CPU_TICK / results['window'],
            idle['etcdwatch-short']['cpu_per_new_port'] * 1e3,
            results['count'], DEFAULT_HEARTBEAT,
            100 * idle['etcdwatch-short']['cpu_per_new_port'] *
            results['count'] / DEFAULT_HEARTBEAT))]
    table.append(pair('open connections to etcd (idle)', 'count', idle,
                      'open'))
    table.append(pair('new connections while idle %d s' % results['window'],
                      'count', idle, 'new_ports'))
    table.append(pair('new connections during the fan-out writes', 'count',
                      writes, 'new_ports'))
    for title, position in (('median watcher', None), ('last watcher', -1)):
        for name in writes:
            writes[name]['figure'] = _fan_figure(writes[name], position)
        table.append(pair(
            'one write -> all watchers: %s' % title, 'ms', writes, 'figure',
            scale=1e3, note='writes reaching all watchers: %s; at ' % (
                ', '.join('%s %d' % (name, _delivered(results, name))
                          for name in writes))))
    return table


def _short(value):
    return '%.2f' % value if isinstance(value, float) else str(value)


def findings(results):
    """Sentences the figures support, for the page."""
    count, idle, writes = results['count'], results['idle'], results['writes']
    short = idle['etcdwatch-short']
    pool_churn = writes['etcdwatch']['new_ports']
    said = ['%d watchers sharing one python-etcd client keep %d connections '
            'open to etcd (one per long poll), although the client\'s pool '
            'holds %d.' % (count, idle['etcdwatch']['open'], DEFAULT_POOL)]
    if pool_churn == 0:
        said.append(
            'The small pool does not churn connections: after %d writes '
            'that each woke all %d watchers, no new connection had appeared '
            '(each follower puts its connection back and takes it again '
            'for its next watch before the pool overflows).'
            % (len(writes['etcdwatch']['latencies']), count))
    else:
        said.append(
            'The small pool churns connections: %d new ones appeared over '
            '%d writes that each woke all %d watchers.'
            % (pool_churn, len(writes['etcdwatch']['latencies']), count))
    if results['window'] < SHORT_HEARTBEAT:
        said.append('The cost of a heartbeat was not measured: the idle '
                    'window (%d s) is shorter than the heartbeat (%d s).'
                    % (results['window'], SHORT_HEARTBEAT))
        return said
    said.append(
        'Every watch that times out re-opens its connection (urllib3 '
        'closes a connection whose read timed out): with a %d s heartbeat '
        '%d new connections appeared in %d s (bare loop: %d), at %.2f ms '
        'of CPU each; at the default %d s heartbeat that is %d/%d '
        'reconnections per second, about %.2f%% of a core.' % (
            SHORT_HEARTBEAT, short['new_ports'], results['window'],
            idle['bare-short']['new_ports'],
            short['cpu_per_new_port'] * 1e3, DEFAULT_HEARTBEAT, count,
            DEFAULT_HEARTBEAT,
            100 * short['cpu_per_new_port'] * count / DEFAULT_HEARTBEAT))
    return said
