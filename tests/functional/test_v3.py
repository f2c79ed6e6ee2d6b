"""The recipes on etcd's v3 API through etcd3gw, and the v3 backend itself.

What the recipes must do on both APIs is tested once, on both, in
test_core, test_election and test_faults (the ``backend_client`` and
``fresh_backend`` fixtures).  Here: what only the v3 backend has (leases,
revisions, compaction, streams), on an etcd with v2 disabled.  No test
sleeps for a fixed time: each waits for a condition, and a check that
something does *not* happen waits for that thing, briefly.
"""

import threading
import time
import uuid

import psutil
import pytest
import requests

from etcdwatch import backends
from etcdwatch.backends import v3
from etcdwatch import EtcdElection
from etcdwatch import exceptions
from etcdwatch.testing.server import EtcdCluster
from etcdwatch.testing.server import EtcdServer
from etcdwatch import v3client
from tests import drivers
from tests.helpers import campaign_in_thread
from tests.helpers import ChangeRecorder as Recorder
from tests.helpers import converged
from tests.helpers import Runner
from tests.helpers import wait_until

# Generous: a 2-core machine shared with other test runs.
WAIT = 30
# How much later than its timeout a watch call may return.
SLACK = 1.5
POLL = 0.02


def metric(server, name):
    text = requests.get(server.client_url + '/metrics', timeout=WAIT).text
    for line in text.splitlines():
        if line.startswith(name + ' '):
            return float(line.split()[1])
    raise AssertionError('etcd has no metric %s' % name)


def etcd_watchers(server):
    """How many watches etcd holds (all clients)."""
    return metric(server, 'etcd_debugging_mvcc_watcher_total')


def lease_ttl(client, lease):
    """The granted TTL of a lease, or -1 once it is gone."""
    result = client.post(client.get_url('/kv/lease/timetolive'),
                         json={'ID': lease})
    return int(result.get('grantedTTL', -1)) if int(
        result.get('TTL', -1)) > 0 else -1


def key_lease(client, key):
    [(value, meta)] = client.get(key, metadata=True)
    return int(meta.get('lease', 0))


# -- the v3 backend --------------------------------------------------------

def test_for_client_picks_v3_for_etcd3gw(etcd3_client):
    assert isinstance(backends.for_client(etcd3_client), v3.V3Backend)


def test_election_key_lives_on_a_lease(etcd3_client, etcd_prefix):
    c, key = etcd3_client, etcd_prefix + '/el/master_x'
    be = backends.for_client(c)
    assert be.create(key, 'me', 3)
    lease = key_lease(c, key)
    assert lease_ttl(c, lease) == 3
    # A refresh up to the lease's TTL keeps it, and leaves the key alone.
    revision = be.read_key(key)[0].modified_index
    assert be.refresh(key, 'me', 2)
    assert be.refresh(key, 'me', 3)
    assert key_lease(c, key) == lease
    assert be.read_key(key)[0].modified_index == revision
    # A longer one moves the key to a new lease of that TTL, once.
    assert be.refresh(key, 'me', 7)
    moved = key_lease(c, key)
    assert moved != lease and lease_ttl(c, moved) == 7
    assert lease_ttl(c, lease) == -1
    assert be.read_key(key)[0].value == 'me'
    # A refresh through a backend that never saw the key finds its lease.
    assert backends.for_client(drivers.v3_client(c)).refresh(key, 'me', 7)
    assert key_lease(c, key) == moved
    # Deleting revokes the lease.
    assert be.delete_if(key, 'me')
    assert lease_ttl(c, moved) == -1


def test_refresh_after_the_lease_expired_is_false(etcd3_client,
                                                  etcd_prefix):
    key = etcd_prefix + '/el/master_x'
    be = backends.for_client(etcd3_client)
    assert be.create(key, 'me', 1)
    wait_until(lambda: be.read_key(key)[0] is None, timeout=WAIT,
               interval=POLL)
    assert be.refresh(key, 'me', 1) is False
    assert be.create(key, 'other', 1)


