"""Catch-up after K missed events: etcdwatch vs walking every event.

Each trial makes an etcdwatch ``EtcdChangeWatcher`` and the baselines of
one API, all synced at the same index: on v2 a seed walker and a bare
python-etcd follower, on v3 a bare etcd3gw follower and a change watcher
that never re-reads to catch up (it walks, to show what etcdwatch's re-read
threshold does on v3).  It then writes K events under the prefix and times
each follower's steps (``do_watch()`` for etcdwatch) until it holds etcd's
state.  Nothing runs in the background.  The K events touch distinct keys
while K fits in the tree (then they wrap around): a mix of adds, changes,
deletes and rewrites of the same value, which are events but not changes.
Afterwards the change watchers' notifications are compared with the net
difference between the tree before and after.  v2 keeps its last 1000
events (K=900 fits, K=5000 does not); v3 keeps every revision until a
compaction, and nothing here compacts.  On v3 every follower opens a
stream at a past revision, which etcd first answers 0-100 ms later (see
the findings); a probe process opens one next to each follower's, so the
rows "time after etcd's first events" leave that wait out, to within a
millisecond or two: the two streams are answered in the same round, not at
the same instant (so small figures can come out below zero), and now and
then in two rounds (a median shrugs that off).
"""

import collections
import multiprocessing
import random
import time

import etcdwatch

from benchmarks import apis
from benchmarks import baselines
from benchmarks import common
from benchmarks import followers
from benchmarks import writing

APIS = apis.NAMES
PREFIX = '/bench/catchup'
#: Keys in the tree that the K events land in.
TREE_SIZE = 1000
KS = {apis.V2: (10, 100, 900, 5000), apis.V3: (10, 100, 1000, 5000)}
#: Trials per K, in a full and in a quick run: small K are cheap and
#: noisy, so they get more.
REPEATS = {10: 15, 100: 9, 900: 5, 1000: 5, 5000: 5}
QUICK_REPEATS = {10: 3, 100: 3, 900: 1, 1000: 1, 5000: 1}
VALUE_SIZE = 64
HEARTBEAT = 5
#: Of the events on a key that exists: rewrites of the same value ...
SAME_VALUE_SHARE = 0.2
#: ... and deletes; the rest change the value.
DELETE_SHARE = 0.2
#: Steps a follower may take beyond K before we call it stuck.
STEP_MARGIN = 10
RANDOM_SEED = 6
#: etcd's loop for unsynced watchers (v3) runs every this many seconds.
ETCD_ROUND = 0.1
#: Goals from the issue (v2, against the seed's walk).
GOAL_SPEEDUP_K = 900
GOAL_SPEEDUP = 10.0
#: "Not slower" allows for this much run-to-run noise (a fraction).
NOISE_TOLERANCE = 0.1

#: The followers of each API: etcdwatch, then what it is compared with.
IMPLS = {apis.V2: ('etcdwatch', 'seed', 'bare'),
         apis.V3: ('etcdwatch', 'bare', 'walk')}
#: What the report calls each follower.
NAMES = {'etcdwatch': 'etcdwatch', 'seed': 'seed walk',
         'walk': 'etcdwatch never re-reading'}
#: The change watchers (their notifications are checked) of each API.
WATCHERS = {apis.V2: (('etcdwatch', followers.RecordingChangeWatcher),),
            apis.V3: (('etcdwatch', followers.RecordingChangeWatcher),
                      ('walk', followers.WalkingChangeWatcher))}


def _key(slot):
    return '%s/k%05d' % (PREFIX, slot)


class _Events(object):
    """Generates K events and knows the tree they leave behind."""

    def __init__(self, tree, rng):
        self.tree = tree
        self.rng = rng
        self.serial = 0

    def make(self, count):
        slots = list(range(TREE_SIZE))
        self.rng.shuffle(slots)
        while len(slots) < count:
            slots.append(self.rng.randrange(TREE_SIZE))
        return [self._event(_key(slot)) for slot in slots[:count]]

    def _event(self, key):
        self.serial += 1
        old = self.tree.get(key)
        draw = self.rng.random()
        if old is not None and draw < SAME_VALUE_SHARE:
            operation = (writing.PUT, key, old)
        elif old is not None and draw < SAME_VALUE_SHARE + DELETE_SHARE:
            operation = (writing.DELETE, key, None)
        else:
            value = common.value_of_size(self.serial, VALUE_SIZE)
            operation = (writing.PUT, key, value)
        if operation[0] == writing.DELETE:
            del self.tree[key]
        else:
            self.tree[key] = operation[2]
        return operation


