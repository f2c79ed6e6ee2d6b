"""etcdwatch.metrics and etcdwatch.registry on the in-memory fakes.

The collector is tested by scraping its text output, as Prometheus would
(``generate_latest``, parsed back with prometheus-client's own parser).
The same on a real etcd: tests/functional/test_metrics.py.
"""

import asyncio
import gc
import subprocess
import sys
import textwrap
import threading
import uuid

import prometheus_client
from prometheus_client import parser
import pytest

import etcdwatch
from etcdwatch import aio
from etcdwatch import metrics
from etcdwatch import registry
from etcdwatch.testing import fake_v3
from etcdwatch.testing import FakeEtcdClient
from tests.helpers import wait_until

TIMEOUT = 10


def unique(prefix):
    return '%s-%s' % (prefix, uuid.uuid4().hex[:8])


def scrape(collector):
    """{(metric sample name, frozenset of labels): value} of one scrape."""
    reg = prometheus_client.CollectorRegistry()
    reg.register(collector)
    text = prometheus_client.generate_latest(reg).decode()
    samples = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, 'sample repeated: %r' % (key,)
            samples[key] = sample.value
    return samples


def value(samples, metric, **labels):
    return samples.get((metric, frozenset(labels.items())))


class Recorder(etcdwatch.EtcdChangeWatcher):
    def __init__(self, *args, **kwargs):
        self.seen = []
        self.fail = False
        super().__init__(*args, **kwargs)

    def added(self, key, value):
        if self.fail:
            raise RuntimeError('callback fails (test)')
        self.seen.append(key)

    def removed(self, key):
        self.seen.append(key)


@pytest.fixture
def client():
    return FakeEtcdClient()


@pytest.fixture
def stopping():
    """Recipes to stop after the test."""
    recipes = []
    yield recipes
    for recipe in recipes:
        if isinstance(recipe, etcdwatch.EtcdElection):
            recipe.clean()
        else:
            assert recipe.close(TIMEOUT)


# -- the registry ------------------------------------------------------------

def test_registry_lists_live_recipes_oldest_first_and_forgets_collected(
        client):
    first = Recorder(client, unique('w'), '/p')
    second = Recorder(client, unique('w'), '/p')
    election = etcdwatch.EtcdElection(client, unique('e'), '/el',
                                      work_time=5)
    watchers = [w for w in registry.watchers() if w in (first, second)]
    assert watchers == [first, second]
    assert [e for e in registry.elections() if e is election] == [election]
    name = first.name
    del first, watchers
    gc.collect()
    assert name not in [w.name for w in registry.watchers()]
    assert second in registry.watchers()


def test_registry_does_not_hash_or_compare_recipes(client):
    class Unhashable(Recorder):
        def __eq__(self, other):
            raise AssertionError('compared')
        __hash__ = None     # type: ignore

    watcher = Unhashable(client, unique('w'), '/p')
    assert any(w is watcher for w in registry.watchers())


# -- scraping threaded recipes on the v2 fake ---------------------------------

