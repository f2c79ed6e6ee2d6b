"""The asyncio v3 backend (AsyncV3Backend, AsyncEtcd3Client) on real etcd.

The contract cases of the sync backend (tests/functional/test_v3.py), on
etcd 3.5 started by the tests with v2 disabled: leases that a sync and an
async elector share, events of one revision, a stream kept open across
calls, compaction, a wiped etcd, failover, a member without a leader,
TLS, a paused etcd, cancellation and many streams on one client.  No test
sleeps for a fixed time: each waits for a condition, and every test
awaits the backend.
"""

import asyncio

import etcd3gw.exceptions
import pytest

from etcdwatch.aio.client import AsyncEtcd3Client
from etcdwatch import backends
from etcdwatch.backends import base
from etcdwatch.backends.v3_async import AsyncV3Backend
from etcdwatch import exceptions
from etcdwatch.testing.server import EtcdCluster
from etcdwatch.testing.server import EtcdServer
from etcdwatch.testing.server import make_tls_files
from tests import drivers
from tests.functional.test_v3 import etcd_watchers
from tests.functional.test_v3 import key_lease
from tests.functional.test_v3 import lease_ttl

pytestmark = pytest.mark.asyncio

# Generous: a 2-core machine shared with other test runs.
WAIT = 30
# How much later than its timeout a call may return.
SLACK = 1.5


def aclient(*servers, **kwargs):
    kwargs.setdefault('timeout', 10)
    return AsyncEtcd3Client(['%s:%d' % (s.host, s.port) for s in servers],
                            **kwargs)