def _net_changes(before, after):
    return collections.Counter(
        (key, after.get(key)) for key in set(before) | set(after)
        if before.get(key) != after.get(key))


def _notified(notifications):
    return collections.Counter(
        (key, None if action == 'delete' else value)
        for action, key, value in notifications)


class _Probe(object):
    """A process that times etcd's first events on a new v3 stream.

    A new v3 stream that starts at a past revision is served by etcd's
    loop for unsynced watchers, which runs every 100 ms and sends at most
    1000 revisions a time: the first events come 0-100 ms after the
    stream opens, whoever opened it.  The probe opens a stream next to the
    follower's, at the same revision, so etcd serves both in the same
    round; the follower's time minus the probe's is what the follower
    spent once etcd had answered.  A process of its own, so that it never
    waits for the follower's interpreter; both read the same monotonic
    clock.
    """

    def __init__(self, api):
        mp = multiprocessing.get_context('spawn')
        self.conn, child = mp.Pipe()
        self.proc = mp.Process(target=_probe, daemon=True, args=(
            api.server.host, api.server.port, child))
        self.proc.start()
        self.conn.recv()
        self.phase = random.Random(RANDOM_SEED)

    def start(self, revision):
        """Open the probe's stream at ``revision``; the time it was asked.

        First waits a random part of etcd's round: followers timed one
        after another would each start just after the round that ended
        the last one, and wait most of a round.
        """
        time.sleep(self.phase.uniform(0, ETCD_ROUND))
        asked = time.monotonic()
        self.conn.send(revision)
        return asked

    def first(self, asked):
        """Seconds from ``asked`` until the probe saw events."""
        if not self.conn.poll(common.CLIENT_READ_TIMEOUT):
            return float('nan')
        return self.conn.recv() - asked

    def close(self):
        self.conn.send(None)
        self.proc.join(common.CLIENT_READ_TIMEOUT)


def _probe(host, port, conn):
    client = apis.connect(apis.V3, host, port)
    client.api_path             # etcd3gw asks etcd for it once
    conn.send('ready')
    for revision in iter(conn.recv, None):
        apis.v3_watch_one(client, PREFIX, revision)
        conn.send(time.monotonic())


class _Trial(object):
    """One API's followers, synced at one index, and their catch-up."""

    def __init__(self, api, probe=None):
        self.probe = probe
        self.counters = {}
        self.followers = {}
        self.steppers = {}
        self.watchers = {}
        for impl, cls in WATCHERS[api.name]:
            watcher = cls(self._client(api, impl), 'catchup', PREFIX,
                          heartbeat=HEARTBEAT)
            watcher.notifications.clear()
            self.watchers[impl] = watcher
            self._add(impl, watcher, watcher.do_watch,
                      lambda w=watcher: w.etcd_data)
        self.seed_changes = []
        if api.name == apis.V2:
            seed = baselines.SeedWalker(
                self._client(api, 'seed'), PREFIX, HEARTBEAT,
                key_change=lambda *change: self.seed_changes.append(change))
            self.seed_changes.clear()
            self._add('seed', seed, seed.step, lambda: seed.data)
        bare = baselines.BARE[api.name](self._client(api, 'bare'), PREFIX,
                                        HEARTBEAT)
        self._add('bare', bare, bare.step, lambda: bare.data)

    def _client(self, api, impl):
        client = api.client()
        self.counters[impl] = api.count_requests(client)
        return client

    def _add(self, impl, follower, step, data):
        self.followers[impl] = follower
        self.steppers[impl] = (step, data)

    def catch_up(self, impl, target, budget):
        """How ``impl`` applied everything up to ``target``.

        {'seconds': taken, 'requests': sent, 'first': seconds until etcd
        sent the first events (v3; None on v2)}.
        """
        step, _data = self.steppers[impl]
        follower = self.followers[impl]
        before = self.counters[impl].count
        asked = None
        if self.probe is not None:
            asked = self.probe.start(follower.tick)
        start = common.now()
        for _ in range(budget):
            if follower.tick > target:
                break
            step()
        elapsed = common.now() - start
        return {'seconds': elapsed,
                'requests': self.counters[impl].count - before,
                'first': None if asked is None else self.probe.first(asked)}

    def holds(self, impl, tree):
        return self.steppers[impl][1]() == tree

    def close(self):
        """Close the v3 followers' streams (v2 has none open)."""
        for impl, follower in self.followers.items():
            if impl in self.watchers:
                follower.stop()
            else:
                follower.close()


