"""The v2 backend's translation of python-etcd's answers."""

import logging
import threading

import etcd
import pytest

from etcdwatch.backends import base
from etcdwatch.backends import v2
from etcdwatch import exceptions
from etcdwatch.testing import FakeEtcdClient

WAIT = 10.0

# What etcd 3.5.1 answers a write or quorum read on a member without a
# leader (after its 7 s request timeout), as python-etcd parses it.
NO_LEADER = {'errorCode': 300, 'message': 'Raft Internal Error',
             'cause': 'etcdserver: request timed out', 'index': 0,
             'status': 500}
# etcd 3.5 refusing to update a directory: also a 300, but an answer.
DIR_UPDATE = {'errorCode': 300, 'message': 'Raft Internal Error',
              'cause': 'nodePath /1/d : Not a file ()', 'index': 0,
              'status': 500}
ELECTION = {'errorCode': 301, 'message': 'During Leader Election',
            'index': 0, 'status': 500}


def etcd_error(payload):
    """The exception python-etcd raises for this error body."""
    try:
        etcd.EtcdError.handle(dict(payload))
    except etcd.EtcdException as e:
        return e
    raise AssertionError('python-etcd raised nothing for %r' % (payload,))


@pytest.mark.parametrize('raised,expected', [
    (etcd.EtcdConnectionFailed('down'), exceptions.EtcdUnavailable),
    (etcd.EtcdException('Could not get the list of servers, maybe you '
                        'provided the wrong host(s) to connect to?'),
     exceptions.EtcdUnavailable),
    (etcd.EtcdException('Raft Internal Error'), exceptions.BackendError),
    (etcd_error(NO_LEADER), exceptions.EtcdUnavailable),
    (etcd_error(ELECTION), exceptions.EtcdUnavailable),
    (etcd_error(DIR_UPDATE), exceptions.BackendError),
    (etcd.EtcdEventIndexCleared('gone', {'index': 42}),
     exceptions.HistoryGone),
    (etcd.EtcdClusterIdChanged('The UUID of the cluster changed from a '
                               'to b.'), exceptions.ClusterRewound),
], ids=['connection', 'no-member', 'bare-raft', 'no-leader', 'election',
        'dir-update', 'cleared', 'cluster-id'])
def test_errors_are_translated(raised, expected):
    client = FakeEtcdClient()
    client.fail_next('read', raised)
    with pytest.raises(expected) as info:
        v2.V2Backend(client).read_tree('/p')
    assert info.value.__cause__ is raised
    assert type(info.value) is expected


def test_history_gone_carries_the_index():
    client = FakeEtcdClient()
    client.fail_next('watch', etcd.EtcdEventIndexCleared('gone',
                                                         {'index': 42}))
    with pytest.raises(exceptions.HistoryGone) as info:
        v2.V2Backend(client).watch_tree('/p', 1, 1)
    assert info.value.current_index == 42


def test_expected_answers():
    client = FakeEtcdClient()
    backend = v2.V2Backend(client)
    assert backend.read_tree('/missing').items == {}
    assert backend.read_key('/missing')[0] is None
    assert backend.create('/e/k', 'me', 5) is not None
    assert backend.create('/e/k', 'you', 5) is None
    assert backend.refresh('/e/k', 'you', 5) is False
    assert backend.refresh('/e/k', 'me', 5) is True
    assert backend.delete_if('/e/k', 'you') is False
    assert backend.delete_if('/e/k', 'me') is True
    assert backend.watch_tree('/p', client.index + 1, 0.01) is None


# ------------------------------------------------------------ check_current


def test_check_current_returns_etcds_index():
    client = FakeEtcdClient()
    backend = v2.V2Backend(client)
    client.write('/p/a', '1')
    client.write('/p/b', '2')
    assert backend.check_current('/p', 0) == client.index == 2
    assert backend.check_current('/p', 2) == 2
    # Below a key ("not a directory"), at the root, on a missing path.
    assert backend.check_current('/p/a', 2) == 2
    assert backend.check_current('/', 1) == 2
    assert backend.check_current('/nowhere/', 1) == 2
    # It never writes.
    assert client.index == 2
    assert client.dump('/') == {'/p/a': '1', '/p/b': '2'}