def test_events_of_one_revision_come_one_per_call(etcd3_client,
                                                  etcd_prefix):
    d, p = drivers.V3Driver(None, etcd3_client), etcd_prefix
    be = backends.for_client(etcd3_client)
    start = be.read_tree(p).index
    d.put_many({p + '/a': '1', p + '/b': '2', p + '/c': '3'})
    d.delete_prefix(p)
    got, index = [], start + 1
    for _ in range(6):
        event = be.watch_tree(p, index, WAIT)
        got.append((event.kind, event.key, event.value))
        index = event.index + 1
    assert got == [('put', p + '/a', '1'), ('put', p + '/b', '2'),
                   ('put', p + '/c', '3'), ('delete', p + '/a', None),
                   ('delete', p + '/b', None), ('delete', p + '/c', None)]
    # Asking from an index already given replays from there.
    assert be.watch_tree(p, start + 1, WAIT).key == p + '/a'
    be.close()
    assert be.open_streams() == 0
    # After the first of a revision's events, a tree read at (or after)
    # that revision supersedes the rest: none of them comes again.
    other = backends.for_client(etcd3_client)
    first = other.watch_tree(p, index - 1, WAIT)
    assert (first.kind, first.key) == ('delete', p + '/a')
    snapshot = other.read_tree(p)
    assert snapshot.items == {} and snapshot.index >= first.index
    d.put(p + '/z', 'z')
    event = other.watch_tree(p, snapshot.index + 1, WAIT)
    assert (event.kind, event.key) == ('put', p + '/z')
    other.close()


def test_a_watch_message_comes_whole_and_nothing_twice(etcd3_client,
                                                       etcd_prefix):
    d, p = drivers.V3Driver(None, etcd3_client), etcd_prefix
    be = backends.for_client(etcd3_client)
    start = be.read_tree(p).index
    d.put_many({p + '/a': '1', p + '/b': '2', p + '/c': '3'})
    for n in range(200):
        d.put(p + '/k%d' % (n % 7), str(n))
    d.delete_prefix(p)
    expected = be.read_tree(p).index
    got, index, calls = [], start + 1, 0
    while index <= expected:
        events = be.watch_tree_events(p, index, WAIT)
        calls += 1
        # A call ends at the end of a revision.
        assert events[-1].index == max(e.index for e in events)
        got += events
        index = events[-1].index + 1
    # etcd sends what it has in one message: far fewer calls than events.
    assert calls < len(got) / 10
    assert len(got) == 3 + 200 + 10
    assert [e.index for e in got] == sorted(e.index for e in got)
    assert [(e.kind, e.key) for e in got[:3]] == [
        ('put', p + '/a'), ('put', p + '/b'), ('put', p + '/c')]
    assert len({e.index for e in got[:3]}) == 1
    # The stream closed between calls: the next one starts after the
    # last revision taken, and repeats nothing.
    be.close()
    d.put(p + '/z', 'z')
    events = be.watch_tree_events(p, index, WAIT)
    assert [(e.kind, e.key) for e in events] == [('put', p + '/z')]
    be.close()


def test_text_is_utf8_with_surrogateescape(etcd3_client, etcd_prefix):
    p = etcd_prefix
    etcd3_client.put((p + '/ok').encode('utf-8'), 'żółw'.encode('utf-8'))
    etcd3_client.put((p + '/raw').encode('utf-8'), b'\xff\xfe')
    be = backends.for_client(etcd3_client)
    items = be.read_tree(p).items
    assert items[p + '/ok'] == 'żółw'
    assert items[p + '/raw'].encode('utf-8', 'surrogateescape') == (
        b'\xff\xfe')
    # What the backend writes reads back the same.
    assert be.create(p + '/ü', items[p + '/raw'], 5)
    assert etcd3_client.get((p + '/ü').encode('utf-8')) == [b'\xff\xfe']
    assert be.delete_if(p + '/ü', items[p + '/raw'])


def test_history_gone_after_compaction(etcd3_client, etcd_prefix):
    d, p = drivers.V3Driver(None, etcd3_client), etcd_prefix
    be = backends.for_client(etcd3_client)
    start = be.read_tree(p).index
    d.put(p + '/a', '1')
    d.put(p + '/a', '2')
    drivers.compact(etcd3_client)
    with pytest.raises(exceptions.HistoryGone):
        be.watch_tree(p, start + 1, WAIT)
    assert be.open_streams() == 0
    with pytest.raises(exceptions.HistoryGone):
        be.watch_key(p + '/a', start + 1, WAIT)