def _one_trial(api, events, count, order, probe):
    """Time each follower's catch-up after ``count`` events."""
    trial = _Trial(api, probe)
    try:
        before = dict(events.tree)
        resyncs = {impl: w.stats()['resyncs']
                   for impl, w in trial.watchers.items()}
        api.writer.apply(events.make(count))
        target, after = api.read_tree(api.client(), PREFIX)
        result = {}
        for impl in order:
            result[impl] = trial.catch_up(impl, target, count + STEP_MARGIN)
            result[impl]['correct'] = trial.holds(impl, after)
            if result[impl]['first'] is not None:
                result[impl]['after'] = (result[impl]['seconds'] -
                                         result[impl]['first'])
    finally:
        trial.close()
    net = _net_changes(before, after)
    for impl, watcher in trial.watchers.items():
        result[impl]['exact'] = _notified(watcher.notifications) == net
        result[impl]['resynced'] = watcher.stats()['resyncs'] > resyncs[impl]
    if 'seed' in result:
        result['seed']['exact'] = _notified(trial.seed_changes) == net
    result['net_changes'] = sum(net.values())
    return result


def _seed_tree(api):
    items = [(_key(slot), common.value_of_size(slot, VALUE_SIZE))
             for slot in range(TREE_SIZE)]
    api.writer.put_all(items)
    return dict(items)


def measure(ctx):
    """{api: {K: [trial result, ...]}}.

    Each API has its own tree, and the same events (the same random seed)
    in the same order; the APIs take turns, trial by trial.
    """
    api_list = ctx.select(APIS)
    events = {api.name: _Events(_seed_tree(api), random.Random(RANDOM_SEED))
              for api in api_list}
    results = {api.name: collections.defaultdict(list) for api in api_list}
    repeats = ctx.pick(REPEATS, QUICK_REPEATS)
    probes = {api.name: _Probe(api) for api in api_list
              if api.name == apis.V3}
    try:
        for rep in range(max(repeats.values())):
            for position in range(len(KS[apis.V2])):
                for api in api_list:
                    count = KS[api.name][position]
                    if repeats[count] > rep:
                        results[api.name][count].append(_logged_trial(
                            ctx, api, events[api.name], count, rep,
                            probes.get(api.name)))
    finally:
        for probe in probes.values():
            probe.close()
    return {api: dict(by_count) for api, by_count in results.items()}


def _logged_trial(ctx, api, events, count, rep, probe):
    impls = IMPLS[api.name]
    shift = rep % len(impls)
    trial = _one_trial(api, events, count, impls[shift:] + impls[:shift],
                       probe)
    ctx.log('catch-up %s K=%d rep %d: %s' % (
        api.name, count, rep, ', '.join(
            '%s %.1f ms%s' % (i, trial[i]['seconds'] * 1e3,
                              '' if trial[i]['first'] is None else
                              ' (%.1f after the first events)' % (
                                  trial[i]['after'] * 1e3))
            for i in impls)))
    return trial


def _median_of(trials, impl, field):
    return common.median([t[impl][field] for t in trials])


def _apis(results):
    return [api for api in apis.NAMES if api in results]


def rows(results):
    table = []
    for api in _apis(results):
        for count in KS[api]:
            table += _count_rows(api, count, results[api][count])
    return table


def _count_rows(api, count, trials):
    param = '%s, K=%d' % (api, count)
    ours = _median_of(trials, 'etcdwatch', 'seconds')
    table = []
    for impl in IMPLS[api][1:]:
        other = _median_of(trials, impl, 'seconds')
        ratio = common.ratio(other, ours)
        goal, met, note = '', None, ''
        if impl == 'seed':
            goal = 'not slower than walking (%d%% noise)' % (
                NOISE_TOLERANCE * 100)
            met = ratio >= 1.0 - NOISE_TOLERANCE
            if count == GOAL_SPEEDUP_K:
                goal = '>= %gx faster than walking' % GOAL_SPEEDUP
                met = ratio >= GOAL_SPEEDUP
        if impl == IMPLS[api][1]:
            note = _note(api, trials)
        table.append(common.row(
            'catch-up', param, 'time to catch up', 'ms', ours * 1e3,
            _name(api, impl), other * 1e3, '%s/ours' % impl, ratio,
            goal, met, note))
    if api == apis.V3:
        ours = _median_of(trials, 'etcdwatch', 'after')
        walk = _median_of(trials, 'walk', 'after')
        table.append(common.row(
            'catch-up', param, "time after etcd's first events", 'ms',
            ours * 1e3, _name(api, 'walk'), walk * 1e3, 'walk/ours',
            common.ratio(walk, ours),
            note="etcd sent a new stream's first events %.0f ms (median; "
            'max %.0f) after it opened' % (
                common.median([t[i]['first'] for t in trials
                               for i in IMPLS[api]]) * 1e3,
                max(t[i]['first'] for t in trials
                    for i in IMPLS[api]) * 1e3)))
    return table


