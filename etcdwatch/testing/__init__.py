"""What tests of etcdwatch, and of applications built on it, import.

``FakeEtcdClient`` is an in-memory etcd v2 for fast unit tests (held to a
real etcd by etcdwatch's conformance suite); ``EtcdServer`` and
``EtcdCluster`` start real etcd processes with the v2 API enabled, with
faults (kill, stop, pause, resume, restart) on each member, and
``NetnsCluster`` (root only) puts each member in a network namespace of
its own, so that a test can cut one off from the others.
``FakeEtcd3Server`` is an in-memory etcd v3 behind its JSON gateway, for
etcd3gw clients and the asyncio recipes (held to a real etcd too).
``wait_caught_up(watcher, client, timeout)`` waits until a watcher has
applied everything etcd holds under its prefix.

The server helpers import ``fixtures`` only for the fixture classes, so
importing this package needs nothing beyond etcdwatch's own requirements.
"""

from etcdwatch.testing.fake import FakeClock
from etcdwatch.testing.fake import FakeEtcdClient
from etcdwatch.testing.wait import wait_caught_up

__all__ = ['FakeClock', 'FakeEtcdClient', 'wait_caught_up', 'EtcdServer',
           'EtcdCluster', 'EtcdServerFixture', 'EtcdClusterFixture',
           'find_etcd_binary', 'EtcdBinaryNotFound', 'NetnsCluster',
           'netns_available', 'FakeEtcd3Server']

_SERVER_NAMES = frozenset(['EtcdServer', 'EtcdCluster', 'EtcdServerFixture',
                           'EtcdClusterFixture', 'find_etcd_binary',
                           'EtcdBinaryNotFound'])
_NETNS_NAMES = frozenset(['NetnsCluster', 'netns_available'])


def __getattr__(name):
    # The server helpers are loaded on first use: they pull in the
    # test-only 'fixtures' package, which an application's unit tests of
    # the fake should not need.
    if name in _SERVER_NAMES:
        from etcdwatch.testing import server
        return getattr(server, name)
    if name == 'FakeEtcd3Server':
        from etcdwatch.testing import fake_v3
        return fake_v3.FakeEtcd3Server
    if name in _NETNS_NAMES:
        from etcdwatch.testing import netns
        return getattr(netns, name)
    raise AttributeError(name)