def test_compaction_while_behind_forces_a_resync(etcd3_client,
                                                 etcd_prefix):
    d, p = drivers.V3Driver(None, etcd3_client), etcd_prefix
    for i in range(20):
        d.put('%s/k%d' % (p, i), 'init')
    w = Recorder(etcd3_client, 'rec', p, heartbeat=1)
    loaded_at = w.tick - 1
    assert len(w.changes) == 20
    # The watcher is loaded but not watching: it falls behind, and etcd
    # forgets the history it would need.
    for i in range(300):
        d.put('%s/k%d' % (p, i % 40), str(i))
    for i in range(0, 40, 3):
        d.delete('%s/k%d' % (p, i))
    d.put_many({p + '/sub/a': 'a', p + '/sub/b': 'b'})
    d.delete_prefix(p + '/sub')
    drivers.compact(etcd3_client)
    with pytest.raises(exceptions.HistoryGone):
        backends.for_client(etcd3_client).watch_tree(p, loaded_at + 1, WAIT)
    with Runner(w):
        wait_until(lambda: converged(w, d, p), timeout=WAIT, interval=POLL)
        d.put(p + '/after', 'x')
        wait_until(lambda: converged(w, d, p), timeout=WAIT, interval=POLL)
    assert w.stats()['resyncs'] >= 2
    assert ('add', p + '/after', 'x') in w.changes


def test_watch_returns_in_time_idle_paused_and_closed(fresh_etcd_v3_server):
    server = fresh_etcd_v3_server
    be = backends.for_client(drivers.v3_client(server))
    writer = drivers.v3_client(server)
    start = be.read_tree('/w').index

    def timed(*args):
        began = time.monotonic()
        result = be.watch_tree(*args)
        return result, time.monotonic() - began

    # Idle: None after the timeout, and the stream stays open.
    result, took = timed('/w', start + 1, 1)
    assert result is None and 0.9 <= took <= 1 + SLACK, took
    assert be.open_streams() == 1
    be.close()
    # Paused with no stream yet: etcd does not answer, which is an error
    # (as on v2), raised within the call's timeout.
    server.pause()
    try:
        began = time.monotonic()
        with pytest.raises(exceptions.EtcdUnavailable):
            be.watch_tree('/w', start + 1, 1)
        took = time.monotonic() - began
        assert took <= 1 + SLACK, took
    finally:
        server.resume()
    writer.put('/w/a', '1')
    event, _ = timed('/w', start + 1, WAIT)
    assert event.key == '/w/a'
    writer.put('/w/b', '2')
    event, _ = timed('/w', event.index + 1, WAIT)
    assert event.key == '/w/b'
    # Paused with a stream open that etcd answered: quiet, as on v2.
    server.pause()
    try:
        result, took = timed('/w', event.index + 1, 1)
        assert result is None and took <= 1 + SLACK, took
    finally:
        server.resume()
    # close() from another thread ends a blocked watch at once.
    be.close()
    results = []
    thread = threading.Thread(target=lambda: results.append(
        timed('/w', event.index + 1, WAIT)))
    thread.start()
    wait_until(lambda: be.open_streams() == 1, timeout=WAIT, interval=POLL)
    be.close()
    thread.join(WAIT)
    [(result, took)] = results
    assert result is None and took < 5, took
    assert be.open_streams() == 0
    # The backend is still usable.
    writer.put('/w/c', '3')
    assert be.watch_tree('/w', event.index + 1, WAIT).key == '/w/c'
    # etcd down: unavailable, quickly.
    server.kill()
    with pytest.raises(exceptions.EtcdUnavailable):
        be.watch_tree('/w', event.index + 2, 1)
    with pytest.raises(exceptions.EtcdUnavailable):
        be.read_key('/w/a')
    assert be.open_streams() == 0


def _stream_ports(watcher):
    return {c.stream._sock.getsockname()[1]
            for c in watcher._backend._cursors.values()
            if c.stream is not None and c.stream._sock is not None}


def _watching(watcher):
    return any(c.lock.locked() for c in watcher._backend._cursors.values())


def _established_ports(server):
    proc = psutil.Process()
    list_connections = getattr(proc, 'net_connections', proc.connections)
    conns = list_connections(kind='tcp')
    return {c.laddr.port for c in conns
            if c.status == psutil.CONN_ESTABLISHED and c.raddr and
            c.raddr.port == server.port}


def _run_and_stop(server, watcher_class):
    threads = set(threading.enumerate())
    watches = etcd_watchers(server)
    writer = drivers.v3_client(server)
    w = watcher_class(drivers.v3_client(server), 'rec', '/p', heartbeat=2)
    runner = Runner(w, join_timeout=WAIT)
    with runner:
        writer.put('/p/a', '1')
        wait_until(lambda: w.changes == [('add', '/p/a', '1')],
                   timeout=WAIT, interval=POLL)
        wait_until(lambda: etcd_watchers(server) == watches + 1,
                   timeout=WAIT, interval=POLL)
        ports = _stream_ports(w)
        assert len(ports) == 1 and ports <= _established_ports(server)
        writer.put('/p/last', 'x')
        wait_until(lambda: len(w.changes) == 2, timeout=WAIT, interval=POLL)
        if watcher_class is Recorder:
            # Stop only once the next watch call waits.
            wait_until(lambda: _watching(w), timeout=WAIT, interval=POLL)
    assert not set(threading.enumerate()) - threads
    assert w._backend.open_streams() == 0
    assert not ports & _established_ports(server)
    wait_until(lambda: etcd_watchers(server) == watches, timeout=WAIT,
               interval=POLL)