def test_scrape_of_a_threaded_watcher_and_election(client, stopping):
    client.write('/p/a', '1')
    name = unique('ports')
    watcher = Recorder(client, name, '/p', heartbeat=1)
    stopping.append(watcher.start())
    election = etcdwatch.EtcdElection(client, name, '/el', work_time=5)
    stopping.append(election)
    assert election.wait_until_elected(TIMEOUT)
    collector = metrics.Collector([watcher, election])
    wl = dict(name=name, prefix='/p', kind='Recorder')
    el = dict(name=name, key='/el/master_' + name, kind='EtcdElection')

    samples = scrape(collector)
    assert value(samples, 'etcdwatch_election_leader', **el) == 1
    assert value(samples, 'etcdwatch_election_terms_won_total', **el) == 1
    assert value(samples, 'etcdwatch_election_terms_lost_total', **el) == 0
    assert value(samples, 'etcdwatch_election_fencing_token', **el) == \
        election.stats()['term']
    assert value(samples, 'etcdwatch_election_seconds_since_contact',
                 **el) >= 0
    assert value(samples, 'etcdwatch_election_outage', **el) == 0
    assert value(samples, 'etcdwatch_watcher_resyncs_total', **wl) == 1
    assert value(samples, 'etcdwatch_watcher_synced', **wl) == 1
    assert value(samples, 'etcdwatch_watcher_outage', **wl) == 0

    client.write('/p/b', '2')
    last = client.write('/p/c', '3').modifiedIndex
    wait_until(lambda: watcher.seen == ['a', 'b', 'c'])
    samples = scrape(collector)
    assert value(samples, 'etcdwatch_watcher_events_total', **wl) == 2
    # The election's renewals (outside /p) move etcd's index too.
    assert value(samples, 'etcdwatch_watcher_index', **wl) == last
    assert value(samples, 'etcdwatch_watcher_etcd_index', **wl) >= last
    assert value(samples, 'etcdwatch_watcher_lag', **wl) == value(
        samples, 'etcdwatch_watcher_etcd_index', **wl) - last
    assert value(samples,
                 'etcdwatch_watcher_last_event_timestamp_seconds',
                 **wl) > 0

    watcher.fail = True
    client.write('/p/d', '4')
    wait_until(lambda: value(scrape(collector),
                             'etcdwatch_watcher_callback_errors_total',
                             **wl) >= 1)
    assert value(scrape(collector), 'etcdwatch_watcher_pending', **wl) == 1
    watcher.fail = False
    wait_until(lambda: 'd' in watcher.seen)

    election.resign()
    samples = scrape(collector)
    assert value(samples, 'etcdwatch_election_leader', **el) == 0
    assert value(samples, 'etcdwatch_election_terms_lost_total', **el) == 1
    assert value(samples, 'etcdwatch_election_fencing_token', **el) is None


def test_default_collector_reports_every_live_recipe(client):
    name = unique('live')
    watcher = Recorder(client, name, '/p')
    election = etcdwatch.EtcdElection(client, name, '/el', work_time=5)
    samples = scrape(metrics.Collector())
    assert value(samples, 'etcdwatch_watcher_synced', name=name,
                 prefix='/p', kind='Recorder') == 1
    assert value(samples, 'etcdwatch_election_leader', name=name,
                 key='/el/master_' + name, kind='EtcdElection') == 0
    del watcher, election
    gc.collect()
    assert not [k for k in scrape(metrics.Collector())
                if ('name', name) in k[1]]


def test_same_labels_get_numbered_names_in_creation_order(client):
    name = unique('twin')
    first = Recorder(client, name, '/p')
    second = Recorder(client, name, '/p')
    client.write('/p/x', '1')
    first.do_watch()        # one event for the first only
    samples = scrape(metrics.Collector([first, second]))
    labels = dict(prefix='/p', kind='Recorder')
    assert value(samples, 'etcdwatch_watcher_events_total', name=name,
                 **labels) == 1
    assert value(samples, 'etcdwatch_watcher_events_total',
                 name=name + '#2', **labels) == 0


def test_register_is_idempotent_and_unregister_removes(client):
    reg = prometheus_client.CollectorRegistry()
    name = unique('reg')
    watcher = Recorder(client, name, '/p')
    collector = metrics.register(reg)
    assert metrics.register(reg) is collector
    text = prometheus_client.generate_latest(reg).decode()
    assert 'etcdwatch_watcher_synced{kind="Recorder",name="%s",' \
           'prefix="/p"} 1.0' % name in text
    assert metrics.unregister(reg)
    assert not metrics.unregister(reg)
    assert b'etcdwatch_' not in prometheus_client.generate_latest(reg)
    del watcher


def test_register_defaults_to_the_global_registry():
    try:
        collector = metrics.register()
        assert metrics.register(prometheus_client.REGISTRY) is collector
    finally:
        assert metrics.unregister()


def test_bad_arguments_are_refused_by_name(client):
    with pytest.raises(ValueError, match='registry'):
        metrics.register(registry=object())
    for bad in ('watchers', 3, [object()]):
        with pytest.raises(ValueError, match='recipes'):
            metrics.Collector(bad)
        with pytest.raises(ValueError, match='recipes'):
            metrics.health(recipes=bad)
    for bad in (-1, 'x', None, float('nan'), float('inf'), True):
        with pytest.raises(ValueError, match='max_silence'):
            metrics.health(max_silence=bad)
    for bad in (-1, 'x', float('nan')):
        with pytest.raises(ValueError, match='max_lag'):
            metrics.health(max_lag=bad)


