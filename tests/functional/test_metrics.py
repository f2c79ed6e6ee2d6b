"""etcdwatch.metrics on a real etcd (v2 and v3 APIs; asyncio on v3).

The collector is scraped as Prometheus would (its text output, parsed
back); health() is asked while etcd is up, killed, paused, and while a
watcher is behind.  The same on the in-memory fakes:
tests/unit/test_metrics.py.
"""

import asyncio
import threading
import time

import prometheus_client
from prometheus_client import parser
import pytest

import etcdwatch
from etcdwatch.aio import client as aio_client
from etcdwatch.aio import election as aio_election
from etcdwatch.aio import watcher as aio_watcher
from etcdwatch import metrics
from tests.helpers import wait_until

TIMEOUT = 30


def scrape(recipes):
    """{(sample name, frozenset of labels): value} of one scrape."""
    reg = prometheus_client.CollectorRegistry()
    reg.register(metrics.Collector(recipes))
    text = prometheus_client.generate_latest(reg).decode()
    samples = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = \
                sample.value
    return samples


def value(samples, metric, **labels):
    return samples.get((metric, frozenset(labels.items())))


class Recorder(etcdwatch.EtcdChangeWatcher):
    def __init__(self, *args, **kwargs):
        self.seen = []
        super().__init__(*args, **kwargs)

    def added(self, key, value):
        self.seen.append(('put', key, value))

    def removed(self, key):
        self.seen.append(('delete', key))


def start(watcher):
    thread = threading.Thread(target=watcher.watch_forever, daemon=True)
    thread.start()
    return thread


def stop(watcher, thread):
    watcher.stop()
    thread.join(watcher.heartbeat + 15)
    assert not thread.is_alive()


def test_scrape_of_recipes_on_real_etcd(backend_client, etcd_prefix):
    d = backend_client
    prefix = etcd_prefix + '/ports'
    d.put(prefix + '/a', '1')
    watcher = Recorder(d.client, 'ports', prefix, heartbeat=1)
    election = etcdwatch.EtcdElection(d.client, 'leader',
                                      etcd_prefix + '/el', work_time=10)
    thread = start(watcher)
    try:
        assert election.wait_until_elected(TIMEOUT)
        d.put(prefix + '/b', '2')
        d.delete(prefix + '/a')
        wait_until(lambda: len(watcher.seen) == 3, timeout=TIMEOUT)
        samples = scrape([watcher, election])
        wl = dict(name='ports', prefix=prefix, kind='Recorder')
        el = dict(name='leader', key=etcd_prefix + '/el/master_leader',
                  kind='EtcdElection')
        assert value(samples, 'etcdwatch_election_leader', **el) == 1
        assert value(samples, 'etcdwatch_election_terms_won_total',
                     **el) == 1
        assert value(samples, 'etcdwatch_election_fencing_token', **el) == \
            election.fencing_token
        assert 0 <= value(samples, 'etcdwatch_election_seconds_since_contact',
                          **el) < 10
        assert value(samples, 'etcdwatch_election_outage', **el) == 0
        assert value(samples, 'etcdwatch_watcher_events_total', **wl) == 2
        assert value(samples, 'etcdwatch_watcher_resyncs_total', **wl) == 1
        assert value(samples, 'etcdwatch_watcher_synced', **wl) == 1
        assert value(samples, 'etcdwatch_watcher_index', **wl) == \
            watcher.stats()['index']
        # (Not >= index on v2: a v2 watch answers with etcd's index as of
        # when the watch was made, which can be below the event's.)
        assert value(samples, 'etcdwatch_watcher_etcd_index', **wl) > 0
        assert value(samples, 'etcdwatch_watcher_lag', **wl) >= 0
        assert value(samples, 'etcdwatch_watcher_outage', **wl) == 0
        assert metrics.health(recipes=[watcher, election]).ok
        election.resign()
        samples = scrape([election])
        assert value(samples, 'etcdwatch_election_leader', **el) == 0
        assert value(samples, 'etcdwatch_election_terms_lost_total',
                     **el) == 1
    finally:
        stop(watcher, thread)
        election.clean()


def test_health_sees_a_watcher_behind_on_real_etcd(backend_client,
                                                   etcd_prefix):
    d = backend_client
    prefix = etcd_prefix + '/behind'
    watcher = Recorder(d.client, 'behind', prefix, heartbeat=1)
    watcher.CATCHUP_MIN_LAG = 10 ** 6       # walk, never re-read
    try:
        d.put(prefix + '/a', '1')
        for i in range(30):
            d.put(etcd_prefix + '/elsewhere/%d' % i, 'x')
        watcher.do_watch()      # one step: the event of /a, etcd 30 ahead
        assert watcher.seen == [('put', 'a', '1')]
        lag = watcher.stats()['lag']
        assert lag >= 30
        result = metrics.health(max_lag=10, recipes=[watcher])
        assert result.problems == (
            'watcher behind (%s): %d indexes behind etcd (max_lag 10)'
            % (prefix, lag),)
        assert metrics.health(max_lag=lag, recipes=[watcher]).ok
    finally:
        watcher.stop()