def test_stop_leaves_no_thread_or_watch_behind(fresh_etcd_v3_server):
    # Stopped while its watch waits: the watch call ends at its timeout.
    _run_and_stop(fresh_etcd_v3_server, Recorder)


class StopsAtLast(Recorder):
    def key_change(self, action, key, value):
        super(StopsAtLast, self).key_change(action, key, value)
        if key.endswith('/last'):
            self.stop()


def test_stop_right_after_an_event_closes_the_stream(fresh_etcd_v3_server):
    # Stopped by a callback: watch_forever returns with the stream that
    # brought the event still open, unless the recipe closes the backend.
    _run_and_stop(fresh_etcd_v3_server, StopsAtLast)


def test_two_electors_share_one_client(etcd3_client, etcd_prefix):
    # One etcd3gw client (one requests session) serves a follower's watch
    # and the leader's writes at the same time.
    path = etcd_prefix + '/el'
    name = 'svc' + uuid.uuid4().hex[:6]
    a = EtcdElection(etcd3_client, name, path, work_time=5, recovery_time=1)
    b = EtcdElection(etcd3_client, name, path, work_time=5, recovery_time=1)
    a.wait_until_elected()
    elected, times, thread = campaign_in_thread(b)
    try:
        assert not elected.wait(0.5)
        a.clean()
        assert elected.wait(WAIT)
        assert b.fencing_token > 0 and a.fencing_token is None
    finally:
        thread.join(WAIT)
        b.clean()


# -- streams across calls, progress, rewound and leaderless etcds ----------

def _count_opens(be):
    """Streams ``be`` opens from now on (a list that grows)."""
    opens, original = [], be._open

    def counting(*args):
        stream = original(*args)
        if stream is not None:
            opens.append(stream)
        return stream
    be._open = counting
    return opens


def _busy(writer, errors, compacted, count=2000):
    """Write ``count`` keys outside /quiet, compacting every 500."""
    try:
        for i in range(count):
            writer.put('/busy/k%d' % (i % 50), str(i))
            if i % 500 == 499:
                compacted.append(drivers.compact(writer))
    except Exception as e:      # noqa: broad; reported by the test
        errors.append(e)


@pytest.mark.parametrize('interval', ['1s', None])
def test_a_quiet_prefix_keeps_one_stream_on_a_busy_etcd(interval):
    args = ['--experimental-watch-progress-notify-interval=' + interval
            ] if interval else []
    with EtcdServer(name='busy-v3', enable_v2=False,
                    extra_args=args) as server:
        be = backends.for_client(drivers.v3_client(server))
        writer = drivers.v3_client(server)
        opens = _count_opens(be)
        start = be.read_tree('/quiet').index
        errors, compactions = [], []
        thread = threading.Thread(target=_busy,
                                  args=(writer, errors, compactions))
        thread.start()
        calls = 0
        deadline = time.monotonic() + 10 * WAIT
        while thread.is_alive() or calls < 3:
            assert time.monotonic() < deadline
            assert be.watch_tree('/quiet', start + 1, 0.5) is None
            calls += 1
        thread.join()
        assert not errors and len(compactions) == 4
        compacted = compactions[-1]
        [cursor] = be._cursors.values()
        if interval:
            # Progress notifications carry the stream past the compaction.
            wait_until(lambda: be.watch_tree('/quiet', start + 1, 0.5) is
                       None and cursor.received >= compacted,
                       timeout=WAIT, interval=0)
        assert len(opens) == 1 and be.open_streams() == 1
        # A stream opened again starts where the last notification said.
        be.close()
        if interval:
            assert be.watch_tree('/quiet', start + 1, 0.5) is None
            assert len(opens) == 2
        else:
            with pytest.raises(exceptions.HistoryGone):
                be.watch_tree('/quiet', start + 1, 0.5)
            start = be.read_tree('/quiet').index
        writer.put('/quiet/a', 'x')
        event = be.watch_tree('/quiet', start + 1, WAIT)
        assert (event.key, event.value) == ('/quiet/a', 'x')
        be.close()


