"""Group membership (docs/membership.rst): members announce, a watcher sees.

Runs on the in-memory fake; give the same objects an etcd.Client or an
etcd3gw client for a real etcd.
"""

import threading

from etcdwatch.membership import EtcdGroupWatcher
from etcdwatch.membership import EtcdMembership
from etcdwatch.membership import group_members
from etcdwatch.testing import FakeEtcdClient

client = FakeEtcdClient()


class Agents(EtcdGroupWatcher):
    """Tells the controller which agents are up, and where."""

    def __init__(self, *args, **kwargs):
        self.changed = threading.Condition()
        self.log = []
        super(Agents, self).__init__(*args, **kwargs)

    def _note(self, *what):
        with self.changed:
            self.log.append(what)
            self.changed.notify_all()

    def joined(self, member, value):
        self._note('joined', member, value)

    def updated(self, member, value):
        self._note('updated', member, value)

    def left(self, member):
        self._note('left', member)

    def wait_for(self, count):
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.log) >= count, 10)


with Agents(client, 'agents', '/agents', heartbeat=1) as agents:
    # Each agent process holds one of these for as long as it runs: its
    # key is refreshed every ttl / 3 and expires ttl seconds after a crash.
    with EtcdMembership(client, '/agents', 'compute-1', '10.0.0.1',
                        ttl=10) as me:
        assert me.is_registered
        assert group_members(client, '/agents') == {'compute-1': '10.0.0.1'}
        agents.wait_for(1)
        me.update('10.0.0.2')      # replaced in place: 'updated'
        agents.wait_for(2)
    # Leaving the block deleted the key: the watcher saw it leave.
    agents.wait_for(3)

assert agents.members == {}
for line in agents.log:
    print(*line)