# -- health -------------------------------------------------------------------

def test_health_of_nothing_is_ok():
    result = metrics.health(recipes=[])
    assert result.ok and bool(result) and result.problems == ()
    assert str(result) == 'ok'
    assert metrics.healthy(recipes=[])


def test_health_sees_an_outage_longer_than_max_silence(client, stopping):
    name = unique('out')
    watcher = Recorder(client, name, '/p', heartbeat=1)
    watcher.DANGER_PAUSE = 0.05
    stopping.append(watcher.start())
    wait_until(lambda: client.waiting_watches)
    assert metrics.health(max_silence=0, recipes=[watcher]).ok
    labels = dict(name=name, prefix='/p', kind='Recorder')
    with client.outage():
        wait_until(lambda: value(scrape(metrics.Collector([watcher])),
                                 'etcdwatch_watcher_outage', **labels))
        # Not longer than a minute: healthy still.
        assert metrics.health(max_silence=60, recipes=[watcher]).ok
        problems = wait_until(lambda: metrics.health(
            max_silence=0.05, recipes=[watcher]).problems)
        [problem] = problems
        assert problem.startswith('watcher %s (/p): etcd unreachable for '
                                  % name), problem
        assert value(scrape(metrics.Collector([watcher])),
                     'etcdwatch_watcher_outage_seconds', **labels) > 0
        result = metrics.health(max_silence=0.05, recipes=[watcher])
        assert not result.ok and not result
        assert str(result) == problem
    wait_until(lambda: metrics.health(max_silence=0, recipes=[watcher]).ok)
    assert value(scrape(metrics.Collector([watcher])),
                 'etcdwatch_watcher_outage', **labels) == 0


def test_health_sees_a_campaign_in_an_outage(client):
    name = unique('camp')
    leader = etcdwatch.EtcdElection(client, name, '/el', work_time=30)
    assert leader.wait_until_elected(TIMEOUT)
    follower = etcdwatch.EtcdElection(client, name, '/el', work_time=30,
                                      recovery_time=0.1)
    campaign = threading.Thread(target=follower.wait_until_elected,
                                args=(TIMEOUT * 3,))
    campaign.start()
    try:
        wait_until(lambda: client.waiting_watches)
        assert metrics.health(max_silence=0, recipes=[follower]).ok
        with client.outage():
            problems = wait_until(lambda: metrics.health(
                max_silence=0.05, recipes=[follower]).problems)
            assert problems[0].startswith(
                'election %s (/el/master_%s): etcd unreachable for '
                % (name, name)), problems
            el = dict(name=name, key='/el/master_' + name,
                      kind='EtcdElection')
            assert value(scrape(metrics.Collector([follower])),
                         'etcdwatch_election_outage', **el) == 1
        wait_until(lambda: metrics.health(max_silence=0,
                                          recipes=[follower]).ok)
    finally:
        follower.cancel()
        campaign.join(TIMEOUT)
        leader.clean()
    assert not campaign.is_alive()


def test_health_sees_a_watcher_behind(client):
    name = unique('behind')
    watcher = Recorder(client, name, '/p')
    # Walk the events rather than re-read when far behind.
    watcher.CATCHUP_MIN_LAG = 10 ** 6
    client.write('/p/a', '1')
    for i in range(50):
        client.write('/elsewhere/%d' % i, 'x')
    watcher.do_watch()      # the event of /p/a, with etcd 50 ahead of it
    assert watcher.stats()['lag'] == 50
    result = metrics.health(max_lag=10, recipes=[watcher])
    assert result.problems == (
        'watcher %s (/p): 50 indexes behind etcd (max_lag 10)' % name,)
    assert metrics.health(max_lag=50, recipes=[watcher]).ok
    assert metrics.health(max_lag=None, recipes=[watcher]).ok
    assert value(scrape(metrics.Collector([watcher])), 'etcdwatch_watcher_lag',
                 name=name, prefix='/p', kind='Recorder') == 50