def test_check_current_when_its_key_exists():
    client = FakeEtcdClient()
    client.write('/p/' + v2._QUORUM_KEY, 'someone wrote it')
    client.write('/p/x', 'x')
    assert v2.V2Backend(client).check_current('/p', 2) == 2


def test_check_current_raises_cluster_rewound_below_the_index():
    client = FakeEtcdClient()
    client.write('/p/a', '1')
    with pytest.raises(exceptions.ClusterRewound) as info:
        v2.V2Backend(client).check_current('/p', 2)
    assert info.value.current_index == 1
    assert isinstance(info.value, exceptions.HistoryGone)


class Spy(FakeEtcdClient):
    """Records the keyword arguments of each read."""

    def __init__(self, **kwargs):
        super(Spy, self).__init__(**kwargs)
        self.reads = []

    def read(self, key, **kwargs):
        self.reads.append((key, kwargs))
        return super(Spy, self).read(key, **kwargs)


@pytest.mark.parametrize('read_timeout,expected', [
    (60, base.CHECK_TIMEOUT), (2, 2), (0, base.CHECK_TIMEOUT)])
def test_check_current_is_one_bounded_quorum_read(read_timeout, expected):
    client = Spy(read_timeout=read_timeout)
    v2.V2Backend(client).check_current('/p', 0)
    assert client.reads == [('/p/' + v2._QUORUM_KEY,
                             {'quorum': True, 'timeout': expected})]


@pytest.mark.parametrize('raised,expected', [
    (etcd_error(NO_LEADER), exceptions.EtcdUnavailable),
    (etcd.EtcdConnectionFailed('down'), exceptions.EtcdUnavailable),
    (etcd.EtcdClusterIdChanged('changed'), exceptions.ClusterRewound),
    (etcd.EtcdKeyNotFound('no index'), exceptions.BackendError),
], ids=['no-leader', 'connection', 'cluster-id', 'no-index'])
def test_check_current_failures(raised, expected):
    client = FakeEtcdClient()
    client.fail_next('read', raised)
    with pytest.raises(expected) as info:
        v2.V2Backend(client).check_current('/p', 0)
    assert type(info.value) is expected
    assert info.value.__cause__ is raised


# ------------------------------------------------- watches on a rewound etcd


def test_watch_answered_below_its_index_means_etcd_went_back():
    client = FakeEtcdClient()
    backend = v2.V2Backend(client)
    client.write('/p/a', '1')
    # A backend that stood at index 3 before etcd was wiped and came back
    # at index 1: its watch from 4 waits, and once etcd gets there the
    # answer says the watch began at index 1.
    box = {}

    def watch():
        try:
            box['event'] = backend.watch_tree('/p', 4, WAIT)
        except Exception as e:
            box['error'] = e
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    assert client.wait_for_watches(1, WAIT)
    for key in ('b', 'c', 'd'):
        client.write('/p/' + key, key)
    thread.join(WAIT)
    assert isinstance(box.get('error'), exceptions.ClusterRewound), box
    assert box['error'].current_index == 1


def test_watches_on_a_healthy_etcd_are_not_rewound():
    client = FakeEtcdClient()
    backend = v2.V2Backend(client)
    client.write('/p/a', '1')
    client.write('/p/b', '2')
    # Found in history: etcd's newest index.
    event = backend.watch_tree('/p', 1, WAIT)
    assert (event.key, event.current_index) == ('/p/a', 2)
    assert backend.watch_key('/p/b', 2, WAIT).index == 2
    # Waited for: the index when the watch began, from_index - 1.
    box = {}
    thread = threading.Thread(target=lambda: box.update(
        event=backend.watch_tree('/p', 3, WAIT)), daemon=True)
    thread.start()
    assert client.wait_for_watches(1, WAIT)
    client.write('/p/c', '3')
    thread.join(WAIT)
    assert (box['event'].index, box['event'].current_index) == (3, 2)


# ------------------------------------------------------ moving to a member

MEMBERS = ['http://10.0.0.1:2379', 'http://10.0.0.2:2379',
           'http://10.0.0.3:2379']


