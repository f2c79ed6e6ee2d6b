"""The asyncio watchers on a real etcd (v3 gateway through httpx)."""

import asyncio
import time

import pytest

from etcdwatch.aio import client as aio_client
from etcdwatch.aio import watcher as aio_watcher
from tests import drivers

pytestmark = pytest.mark.asyncio

TIMEOUT = 30


def async_client(server):
    return aio_client.AsyncEtcd3Client(['%s:%d' % (server.host, server.port)],
                                       timeout=5)


class Recorder(aio_watcher.AsyncEtcdChangeWatcher):
    """Keeps what it was told; ``seen`` wakes waiters on each report."""

    def __init__(self, *args, **kwargs):
        self.reports = []
        self.state = {}
        self.seen = asyncio.Event()
        super().__init__(*args, **kwargs)

    async def added(self, short_key, value):
        await asyncio.sleep(0)      # a real await inside the callback
        self.reports.append(('put', short_key, value))
        self.state[short_key] = value
        self.seen.set()

    async def removed(self, short_key):
        self.reports.append(('delete', short_key))
        self.state.pop(short_key, None)
        self.seen.set()


async def until(predicate, timeout=TIMEOUT):
    """Wait (on the loop, not blocking it) until ``predicate()``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, 'timed out'
        await asyncio.sleep(0.02)


def etcd_state(sync_client, prefix):
    found = {}
    for value, meta in sync_client.get_prefix(prefix + '/'):
        key = meta['key'].decode()[len(prefix) + 1:]
        found[key] = value.decode()
    return found


async def test_loads_then_follows_every_change(etcd_v3_server, etcd3_client,
                                               etcd_prefix):
    etcd3_client.put(etcd_prefix + '/a', '1')
    etcd3_client.put(etcd_prefix + '/b', '2')
    client = async_client(etcd_v3_server)
    w = Recorder(client, 'rec', etcd_prefix, heartbeat=5)
    assert w.etcd_data is None          # the constructor did no I/O
    async with w:
        assert await w.wait_synced(TIMEOUT)
        assert w.state == {'a': '1', 'b': '2'}
        await asyncio.to_thread(etcd3_client.put, etcd_prefix + '/c', '3')
        await asyncio.to_thread(etcd3_client.put, etcd_prefix + '/a', '1')
        await asyncio.to_thread(etcd3_client.delete, etcd_prefix + '/b')
        await asyncio.to_thread(etcd3_client.put, etcd_prefix + '/a', '4')
        await until(lambda: w.state == etcd_state(etcd3_client,
                                                  etcd_prefix))
    assert w.state == {'a': '4', 'c': '3'}
    # Exactly one report per real change: the rewrite of a=1 is none.
    assert w.reports == [('put', 'a', '1'), ('put', 'b', '2'),
                         ('put', 'c', '3'), ('delete', 'b'),
                         ('put', 'a', '4')]
    assert w.stats()['events'] == 4
    await client.aclose()


async def test_a_failing_callback_is_retried_in_order(etcd_v3_server,
                                                      etcd3_client,
                                                      etcd_prefix):
    client = async_client(etcd_v3_server)

    class Flaky(Recorder):
        CALLBACK_RETRY_MIN = 0.01
        failures = 2

        async def added(self, short_key, value):
            if short_key == 'x' and self.failures:
                self.failures -= 1
                raise RuntimeError('not yet')
            await super().added(short_key, value)

    w = Flaky(client, 'flaky', etcd_prefix, heartbeat=5)
    async with w:
        assert await w.wait_synced(TIMEOUT)
        for key in 'xyz':
            await asyncio.to_thread(etcd3_client.put,
                                    etcd_prefix + '/' + key, key)
        await until(lambda: len(w.reports) == 3)
    assert [r[1] for r in w.reports] == ['x', 'y', 'z']
    assert w.stats()['callback_errors'] == 2
    await client.aclose()


async def test_aclose_interrupts_a_quiet_watch(etcd_v3_server, etcd_prefix):
    client = async_client(etcd_v3_server)
    w = Recorder(client, 'quiet', etcd_prefix, heartbeat=60)
    w.start()
    assert await w.wait_synced(TIMEOUT)
    await until(lambda: w._in_backend)
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(w.aclose(), TIMEOUT)
    # Not a heartbeat (60 s): the wait on etcd was cancelled.
    assert asyncio.get_running_loop().time() - started < 30
    assert w._task.done() and not w._task.cancelled()
    await client.aclose()


async def test_history_gone_rereads_and_reports_the_net_change(
        etcd_v3_server, etcd3_client, etcd_prefix):
    client = async_client(etcd_v3_server)
    etcd3_client.put(etcd_prefix + '/keep', 'k')
    etcd3_client.put(etcd_prefix + '/gone', 'g')
    w = Recorder(client, 'compacted', etcd_prefix, heartbeat=5)
    await w.refresh_all_data()
    assert w.state == {'keep': 'k', 'gone': 'g'}
    # Behind the watcher's back: changes, then history compacted away.
    etcd3_client.delete(etcd_prefix + '/gone')
    etcd3_client.put(etcd_prefix + '/new', 'n')
    etcd3_client.put(etcd_prefix + '/keep', 'k')
    revision = int(etcd3_client.status()['header']['revision'])
    etcd3_client.post(etcd3_client.get_url('/kv/compaction'),
                      json={'revision': revision, 'physical': True})
    del w.reports[:]
    async with w:
        await until(lambda: w.state == etcd_state(etcd3_client,
                                                  etcd_prefix))
        await until(lambda: w.stats()['resyncs'] >= 2)
    assert sorted(w.reports) == [('delete', 'gone'), ('put', 'new', 'n')]
    await client.aclose()


async def test_watch_prefix_yields_adds_then_resync_then_changes(
        etcd_v3_server, etcd3_client, etcd_prefix):
    from etcdwatch import aio
    etcd3_client.put(etcd_prefix + '/a', '1')
    client = async_client(etcd_v3_server)
    changes = aio.watch_prefix(client, etcd_prefix, heartbeat=5)
    assert await anext(changes) == aio.Change('add', 'a', '1')
    # The iterator reads nothing until asked: history compacted past
    # where it stands now makes it re-read, and say so.
    etcd3_client.put(etcd_prefix + '/b', 'x')
    etcd3_client.delete(etcd_prefix + '/a')
    revision = int(etcd3_client.status()['header']['revision'])
    etcd3_client.post(etcd3_client.get_url('/kv/compaction'),
                      json={'revision': revision, 'physical': True})
    assert await asyncio.wait_for(anext(changes), TIMEOUT) is aio.RESYNC
    net = [await asyncio.wait_for(anext(changes), TIMEOUT)
           for _ in range(2)]
    assert net == [('delete', 'a', None), ('add', 'b', 'x')]
    # Then live changes; a rewrite with the same value is none.
    await asyncio.to_thread(etcd3_client.put, etcd_prefix + '/b', 'x')
    await asyncio.to_thread(etcd3_client.put, etcd_prefix + '/b', 'y')
    assert await asyncio.wait_for(anext(changes), TIMEOUT) == aio.Change(
        'change', 'b', 'y')
    await changes.aclose()
    await client.aclose()


async def test_etcd_paused_longer_than_the_heartbeat(fresh_etcd_v3_server,
                                                     etcd_prefix):
    """The silent watch is checked, given up, and caught up after."""
    server, heartbeat = fresh_etcd_v3_server, 2
    writer = drivers.v3_client(server)
    writer.put(etcd_prefix + '/a', '1')
    client = async_client(server)
    w = Recorder(client, 'paused', etcd_prefix, heartbeat=heartbeat)
    w.DANGER_PAUSE = 0.5
    async with w:
        assert await w.wait_synced(TIMEOUT)
        server.pause()
        paused_at = time.monotonic()
        try:
            await until(lambda: w.stats()['errors'] >= 1,
                        timeout=heartbeat + 5 + 5)
            gave_up = time.monotonic() - paused_at
        finally:
            server.resume()
        await asyncio.to_thread(writer.put, etcd_prefix + '/b', '2')
        await asyncio.to_thread(writer.delete, etcd_prefix + '/a')
        await until(lambda: w.state == etcd_state(writer, etcd_prefix))
    print('\nasyncio: watch gave up %.1f s into the pause (heartbeat %s s)'
          % (gave_up, heartbeat))
    assert gave_up < heartbeat + 5
    assert w.state == {'b': '2'}
    await client.aclose()


async def test_an_elected_watcher_stopped_mid_callback(etcd_v3_server,
                                                       etcd3_client,
                                                       etcd_prefix):
    """The next leader's first callback starts after the old one returns."""
    log = []

    class Timed(aio_watcher.AsyncEtcdWatcher):
        def __init__(self, *args, **kwargs):
            self.slow_started = asyncio.Event()
            super().__init__(*args, **kwargs)

        async def do_all_work(self):
            await self.do_work('all', None, None)

        async def do_work(self, action, key, value):
            start = time.monotonic()
            if key is not None and key.endswith('/slow'):
                self.slow_started.set()
                await asyncio.sleep(1.5)        # the user's work
            log.append((id(self), start, time.monotonic()))

    etcd3_client.put(etcd_prefix + '/data/a', '1')
    client = async_client(etcd_v3_server)
    args = dict(election_path=etcd_prefix + '/e', wait_until_elected=True,
                heartbeat=1, recovery_time=1)
    a = Timed(client, 'svc', etcd_prefix + '/data', **args).start()
    await until(lambda: a.synced)
    b = Timed(client, 'svc', etcd_prefix + '/data', **args).start()
    await asyncio.to_thread(etcd3_client.put, etcd_prefix + '/data/slow', '1')
    await asyncio.wait_for(a.slow_started.wait(), TIMEOUT)
    asked = time.monotonic()
    a.stop()
    took = time.monotonic() - asked
    await until(lambda: any(who == id(b) for who, _s, _e in log))
    await a.aclose()
    await b.aclose()
    a_end = max(end for who, _s, end in log if who == id(a))
    b_start = min(start for who, start, _e in log if who == id(b))
    print('\nasyncio: stop() returned in %.3f s; the next leader\'s first '
          'callback started %.2f s after the old one returned'
          % (took, b_start - a_end))
    assert took < 0.1
    assert b_start > a_end
    await client.aclose()
