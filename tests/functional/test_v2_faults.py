"""The v2 backend on real etcd faults: a wiped etcd, another cluster on the
same address, a member without a leader.

An etcd is wiped with ``EtcdServer.wipe()`` (stop, delete its data
directory, start on the same ports), which brings it back at a low index
with the same cluster ID: the same name, peer URL and cluster token hash to
the same ID.
"""

import threading
import time

import etcd
import pytest

from etcdwatch.backends import base
from etcdwatch.backends import v2
from etcdwatch import exceptions
from etcdwatch.testing.server import EtcdCluster
from etcdwatch.testing.server import EtcdServer
from tests.helpers import wait_until

# Generous: a 2-core machine shared with other tests.
WAIT = 20.0


def store_watchers(client):
    response = client.http.request('GET', client.base_uri + '/metrics',
                                   timeout=WAIT)
    for line in response.data.decode('utf-8').splitlines():
        if line.startswith('etcd_debugging_store_watchers '):
            return float(line.split()[1])
    raise AssertionError('etcd has no store watchers metric')


def fill(client, prefix, count):
    for i in range(count):
        client.write('%s/k%d' % (prefix, i), str(i))


def filled(server, count):
    """(client, backend, the index it read at) after ``count`` writes."""
    client = server.client()
    backend = v2.V2Backend(client)
    fill(client, '/w', count)
    return client, backend, backend.read_tree('/w').index


@pytest.fixture
def server():
    with EtcdServer(name='v2-faults') as server:
        yield server


def test_check_current_on_a_healthy_etcd(etcd_client, etcd_prefix):
    backend = v2.V2Backend(etcd_client)
    seen = backend.read_tree(etcd_prefix).index
    etcd_client.write(etcd_prefix + '/a', '1')
    now = etcd_client.read(etcd_prefix).etcd_index
    assert now == seen + 1
    assert backend.check_current(etcd_prefix, seen) == now
    assert backend.check_current(etcd_prefix, now) == now
    assert backend.check_current(etcd_prefix + '/a', now) == now
    with pytest.raises(exceptions.ClusterRewound) as info:
        backend.check_current(etcd_prefix, now + 1)
    assert info.value.current_index == now
    # It wrote nothing.
    assert etcd_client.read(etcd_prefix).etcd_index == now


def test_wiped_etcd_is_caught_by_check_current(server):
    client, backend, seen = filled(server, 30)
    cluster_id = client.expected_cluster_id
    server.wipe()
    with pytest.raises(exceptions.ClusterRewound) as info:
        backend.check_current('/w', seen)
    assert info.value.current_index < seen
    # Nothing else told: the cluster ID is the same, and a plain read of
    # the tree finds an empty one.
    assert client.expected_cluster_id == cluster_id
    assert backend.read_tree('/w').items == {}


def test_wiped_etcd_is_caught_by_a_watch_when_etcd_answers(server):
    client, backend, seen = filled(server, 30)
    server.wipe()
    writer = server.client()
    box = {}

    def watch():
        try:
            box['event'] = backend.watch_tree('/w', seen + 1, WAIT)
        except Exception as e:
            box['error'] = e
    before = store_watchers(writer)
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    # The watch waits (etcd is far below seen + 1) until etcd gets there.
    wait_until(lambda: store_watchers(writer) > before, timeout=WAIT,
               interval=0.01,
               message='watch never waited')
    while writer.write('/w/again', 'x').modifiedIndex <= seen:
        pass
    thread.join(WAIT)
    assert not thread.is_alive()
    assert isinstance(box.get('error'), exceptions.ClusterRewound), box
    assert box['error'].current_index < seen


def test_another_cluster_on_the_same_address(server):
    client, backend, seen = filled(server, 3)
    old_id = client.expected_cluster_id
    server.wipe(new_token=True)
    with pytest.raises(exceptions.ClusterRewound) as info:
        backend.read_tree('/w')
    assert isinstance(info.value.__cause__, etcd.EtcdClusterIdChanged)
    assert client.expected_cluster_id != old_id
    # python-etcd tells once; the index tells from then on.
    fill(client, '/w', 1)
    assert backend.check_current('/w', 0) < seen
    with pytest.raises(exceptions.ClusterRewound):
        backend.check_current('/w', seen)


def test_a_member_without_a_leader(caplog):
    with EtcdCluster(size=3) as cluster:
        lone, others = cluster.member(0), cluster.members[1:]
        # One client that knows only the lone member, one that knows all
        # and starts on it.
        single = v2.V2Backend(lone.client())
        multi_client = cluster.client(host=tuple(
            (m.host, m.port) for m in cluster.members))
        multi = v2.V2Backend(multi_client)
        assert multi_client._base_uri == lone.client_url
        assert multi.create('/e/k', 'me', 300) is not None
        before = single.check_current('/w', 0)
        for member in others:
            member.kill()
        # Plain reads are still served, from the member's own store.
        assert single.read_key('/e/k')[0].value == 'me'
        # A quorum read times out on the client's side (etcd would answer
        # after 7 s): CHECK_TIMEOUT bounds it.
        started = time.monotonic()
        with pytest.raises(exceptions.EtcdUnavailable):
            single.check_current('/w', before)
        assert time.monotonic() - started < base.CHECK_TIMEOUT + 2
        # A write waits for etcd's answer: a raft error, and the client
        # that knows other members moves to the next.
        with pytest.raises(exceptions.EtcdUnavailable) as info:
            multi.refresh('/e/k', 'me', 300)
        payload = info.value.__cause__.payload
        assert (payload['errorCode'], payload['status']) == (300, 500)
        assert payload['cause'].startswith('etcdserver: ')
        assert multi_client._base_uri in [m.client_url for m in others]
        assert any('cannot serve' in r.getMessage() for r in caplog.records
                   if r.name == 'etcdwatch.backends.v2')
        # Once the others are back, the moved client works again.
        cluster.start()
        assert multi.check_current('/w', before) >= before
        assert multi.refresh('/e/k', 'me', 300) is True