def cluster_client(raised):
    """A python-etcd client that knows MEMBERS and stands at the first.

    Each request raises ``raised`` as python-etcd would after the member
    answered (so python-etcd does not fail over by itself).  No network:
    ``use_proxies`` stops it asking for the member list.
    """
    client = etcd.Client(host=tuple(
        (uri[7:].split(':')[0], int(uri.rsplit(':', 1)[1]))
        for uri in MEMBERS), allow_reconnect=True, use_proxies=True)

    def api_execute(path, method, params=None, timeout=None):
        raise raised
    client.api_execute = api_execute
    return client


def moves(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name == 'etcdwatch.backends.v2'
            and r.levelno == logging.WARNING]


def test_a_member_without_quorum_moves_the_client_round_all_members(caplog):
    client = cluster_client(etcd_error(NO_LEADER))
    backend = v2.V2Backend(client)
    assert client._base_uri == MEMBERS[0]
    seen = []
    for _ in range(4):
        with pytest.raises(exceptions.EtcdUnavailable):
            backend.refresh('/e/k', 'me', 5)
        seen.append(client._base_uri)
        assert sorted(client._machines_cache + [client._base_uri]) == \
            MEMBERS
    assert seen == MEMBERS[1:] + MEMBERS[:2]
    messages = moves(caplog)
    assert len(messages) == 4
    assert MEMBERS[0] in messages[0] and MEMBERS[1] in messages[0]
    assert 'etcdserver: request timed out' in messages[0]


def test_check_current_without_quorum_moves_the_client(caplog):
    client = cluster_client(etcd_error(NO_LEADER))
    with pytest.raises(exceptions.EtcdUnavailable):
        v2.V2Backend(client).check_current('/p', 0)
    assert client._base_uri == MEMBERS[1]
    assert len(moves(caplog)) == 1


def test_unreachable_member_moves_a_client_python_etcd_did_not_move():
    client = cluster_client(etcd.EtcdConnectionFailed(
        'No more machines in the cluster'))
    backend = v2.V2Backend(client)
    client._machines_cache = []     # python-etcd's failover emptied it
    with pytest.raises(exceptions.EtcdUnavailable):
        backend.read_key('/k')
    # The members it knew when the backend was made are remembered.
    assert client._base_uri == MEMBERS[1]
    assert sorted(client._machines_cache) == [MEMBERS[0], MEMBERS[2]]


def test_a_client_python_etcd_moved_already_stays(caplog):
    client = cluster_client(None)

    def api_execute(path, method, params=None, timeout=None):
        # python-etcd failed over during the call, then gave up.
        client._base_uri = MEMBERS[2]
        client._machines_cache = []
        raise etcd.EtcdConnectionFailed('No more machines in the cluster')
    client.api_execute = api_execute
    with pytest.raises(exceptions.EtcdUnavailable):
        v2.V2Backend(client).read_key('/k')
    assert client._base_uri == MEMBERS[2]
    assert moves(caplog) == []


def test_two_threads_failing_on_one_member_move_the_client_once(caplog):
    client = cluster_client(etcd_error(NO_LEADER))
    v2.V2Backend(client)
    v2._move_on(client, MEMBERS[0], 'first')
    v2._move_on(client, MEMBERS[0], 'second, on the member left already')
    assert client._base_uri == MEMBERS[1]
    assert len(moves(caplog)) == 1


def test_answers_do_not_move_the_client(caplog):
    for raised in (etcd_error(DIR_UPDATE), etcd.EtcdKeyNotFound('no'),
                   etcd.EtcdClusterIdChanged('changed')):
        client = cluster_client(raised)
        with pytest.raises(exceptions.BackendError):
            v2.V2Backend(client).read_tree('/p')
        assert client._base_uri == MEMBERS[0]
    assert moves(caplog) == []


def test_a_single_host_client_is_not_moved(caplog):
    client = etcd.Client(host='10.0.0.1', port=2379)

    def api_execute(path, method, params=None, timeout=None):
        raise etcd_error(NO_LEADER)
    client.api_execute = api_execute
    with pytest.raises(exceptions.EtcdUnavailable):
        v2.V2Backend(client).check_current('/p', 0)
    assert client._base_uri == 'http://10.0.0.1:2379'
    assert client._machines_cache == []
    assert moves(caplog) == []
