"""Election: how long the leadership is vacant when the leader goes.

Each trial has a leader process and a follower process that has been
campaigning for a while (so it is waiting on the key).  Then the leader
exits cleanly (SIGTERM: atexit releases the key), releases the election
(``clean()``) or is killed with SIGKILL (the key must expire), and we time
until the follower says it was elected.  The follower then leads the next
trial.  etcdwatch's EtcdElection against the seed's algorithm, each in its
own processes (``benchmarks.workers elect``).
"""

import collections
import signal
import time

from benchmarks import common
from benchmarks import procs

IMPLS = ('etcdwatch', 'seed')
SCENARIOS = ('exit', 'clean', 'kill9')
SCENARIO_TITLES = {
    'exit': 'handover after clean exit',
    'clean': 'handover after clean()',
    'kill9': 'failover after kill -9',
}
TRIALS = 10
QUICK_TRIALS = 2
#: The election key's TTL (whole seconds, as etcd v2 takes them).
WORK_TIME = 2
RECOVERY_TIME = 5
#: How long a new follower campaigns before the leader goes.
SETTLE = 0.5
#: A vacancy longer than this is a failure, not a figure.
VACANCY_LIMIT = 4 * WORK_TIME + RECOVERY_TIME


class _Chain(object):
    """A leader and a waiting follower, for one implementation."""

    def __init__(self, ctx, impl, scenario):
        self.args = ('elect', impl, ctx.server.host, ctx.server.port,
                     '%s-%s' % (impl, scenario), WORK_TIME, RECOVERY_TIME)
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


def _trials(ctx, impl, scenario, count):
    chain = _Chain(ctx, impl, scenario)
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
    """{scenario: {impl: [seconds vacant, ...]}}."""
    count = ctx.pick(TRIALS, QUICK_TRIALS)
    results = collections.defaultdict(dict)
    for scenario in SCENARIOS:
        for impl in IMPLS:
            results[scenario][impl] = _trials(ctx, impl, scenario, count)
            ctx.log('election %s %s: median %.0f ms' % (
                scenario, impl,
                common.median(results[scenario][impl]) * 1e3))
    return dict(results)


def rows(results):
    table = []
    for scenario in SCENARIOS:
        ours = results[scenario]['etcdwatch']
        seed = results[scenario]['seed']
        note = 'n=%d; TTL %d s; etcdwatch max %.0f ms, seed max %.0f ms' % (
            len(ours), WORK_TIME, max(ours) * 1e3, max(seed) * 1e3)
        table.append(common.row(
            'election', SCENARIO_TITLES[scenario], 'leaderless time (median)',
            'ms', common.median(ours) * 1e3, 'seed election',
            common.median(seed) * 1e3, 'ours/seed',
            common.ratio(common.median(ours), common.median(seed)),
            note=note))
    return table


def findings(results):
    """Sentences the figures support, for the page."""
    def med(scenario, impl):
        return common.median(results[scenario][impl]) * 1e3
    return [
        'A leader that exits cleanly or calls ``clean()`` hands over at '
        'once: the follower, waiting on the key, is elected %.0f / %.0f ms '
        'later (etcdwatch; the seed: %.0f / %.0f ms).' % (
            med('exit', 'etcdwatch'), med('clean', 'etcdwatch'),
            med('exit', 'seed'), med('clean', 'seed')),
        'After kill -9 nobody releases the key: the follower waits for the '
        'rest of its %d s TTL (renewed every %.2f s by etcdwatch\'s '
        'keepalive, every %.2f s by the benchmark\'s seed loop) plus '
        'etcd\'s expiry: %.0f ms for etcdwatch, %.0f ms for the seed.' % (
            WORK_TIME, WORK_TIME / 3.0, WORK_TIME / 4.0,
            med('kill9', 'etcdwatch'), med('kill9', 'seed')),
    ]
