"""The v2 backend's translation of python-etcd's answers."""

import etcd
import pytest

from etcdwatch.backends import v2
from etcdwatch import exceptions
from etcdwatch.testing import FakeEtcdClient


@pytest.mark.parametrize('raised,expected', [
    (etcd.EtcdConnectionFailed('down'), exceptions.EtcdUnavailable),
    (etcd.EtcdException('Could not get the list of servers, maybe you '
                        'provided the wrong host(s) to connect to?'),
     exceptions.EtcdUnavailable),
    (etcd.EtcdException('Raft Internal Error'), exceptions.BackendError),
    (etcd.EtcdEventIndexCleared('gone', {'index': 42}),
     exceptions.HistoryGone),
])
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
