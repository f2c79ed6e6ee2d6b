"""The threaded recipes on the in-memory v3 etcd, through etcd3gw.

The v3 backend reads a watch from the fake's message stream rather than a
socket (``backends.v3._MessageStream``).
"""

import logging

from etcdwatch import EtcdChangeWatcher
from etcdwatch import EtcdElection
from etcdwatch.testing import FakeEtcd3Server
from tests.helpers import wait_until


class Table(EtcdChangeWatcher):
    def __init__(self, *args, **kwargs):
        self.table = {}
        super().__init__(*args, **kwargs)

    def added(self, key, value):
        self.table[key] = value

    def removed(self, key):
        self.table.pop(key, None)


def test_change_watcher_follows_the_fake():
    fake = FakeEtcd3Server()
    writer = fake.client()
    writer.put('/p/a', '1')
    with Table(fake.client(), 'w', '/p', heartbeat=1) as w:
        assert w.table == {'a': '1'}
        writer.put('/p/b', '2')
        writer.put('/p/b', '2')
        writer.delete('/p/a')
        wait_until(lambda: w.table == {'b': '2'})
    assert w.stats()['events'] == 3 and not w.stats()['errors']


def test_elections_take_turns_on_the_fake_without_false_rewinds(caplog):
    fake = FakeEtcd3Server()
    a = EtcdElection(fake.client(), 's', '/e', work_time=5)
    b = EtcdElection(fake.client(), 's', '/e', work_time=5)
    with caplog.at_level(logging.WARNING, logger='etcdwatch'):
        assert a.wait_until_elected(timeout=5)
        assert not b.wait_until_elected(timeout=0.3)
        a.resign()
        assert b.wait_until_elected(timeout=5)
        wait_until(lambda: b._keepalive_running())
        b.extend_election(5)            # the guard has watched meanwhile
        b.resign()
    # A watch message sent before a cursor moved on is not etcd going
    # back in time.
    assert not [r for r in caplog.records if 'wiped' in r.getMessage()]