def _name(api, impl):
    if impl == 'bare':
        return apis.BARE_NAMES[api].replace('loop', 'walk')
    return NAMES[impl]


def _note(api, trials):
    watchers = [impl for impl, _cls in WATCHERS[api]]
    checked = watchers + (['seed'] if api == apis.V2 else [])
    return ('requests: %s; re-read: %s; exactly the net changes: %s; all '
            "hold etcd's state: %s" % (
                ', '.join('%s %d' % (impl, _median_of(trials, impl,
                                                      'requests'))
                          for impl in IMPLS[api]),
                ', '.join('%s %s' % (impl, _all(trials, impl, 'resynced'))
                          for impl in watchers),
                ', '.join('%s %s' % (impl, _all(trials, impl, 'exact'))
                          for impl in checked),
                all(t[i]['correct'] for t in trials for i in IMPLS[api])))


def _all(trials, impl, field):
    values = {t[impl][field] for t in trials}
    return 'yes' if values == {True} else (
        'no' if values == {False} else 'mixed')


def _count(trials, impl, field):
    return sum(1 for t in trials if t[impl][field])


def plot_series(results):
    """{label: [(K, median ms), ...]} for the scaling plot."""
    series = {}
    for api in _apis(results):
        for impl in IMPLS[api]:
            label = '%s %s' % (api, _name(api, impl))
            series[label] = [
                (count, _median_of(results[api][count], impl, 'seconds') *
                 1e3) for count in KS[api]]
    return series


#: Per API: the walk the threshold is judged against, the figure compared
#: (v3: the time after etcd's first events, which every follower waits
#: for alike) and the largest K a walk covers in one go (v2: etcd's
#: 1000-event window; v3: etcd sends a late stream 1000 revisions per
#: 100 ms round): the walk's cost per event is fitted up to there.
#: A threshold within this factor of the break-even lag is about right.
_TOLERANCE = 3
_THRESHOLD_BASIS = {apis.V2: ('seed', 'seconds', 1000),
                    apis.V3: ('walk', 'after', 1000)}


def _walk_cost(by_count, counts, impl, field):
    """ms per event of ``impl``'s walk: least squares through the origin.

    The fixed part of a walk (a stream to open) is left out: it is within
    the noise of these figures, and a re-read has one too.
    """
    points = [(count, _median_of(by_count[count], impl, field) * 1e3)
              for count in counts]
    return (sum(k * t for k, t in points) /
            sum(k * k for k, _t in points))


def _reread_ms(by_count, counts, field):
    """(K, ms) of etcdwatch at the smallest K where it always re-read."""
    for count in counts:
        if _all(by_count[count], 'etcdwatch', 'resynced') == 'yes':
            return count, _median_of(by_count[count], 'etcdwatch',
                                     field) * 1e3
    return None, None


def catchup_defaults(api):
    """(CATCHUP_MIN_LAG, CATCHUP_TREE_FRACTION) etcdwatch uses on ``api``.

    A watcher's own values, if a subclass sets them; else its backend's.
    """
    from etcdwatch.backends import v2
    from etcdwatch.backends import v3
    backend = {apis.V2: v2.V2Backend, apis.V3: v3.V3Backend}[api]
    watcher = etcdwatch.EtcdWatcher
    return (watcher.CATCHUP_MIN_LAG or backend.catchup_min_lag,
            watcher.CATCHUP_TREE_FRACTION or backend.catchup_tree_fraction)