def test_health_skips_stopped_watchers_and_unelected_followers(client):
    name = unique('follow')
    leader = etcdwatch.EtcdElection(client, name, '/el', work_time=30)
    assert leader.wait_until_elected(TIMEOUT)
    follower = Recorder(client, name, '/p', election_path='/el',
                        wait_until_elected=True, heartbeat=1,
                        recovery_time=0.2)
    follower.start()
    try:
        wait_until(lambda: client.waiting_watches)
        assert not follower.synced
        assert metrics.health(recipes=[follower]).ok
    finally:
        assert follower.close(TIMEOUT)
        leader.clean()


# -- asyncio recipes on the v3 fake -------------------------------------------

class AsyncRecorder(aio.AsyncEtcdChangeWatcher):
    def added(self, key, value):
        pass

    def removed(self, key):
        pass


@pytest.mark.asyncio
async def test_scrape_and_health_of_asyncio_recipes():
    fake = fake_v3.FakeEtcd3Server()
    writer = fake.client()
    writer.put('/q/a', '1')
    name = unique('aio')
    async with aio.AsyncEtcd3Client(
            [fake.base_url.split('//')[1]],
            transport=fake.async_httpx_transport()) as client:
        watcher = AsyncRecorder(client, name, '/q', heartbeat=1)
        election = aio.AsyncEtcdElection(client, name, '/ael', work_time=5)
        collector = metrics.Collector()     # every live recipe
        wl = dict(name=name, prefix='/q', kind='AsyncRecorder')
        el = dict(name=name, key='/ael/master_' + name,
                  kind='AsyncEtcdElection')
        # Built, not started: not synced.
        result = metrics.health(recipes=[watcher, election])
        assert result.problems == (
            'watcher %s (/q): not synced (the tree is not loaded and '
            'delivered yet)' % name,)
        async with watcher:
            assert await watcher.wait_synced(TIMEOUT)
            assert await election.campaign(TIMEOUT)
            writer.put('/q/b', '2')
            loop = asyncio.get_running_loop()
            deadline = loop.time() + TIMEOUT
            while watcher.stats()['events'] < 1:
                assert loop.time() < deadline
                await asyncio.sleep(0.01)
            # A scrape from another thread, as an HTTP server's would be.
            samples = await asyncio.to_thread(scrape, collector)
            assert value(samples, 'etcdwatch_election_leader', **el) == 1
            assert value(samples, 'etcdwatch_election_terms_won_total',
                         **el) == 1
            assert value(samples, 'etcdwatch_watcher_events_total',
                         **wl) == 1
            assert value(samples, 'etcdwatch_watcher_resyncs_total',
                         **wl) == 1
            assert value(samples, 'etcdwatch_watcher_lag', **wl) == 0
            assert metrics.health(recipes=[watcher, election]).ok
            await election.resign()
        assert value(scrape(collector), 'etcdwatch_election_leader',
                     **el) == 0
        await election.aclose()
        # A stopped watcher is not looked at: not synced, but stopped.
        idle = AsyncRecorder(client, unique('idle'), '/q')
        assert not metrics.health(recipes=[idle]).ok
        idle.stop()
        assert metrics.health(recipes=[idle]).ok


# -- prometheus-client stays optional -----------------------------------------

def test_only_the_metrics_module_needs_prometheus_client():
    code = textwrap.dedent('''
        import sys
        sys.modules['prometheus_client'] = None     # not installed
        import etcdwatch, etcdwatch.aio
        from etcdwatch import metrics
        from etcdwatch.testing import FakeEtcdClient
        assert metrics.health(recipes=[]).ok
        etcdwatch.EtcdElection(FakeEtcdClient(), 'e', '/el', work_time=5)
        assert metrics.healthy()
        try:
            metrics.register()
        except ImportError as e:
            print(e)
    ''')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert 'pip install ".[prometheus]"' in proc.stdout


def test_importing_etcdwatch_does_not_import_prometheus_client():
    code = ('import sys, etcdwatch, etcdwatch.aio, etcdwatch.metrics; '
            'print("prometheus_client" in sys.modules)')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, timeout=120)
    assert proc.stdout.strip() == 'False', proc.stderr
