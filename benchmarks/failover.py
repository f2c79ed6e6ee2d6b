"""Election: how long the leadership is vacant when the leader goes.

Each trial has a leader process and a follower process that has been
campaigning for a while (so it is waiting on the key).  Then the leader
exits cleanly (SIGTERM: atexit releases the key), releases the election
(``clean()``) or is killed with SIGKILL (the key must expire), and we time
until the follower says it was elected.  The follower then leads the next
trial.  etcdwatch's EtcdElection against a baseline, each in its own
processes (``benchmarks.workers elect``): on v2 the seed's algorithm, on
v3 the least code with etcd3gw (its ``Lock`` on a lease, renewed by
keepalives, and ``watch_once`` on the key to wait).
"""

import signal
import time

from benchmarks import apis
from benchmarks import common
from benchmarks import procs

APIS = apis.NAMES
#: etcdwatch, and the baseline of each API.
IMPLS = {apis.V2: ('etcdwatch', 'seed'), apis.V3: ('etcdwatch', 'bare')}
BASELINES = {apis.V2: 'seed election',
             apis.V3: 'bare etcd3gw lock'}
SCENARIOS = ('exit', 'clean', 'kill9')
SCENARIO_TITLES = {
    'exit': 'handover after clean exit',
    'clean': 'handover after clean()',
    'kill9': 'failover after kill -9',
}
TRIALS = 10
QUICK_TRIALS = 2
#: The election key's TTL (whole seconds, as etcd v2 takes them; on v3
#: the lease's, and etcd's minimum lease TTL is 2 s).
WORK_TIME = 2
RECOVERY_TIME = 5
#: How long a new follower campaigns before the leader goes.
SETTLE = 0.5
#: A vacancy longer than this is a failure, not a figure.
VACANCY_LIMIT = 4 * WORK_TIME + RECOVERY_TIME


class _Chain(object):
    """A leader and a waiting follower, for one implementation."""

    def __init__(self, api, impl, scenario):
        self.args = ('elect', impl, api.name, api.server.host,
                     api.server.port, '%s-%s' % (impl, scenario), WORK_TIME,
                     RECOVERY_TIME)
        self.leader = procs.Child(*self.args)
        self.leader.wait_event('elected')
        self.follower = None

    def add_follower(self):
        self.follower = procs.Child(*self.args)
        self.follower.wait_event('campaigning')
        time.sleep(SETTLE)

    def vacate(self, scenario):
        """Make the leader go; return when it went (time.time())."""
        if scenario == 'clean':
            self.leader.signal(signal.SIGUSR1)
            return self.leader.wait_event('resigned')['t']
        went = time.time()
        if scenario == 'kill9':
            self.leader.kill()
        else:
            self.leader.signal(signal.SIGTERM)
        return went

    def hand_over(self):
        elected = self.follower.wait_event('elected',
                                           timeout=VACANCY_LIMIT)['t']
        self.leader.kill()
        self.leader, self.follower = self.follower, None
        return elected

    def close(self):
        for child in (self.leader, self.follower):
            if child is not None:
                child.kill()


def _trials(api, impl, scenario, count):
    chain = _Chain(api, impl, scenario)
    vacancies = []
    try:
        for _ in range(count):
            chain.add_follower()
            went = chain.vacate(scenario)
            vacancies.append(chain.hand_over() - went)
    finally:
        chain.close()
    return vacancies


def measure(ctx):
    """{api: {scenario: {impl: [seconds vacant, ...]}}}."""
    count = ctx.pick(TRIALS, QUICK_TRIALS)
    results = {}
    for scenario in SCENARIOS:
        for api in ctx.select(APIS):
            by_impl = results.setdefault(api.name, {}).setdefault(
                scenario, {})
            for impl in IMPLS[api.name]:
                by_impl[impl] = _trials(api, impl, scenario, count)
                ctx.log('election %s %s %s: median %.0f ms' % (
                    api.name, scenario, impl,
                    common.median(by_impl[impl]) * 1e3))
    return results


def _apis(results):
    return [api for api in apis.NAMES if api in results]


def rows(results):
    table = []
    for api in _apis(results):
        ours_name, base = IMPLS[api]
        for scenario in SCENARIOS:
            ours = results[api][scenario][ours_name]
            other = results[api][scenario][base]
            note = 'n=%d; TTL %d s; etcdwatch max %.0f ms, %s max %.0f ms' % (
                len(ours), WORK_TIME, max(ours) * 1e3, base,
                max(other) * 1e3)
            table.append(common.row(
                'election', '%s, %s' % (api, SCENARIO_TITLES[scenario]),
                'leaderless time (median)', 'ms', common.median(ours) * 1e3,
                BASELINES[api], common.median(other) * 1e3,
                'ours/%s' % base,
                common.ratio(common.median(ours), common.median(other)),
                note=note))
    return table


def findings(results):
    """Sentences the figures support, for the page."""
    def med(api, scenario, impl):
        return common.median(results[api][scenario][impl]) * 1e3
    said = []
    for api in _apis(results):
        base = IMPLS[api][1]
        said.append(
            'On %s a leader that exits cleanly or calls ``clean()`` hands '
            'over at once: the follower, waiting on the key, is elected '
            '%.0f / %.0f ms later (etcdwatch; the %s: %.0f / %.0f ms).' % (
                api, med(api, 'exit', 'etcdwatch'),
                med(api, 'clean', 'etcdwatch'), BASELINES[api],
                med(api, 'exit', base), med(api, 'clean', base)))
        said.append(
            'After kill -9 on %s nobody releases the key: the follower '
            'waits for the rest of its %d s %s (renewed every %.2f s by '
            'etcdwatch\'s keepalive, every %.2f s by the benchmark\'s '
            '%s loop) plus etcd\'s expiry: %.0f ms for etcdwatch, %.0f ms '
            'for the %s.' % (
                api, WORK_TIME, 'TTL' if api == apis.V2 else 'lease',
                WORK_TIME / 3.0, WORK_TIME / 4.0, base,
                med(api, 'kill9', 'etcdwatch'), med(api, 'kill9', base),
                BASELINES[api]))
    return said