def threshold_findings(results):
    """Whether etcdwatch's re-read threshold picks the cheaper way.

    A walk costs about the same per event (fitted over the K that one
    walk covers in one go); a re-read about what etcdwatch took at the
    smallest K where it re-read.  They cross at the break-even lag.
    """
    said = []
    for api in _apis(results):
        min_lag, fraction = catchup_defaults(api)
        tree_part = TREE_SIZE // fraction
        threshold = max(min_lag, tree_part)
        walk, field, span = _THRESHOLD_BASIS[api]
        counts = [k for k in KS[api] if k <= span and k in results[api]]
        if len(counts) < 2:
            continue
        per_event = _walk_cost(results[api], counts, walk, field)
        at, reread = _reread_ms(results[api], counts, field)
        if reread is None or per_event <= 0:
            continue
        even = max(1.0, reread / per_event)
        said.append(
            'Re-read or walk on %s%s: walking costs %.3f ms per missed '
            'event, a re-read of the %d-key tree %.1f ms (etcdwatch at '
            'K=%d), so a walk is cheaper up to about %.0f events '
            '(tree/%.1f).  etcdwatch re-reads past max(CATCHUP_MIN_LAG=%d, '
            'tree/CATCHUP_TREE_FRACTION=%d) = %d events: %s' % (
                apis.TITLES[api], '' if field == 'seconds' else
                ', counted from etcd\'s first events (to within a '
                'millisecond or two)', per_event, TREE_SIZE, reread, at, even,
                TREE_SIZE / even, min_lag, tree_part, threshold,
                _verdict(api, threshold, even, results[api], counts)))
    return said


def _verdict(api, threshold, even, by_count, counts):
    walk, field, span = _THRESHOLD_BASIS[api]
    compared = []
    for count in counts:
        trials = by_count[count]
        compared.append('K=%d: etcdwatch %s in %s, the walk %s' % (
            count, {'yes': 're-read', 'no': 'walked'}.get(
                _all(trials, 'etcdwatch', 'resynced'), 'sometimes re-read'),
            _ms(_median_of(trials, 'etcdwatch', field)),
            _ms(_median_of(trials, walk, field))))
    if threshold / _TOLERANCE <= even <= threshold * _TOLERANCE:
        verdict = ('about right here (within %dx of the break-even, where '
                   'both cost about the same)' % _TOLERANCE)
    elif even > threshold:
        suggest = min(even, span)
        verdict = ('too early here: it re-reads where a walk is cheaper, '
                   'by about %.0fx in lag; a threshold near %.0f events '
                   '(tree/%.1f) fits these figures%s' % (
                       even / threshold, suggest, TREE_SIZE / suggest,
                       '' if suggest == even else ', as a walk of more '
                       'than %d events waits for more of etcd\'s rounds '
                       '(below)' % span))
    else:
        verdict = ('too late here: it walks where a re-read is cheaper, by '
                   'about %.0fx in lag' % (threshold / even))
    return '%s.  Medians: %s.' % (verdict, '; '.join(compared))


def _ms(seconds):
    """Milliseconds for the text; under 1 ms is within the noise."""
    return '%.1f ms' % (seconds * 1e3) if seconds >= 1e-3 else 'under 1 ms'


def findings(results):
    """Sentences the figures support, for the page."""
    trials = [(api, t) for api in _apis(results)
              for count in KS[api] for t in results[api][count]]
    said = ['Every follower ended up holding etcd\'s state in every trial: '
            '%s.' % ('yes' if all(t[i]['correct'] for api, t in trials
                                  for i in IMPLS[api]) else 'NO')]
    for api in _apis(results):
        mine = [t for a, t in trials if a == api]
        said.append(
            'The change watcher on %s reported exactly the net changes '
            '(adds, changed values, deletes; never a rewrite of the same '
            'value) in %s of %d trials%s.' % (
                api, _count(mine, 'etcdwatch', 'exact'), len(mine),
                '; the seed\'s in %s (it reports every watch event, '
                'rewrites of the same value included)' % _count(
                    mine, 'seed', 'exact') if api == apis.V2 else
                '; the one that never re-reads in %s (a walk reports each '
                'change it passes: a key changed twice among the K events, '
                'twice)' % _count(mine, 'walk', 'exact')))
    return said


def v3_findings(results):
    """What the figures say about v3, for the page's v3 section."""
    said = threshold_findings(results)
    if apis.V3 in results and 5000 in results[apis.V3]:
        trials = results[apis.V3][5000]
        said.append(
            'A v3 stream that starts at a past revision gets it from etcd\'s '
            'loop for unsynced watchers: the first events 0-100 ms after it '
            'opens (median %.0f ms here), then at most 1000 revisions per '
            '100 ms round.  So walking 5000 missed events took %.0f ms '
            '(bare etcd3gw %.0f ms), where etcdwatch, re-reading, took '
            '%.0f ms; and every follower, walking or not, waits for that '
            'first round.' % (
                common.median([t[i]['first'] for t in trials
                               for i in IMPLS[apis.V3]]) * 1e3,
                _median_of(trials, 'walk', 'seconds') * 1e3,
                _median_of(trials, 'bare', 'seconds') * 1e3,
                _median_of(trials, 'etcdwatch', 'seconds') * 1e3))
    return said