@pytest.mark.parametrize('fault', ['killed', 'paused'])
def test_health_while_etcd_is_gone(fresh_backend, fault):
    d = fresh_backend
    server = d.server
    prefix = '/metrics/gone'
    d.put(prefix + '/a', '1')
    watcher = Recorder(d.client, 'gone', prefix, heartbeat=1)
    watcher.DANGER_PAUSE = 0.2
    thread = start(watcher)
    wl = dict(name='gone', prefix=prefix, kind='Recorder')
    try:
        wait_until(lambda: metrics.health(max_silence=1,
                                          recipes=[watcher]).ok)
        # Before the fault: the watcher can fail (and its outage begin)
        # before kill() or pause() has returned.
        gone_at = time.monotonic()
        if fault == 'killed':
            server.kill()
        else:
            server.pause()
        # A killed etcd refuses at once; a paused one is noticed when the
        # watch gives up (heartbeat + the client's timeout at most).
        problems = wait_until(lambda: metrics.health(
            max_silence=1, recipes=[watcher]).problems, timeout=TIMEOUT)
        noticed = time.monotonic() - gone_at
        assert problems[0].startswith(
            'watcher gone (%s): etcd unreachable for ' % prefix), problems
        assert noticed > 1
        samples = scrape([watcher])
        assert value(samples, 'etcdwatch_watcher_outage', **wl) == 1
        assert value(samples, 'etcdwatch_watcher_outage_seconds', **wl) > 1
        # Not a problem with a longer bound.
        assert metrics.health(max_silence=600, recipes=[watcher]).ok
        if fault == 'killed':
            server.start()
        else:
            server.resume()
        wait_until(lambda: metrics.health(max_silence=1,
                                          recipes=[watcher]).ok,
                   timeout=TIMEOUT)
        d.put(prefix + '/b', '2')
        wait_until(lambda: ('put', 'b', '2') in watcher.seen,
                   timeout=TIMEOUT)
        assert value(scrape([watcher]), 'etcdwatch_watcher_outage',
                     **wl) == 0
        print('\n%s, %s: health saw it after %.1fs'
              % (d.name, fault, noticed))
    finally:
        if server.is_paused:
            server.resume()
        stop(watcher, thread)


class AsyncRecorder(aio_watcher.AsyncEtcdChangeWatcher):
    def __init__(self, *args, **kwargs):
        self.seen = []
        super().__init__(*args, **kwargs)

    def added(self, key, value):
        self.seen.append(('put', key, value))

    def removed(self, key):
        self.seen.append(('delete', key))


async def until(predicate, timeout=TIMEOUT):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, 'timed out'
        await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_scrape_of_asyncio_recipes_on_real_etcd(etcd3_client,
                                                      etcd_v3_server,
                                                      etcd_prefix):
    prefix = etcd_prefix + '/aio'
    etcd3_client.put(prefix + '/a', '1')
    async with aio_client.AsyncEtcd3Client(
            ['%s:%d' % (etcd_v3_server.host, etcd_v3_server.port)],
            timeout=5) as client:
        watcher = AsyncRecorder(client, 'aports', prefix, heartbeat=1)
        election = aio_election.AsyncEtcdElection(
            client, 'aleader', etcd_prefix + '/el', work_time=10)
        wl = dict(name='aports', prefix=prefix, kind='AsyncRecorder')
        el = dict(name='aleader', key=etcd_prefix + '/el/master_aleader',
                  kind='AsyncEtcdElection')
        async with watcher:
            assert await watcher.wait_synced(TIMEOUT)
            assert await election.campaign(TIMEOUT)
            etcd3_client.put(prefix + '/b', '2')
            await until(lambda: len(watcher.seen) == 2)
            # Scraped from another thread, as an HTTP server would.
            samples = await asyncio.to_thread(scrape, [watcher, election])
            assert value(samples, 'etcdwatch_election_leader', **el) == 1
            assert value(samples, 'etcdwatch_election_terms_won_total',
                         **el) == 1
            assert value(samples, 'etcdwatch_watcher_events_total',
                         **wl) == 1
            assert value(samples, 'etcdwatch_watcher_synced', **wl) == 1
            assert value(samples, 'etcdwatch_watcher_outage', **wl) == 0
            assert await asyncio.to_thread(
                metrics.healthy, 30, 1000, [watcher, election])
            await election.resign()
            assert value(scrape([election]), 'etcdwatch_election_leader',
                         **el) == 0
        await election.aclose()