def test_etcd_behind_the_watch_is_a_rewound_cluster(fresh_etcd_v3_server):
    # What a wiped or restored etcd looks like: asked from revision 500 it
    # answers "created" at its own revision, far below.
    be = backends.for_client(drivers.v3_client(fresh_etcd_v3_server))
    now = be.read_tree('/r').index
    assert now < 400
    with pytest.raises(exceptions.ClusterRewound) as info:
        be.watch_tree('/r', 500, WAIT)
    assert info.value.current_index == now
    assert be.open_streams() == 0 and not be._cursors
    with pytest.raises(exceptions.ClusterRewound):
        be.watch_key('/r/k', 500, WAIT)
    with pytest.raises(exceptions.ClusterRewound):
        be.check_current('/r', 500)
    assert be.check_current('/r', now) == now
    assert be.watch_tree('/r', now + 1, 0.2) is None


def test_another_cluster_is_a_rewound_cluster_once():
    with EtcdServer(name='one', enable_v2=False) as one, \
            EtcdServer(name='two', enable_v2=False) as two:
        for i in range(5):
            drivers.v3_client(two).put('/c/k%d' % i, 'two')
        client = v3client.client(['%s:%d' % (s.host, s.port)
                                  for s in (one, two)], timeout=WAIT)
        be = backends.for_client(client)
        tree = be.read_tree('/c').index
        key_at = be.read_key('/e')[1]
        assert be.check_current('/c', tree) == tree
        assert be.watch_tree('/c', tree + 1, 0.2) is None
        # One goes; the client moves on to two, as if to the same
        # member, wiped and rebuilt as another cluster.
        one.kill()
        with pytest.raises(exceptions.EtcdUnavailable):
            be.watch_tree('/c', tree + 1, WAIT)
        assert client.base_url == two.client_url
        # Two's revision is above one's: only the cluster ID tells.
        with pytest.raises(exceptions.ClusterRewound):
            be.watch_tree('/c', tree + 1, WAIT)
        with pytest.raises(exceptions.ClusterRewound):
            be.watch_key('/e', key_at + 1, WAIT)
        assert be.check_current('/c', tree) > tree
        snapshot = be.read_tree('/c')
        assert len(snapshot.items) == 5
        assert be.watch_tree('/c', snapshot.index + 1, 0.2) is None
        be.close()


def test_a_stream_through_an_etcd_restart(fresh_etcd_v3_server):
    server = fresh_etcd_v3_server
    be = backends.for_client(drivers.v3_client(server))
    opens = _count_opens(be)
    start = be.read_tree('/k').index
    assert be.watch_tree('/k', start + 1, 0.5) is None
    server.kill()
    began = time.monotonic()
    try:
        assert be.watch_tree('/k', start + 1, 1) is None
    except exceptions.EtcdUnavailable:
        pass
    assert time.monotonic() - began <= 1 + SLACK
    server.start()
    drivers.v3_client(server).put('/k/a', '1')
    got = []

    def arrived():
        try:
            got.append(be.watch_tree('/k', start + 1, 1))
        except exceptions.EtcdUnavailable:
            pass
        return got and got[-1] is not None
    wait_until(arrived, timeout=WAIT, interval=POLL)
    assert got[-1].key == '/k/a' and len(opens) == 2
    be.close()


def test_a_member_without_leader_cancels_the_watch():
    with EtcdCluster(size=3, enable_v2=False) as cluster:
        lone, other = cluster.member(0), cluster.member(1)
        client = v3client.client(['%s:%d' % (m.host, m.port)
                                  for m in (lone, other)], timeout=WAIT)
        be = backends.for_client(client)
        start = be.read_tree('/n').index
        assert be.watch_tree('/n', start + 1, 0.2) is None
        cluster.member(1).kill()
        cluster.member(2).kill()
        # The open stream: etcd cancels it once the member has seen no
        # leader for a while (about 3 election timeouts).
        with pytest.raises(exceptions.EtcdUnavailable, match='no leader'):
            wait_until(lambda: be.watch_tree('/n', start + 1, 1),
                       timeout=WAIT, interval=0)
        assert client.base_url == other.client_url
        # A new watch on the member: refused at once.
        client.failover()
        assert client.base_url == lone.client_url
        began = time.monotonic()
        with pytest.raises(exceptions.EtcdUnavailable, match='no leader'):
            be.watch_tree('/n', start + 1, WAIT)
        assert time.monotonic() - began < 5
        assert client.base_url == other.client_url
        # And the quorum read cannot prove anything.
        client.failover()
        with pytest.raises(exceptions.EtcdUnavailable):
            be.check_current('/n', start)
        assert client.base_url == other.client_url