async def until(predicate, timeout=WAIT, interval=0.02):
    """Call (and await, if need be) ``predicate()`` until it is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        assert loop.time() < deadline, 'condition not met in time'
        await asyncio.sleep(interval)


async def timed(call):
    loop = asyncio.get_running_loop()
    began = loop.time()
    result = await call
    return result, loop.time() - began


def count_opens(client):
    """Streams ``client`` opens from now on (a list that grows)."""
    opens, original = [], client.open_stream

    async def counting(*args, **kwargs):
        stream = await original(*args, **kwargs)
        if stream is not None:
            opens.append(stream)
        return stream
    client.open_stream = counting
    return opens


def put_if_possible(writer, key, value):
    try:
        writer.put(key, value)
    except etcd3gw.exceptions.Etcd3Exception:
        return False
    return True


async def watch_until(be, path, index, error=exceptions.EtcdUnavailable):
    """Watch until an event comes, letting ``error`` pass meanwhile."""
    async def event():
        try:
            return await be.watch_tree(path, index, 1)
        except error:
            return None
    return await until(event)


# -- leases, shared with the sync backend -------------------------------------

async def test_election_keys_are_shared_with_the_sync_backend(
        etcd_v3_server, etcd3_client, etcd_prefix):
    c, key = etcd3_client, etcd_prefix + '/el/master_x'
    sync = backends.for_client(drivers.v3_client(etcd_v3_server))
    async with aclient(etcd_v3_server) as client:
        be = backends.for_async_client(client)
        assert isinstance(be, AsyncV3Backend)
        token = await be.create(key, 'me', 3)
        assert token and sync.read_key(key)[0].created_index == token
        lease = key_lease(c, key)
        assert lease_ttl(c, lease) == 3
        # A refresh up to the lease's TTL keeps it and leaves the key be.
        revision = (await be.read_key(key))[0].modified_index
        assert await be.refresh(key, 'me', 2)
        assert await be.refresh(key, 'me', 3)
        assert key_lease(c, key) == lease
        assert (await be.read_key(key))[0].modified_index == revision
        # A longer one moves the key to a new lease of that TTL, once.
        assert await be.refresh(key, 'me', 7)
        moved = key_lease(c, key)
        assert moved != lease and lease_ttl(c, moved) == 7
        assert lease_ttl(c, lease) == -1
        # The sync backend renews the async one's key, and back.
        assert sync.create(key, 'other', 3) is None
        assert sync.refresh(key, 'me', 7) and key_lease(c, key) == moved
        assert not sync.refresh(key, 'other', 7)
        assert sync.delete_if(key, 'me')
        assert lease_ttl(c, moved) == -1
        assert await be.refresh(key, 'me', 7) is False
        assert sync.create(key, 'sync', 5)
        assert await be.create(key, 'me', 5) is None
        assert await be.refresh(key, 'sync', 5)
        assert await be.delete_if(key, 'sync')
        assert sync.read_key(key)[0] is None


async def test_refresh_after_the_lease_expired_is_false(etcd3_client,
                                                        etcd_v3_server,
                                                        etcd_prefix):
    key = etcd_prefix + '/el/master_x'
    async with aclient(etcd_v3_server) as client:
        be = AsyncV3Backend(client)
        assert await be.create(key, 'me', 1)

        async def gone():
            return (await be.read_key(key))[0] is None
        await until(gone)
        assert await be.refresh(key, 'me', 1) is False
        assert await be.create(key, 'other', 1)


# -- reads and watches --------------------------------------------------------

async def test_text_and_events_of_one_revision(etcd_v3_server, etcd3_client,
                                               etcd_prefix):
    d, p = drivers.V3Driver(None, etcd3_client), etcd_prefix
    etcd3_client.put((p + '/raw').encode(), b'\xff\xfe')
    async with aclient(etcd_v3_server) as client:
        be = AsyncV3Backend(client)
        snapshot = await be.read_tree(p)
        raw = snapshot.items[p + '/raw']
        assert raw.encode('utf-8', 'surrogateescape') == b'\xff\xfe'
        start = snapshot.index
        d.put_many({p + '/a': '1', p + '/b': 'żółw', p + '/c': '3'})
        d.delete_prefix(p)
        got, index = [], start + 1
        for _ in range(7):
            event = await be.watch_tree(p, index, WAIT)
            got.append((event.kind, event.key, event.value))
            index = event.index + 1
        assert got == [('put', p + '/a', '1'), ('put', p + '/b', 'żółw'),
                       ('put', p + '/c', '3'), ('delete', p + '/a', None),
                       ('delete', p + '/b', None),
                       ('delete', p + '/c', None),
                       ('delete', p + '/raw', None)]
        # Asking from an index already given replays from there.
        assert (await be.watch_tree(p, start + 1, WAIT)).key == p + '/a'
        assert (await be.watch_key(p + '/b', start + 1, WAIT)).value == (
            'żółw')
        await be.aclose()
        assert be.open_streams() == 0


async def test_a_stream_is_kept_open_across_calls(fresh_etcd_v3_server):
    server = fresh_etcd_v3_server
    writer = drivers.v3_client(server)
    watches = etcd_watchers(server)
    async with aclient(server) as client:
        be = AsyncV3Backend(client)
        opens = count_opens(client)
        start = (await be.read_tree('/w')).index
        for _ in range(3):
            result, took = await timed(be.watch_tree('/w', start + 1, 1))
            assert result is None and 0.9 <= took <= 1 + SLACK, took
        assert len(opens) == 1 and be.open_streams() == 1
        assert etcd_watchers(server) == watches + 1
        index = start + 1
        for i in range(3):
            writer.put('/w/k', str(i))
            event = await be.watch_tree('/w', index, WAIT)
            assert (event.key, event.value) == ('/w/k', str(i))
            index = event.index + 1
        assert len(opens) == 1
        await be.aclose()
        assert be.open_streams() == 0
        await until(lambda: etcd_watchers(server) == watches)
        # Usable after aclose: the next call opens a stream again.
        writer.put('/w/k', 'again')
        assert (await be.watch_tree('/w', index, WAIT)).value == 'again'
        assert len(opens) == 2


async def test_history_gone_after_compaction(etcd_v3_server, etcd3_client,
                                             etcd_prefix):
    d, p = drivers.V3Driver(None, etcd3_client), etcd_prefix
    async with aclient(etcd_v3_server) as client:
        be = AsyncV3Backend(client)
        start = (await be.read_tree(p)).index
        d.put(p + '/a', '1')
        d.put(p + '/a', '2')
        drivers.compact(etcd3_client)
        with pytest.raises(exceptions.HistoryGone):
            await be.watch_tree(p, start + 1, WAIT)
        assert be.open_streams() == 0
        with pytest.raises(exceptions.HistoryGone):
            await be.watch_key(p + '/a', start + 1, WAIT)
        snapshot = await be.read_tree(p)
        d.put(p + '/b', '3')
        event = await be.watch_tree(p, snapshot.index + 1, WAIT)
        assert (event.key, event.value) == (p + '/b', '3')


# -- faults -------------------------------------------------------------------

async def test_a_wiped_etcd_is_a_rewound_cluster(fresh_etcd_v3_server):
    server = fresh_etcd_v3_server
    writer = drivers.v3_client(server)
    for i in range(30):
        writer.put('/r/k%d' % i, str(i))
    async with aclient(server) as client:
        be = AsyncV3Backend(client)
        snapshot = await be.read_tree('/r')
        assert len(snapshot.items) == 30
        # Asked from far ahead: "created" at a revision below.
        with pytest.raises(exceptions.ClusterRewound) as info:
            await be.watch_key('/r/k0', snapshot.index + 500, WAIT)
        assert info.value.current_index == snapshot.index
        assert await be.watch_tree('/r', snapshot.index + 1, 0.2) is None
        server.wipe()
        drivers.v3_client(server).put('/r/new', 'x')

        async def rewound():
            try:
                await be.watch_tree('/r', snapshot.index + 1, 1)
            except exceptions.ClusterRewound:
                return True
            except exceptions.EtcdUnavailable:
                return False
            raise AssertionError('a wiped etcd went unnoticed')
        await until(rewound)
        assert be.open_streams() == 0
        with pytest.raises(exceptions.ClusterRewound):
            await be.check_current('/r', snapshot.index)
        fresh = await be.read_tree('/r')
        assert fresh.items == {'/r/new': 'x'}
        assert await be.check_current('/r', fresh.index) == fresh.index
        assert await be.watch_tree('/r', fresh.index + 1, 0.2) is None


async def test_failover_and_a_member_without_leader():
    with EtcdCluster(size=3, enable_v2=False) as cluster:
        first, second, third = (cluster.member(i) for i in range(3))
        writer = drivers.v3_client(third)
        async with aclient(first, second, timeout=WAIT) as client:
            be = AsyncV3Backend(client)
            start = (await be.read_tree('/n')).index
            assert await be.watch_tree('/n', start + 1, 0.2) is None
            first.kill()
            # Through the third member, once a leader is elected again
            # (the first may have been the raft leader).
            await until(lambda: put_if_possible(writer, '/n/a', '1'))
            # The stream on the first member breaks; the watch goes on on
            # the second, from where it stood.
            event = await watch_until(be, '/n', start + 1)
            assert (event.key, event.value) == ('/n/a', '1')
            assert client.base_url == second.client_url
            assert (await be.read_key('/n/a'))[0].value == '1'
            # The second member loses its quorum: etcd cancels the stream
            # ("no leader", thanks to hasleader) and the client moves on.
            third.kill()
            with pytest.raises(exceptions.EtcdUnavailable,
                               match='no leader'):
                await until(lambda: be.watch_tree('/n', event.index + 1, 1))
            assert client.base_url == first.client_url
            # A new watch there: refused at once.
            client.failover()
            assert client.base_url == second.client_url
            result, took = await timed(_raises(
                be.watch_tree('/n', event.index + 1, WAIT)))
            assert 'no leader' in str(result) and took < 5
            assert client.base_url == first.client_url
            # And the quorum read proves nothing, within CHECK_TIMEOUT.
            client.failover()
            result, took = await timed(_raises(
                be.check_current('/n', start)))
            assert isinstance(result, exceptions.EtcdUnavailable)
            assert took <= base.CHECK_TIMEOUT + SLACK


async def _raises(call):
    try:
        await call
    except exceptions.BackendError as e:
        return e
    raise AssertionError('no error')


async def test_a_paused_etcd_bounds_every_call(fresh_etcd_v3_server):
    server = fresh_etcd_v3_server
    async with aclient(server, timeout=1) as client:
        be = AsyncV3Backend(client)
        start = (await be.read_tree('/w')).index
        assert await be.watch_tree('/w', start + 1, 0.2) is None
        server.pause()
        try:
            # The stream etcd answered before: quiet, as on v2.
            result, took = await timed(be.watch_tree('/w', start + 1, 1))
            assert result is None and took <= 1 + SLACK, took
            # Every request, and a new watch: unavailable in time.
            for call in (be.read_key('/w/a'), be.check_current('/w', start),
                         be.create('/e/k', 'me', 5),
                         be.watch_tree('/other', start + 1, 1)):
                error, took = await timed(_raises(call))
                assert isinstance(error, exceptions.EtcdUnavailable), error
                assert took <= 1 + SLACK, (call, took)
        finally:
            server.resume()
        drivers.v3_client(server).put('/w/a', '1')
        assert (await be.watch_tree('/w', start + 1, WAIT)).key == '/w/a'
        assert (await be.read_key('/w/a'))[0].value == '1'


async def test_a_watch_cancelled_mid_wait_keeps_its_stream(
        fresh_etcd_v3_server):
    server = fresh_etcd_v3_server
    writer = drivers.v3_client(server)
    async with aclient(server) as client:
        be = AsyncV3Backend(client)
        opens = count_opens(client)
        start = (await be.read_tree('/c')).index
        task = asyncio.ensure_future(be.watch_tree('/c', start + 1, WAIT))
        await until(lambda: be.open_streams() == 1 and
                    etcd_watchers(server) >= 1)
        [cursor] = be._cursors.values()
        assert cursor.lock.locked() and not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not cursor.lock.locked() and be.open_streams() == 1
        writer.put('/c/a', '1')
        writer.put('/c/b', '2')
        first = await be.watch_tree('/c', start + 1, WAIT)
        second = await be.watch_tree('/c', first.index + 1, WAIT)
        assert [first.key, second.key] == ['/c/a', '/c/b']
        assert len(opens) == 1
        # aclose() wakes a watch waiting in another task; the backend
        # goes on.
        task = asyncio.ensure_future(be.watch_tree('/c', second.index + 1,
                                                   WAIT))
        await until(lambda: cursor.lock.locked())
        await be.aclose()
        result, took = await timed(task)
        assert result is None and took < 5 and be.open_streams() == 0
        writer.put('/c/c', '3')
        assert (await be.watch_tree('/c', second.index + 1, WAIT)).key == (
            '/c/c')


async def test_many_streams_on_one_client(fresh_etcd_v3_server):
    # More than httpx's default pool of 100 connections.
    server, count = fresh_etcd_v3_server, 150
    writer = drivers.v3_client(server)
    async with aclient(server) as client:
        watchers = [AsyncV3Backend(client) for _ in range(count)]
        start = (await watchers[0].read_tree('/m')).index
        waiting = asyncio.gather(*[
            be.watch_tree('/m/%d' % i, start + 1, WAIT)
            for i, be in enumerate(watchers)])
        await until(lambda: etcd_watchers(server) >= count and sum(
            be.open_streams() for be in watchers) == count)
        for i in range(count):
            writer.put('/m/%d/k' % i, str(i))
        events = await waiting
        assert [(e.key, e.value) for e in events] == [
            ('/m/%d/k' % i, str(i)) for i in range(count)]
        await asyncio.gather(*[be.aclose() for be in watchers])


async def test_tls_and_client_certificates(tmp_path):
    with EtcdServer(name='tls-async', tls=True, enable_v2=False) as server:
        files = server.tls_files
        async with aclient(server, protocol='https', ca_cert=files.ca_cert,
                           cert_cert=files.client_cert,
                           cert_key=files.client_key) as client:
            be = AsyncV3Backend(client)
            start = (await be.read_tree('/t')).index
            assert await be.create('/t/k', 'me', 5) == start + 1
            event = await be.watch_tree('/t', start + 1, WAIT)
            assert (event.key, event.value) == ('/t/k', 'me')
            assert client.base_url.startswith('https://')
        other = make_tls_files(tmp_path / 'other')
        for kwargs in ({'ca_cert': files.ca_cert},          # no client cert
                       {'ca_cert': other.ca_cert,           # wrong CA
                        'cert_cert': files.client_cert,
                        'cert_key': files.client_key},
                       {}):                                 # plain http
            kwargs.setdefault('protocol', 'https' if kwargs else 'http')
            async with aclient(server, timeout=5, **kwargs) as client:
                # Refused by TLS, as the sync backend's requests are:
                # unavailable (the next member may take it).
                error = await _raises(AsyncV3Backend(client).read_key('/t/k'))
                assert isinstance(error, exceptions.EtcdUnavailable), error
