"""Only the elected worker watches (docs/guide.rst, "Only on the leader")."""

import threading
import time

from etcdwatch import EtcdChangeWatcher
from etcdwatch.testing import FakeEtcdClient

client = FakeEtcdClient()
client.write('/jobs/nightly', 'pending')


class Jobs(EtcdChangeWatcher):
    def __init__(self, label, *args, **kwargs):
        self.label = label
        self.seen = []
        super(Jobs, self).__init__(*args, **kwargs)

    def added(self, short_key, value):
        self.seen.append((short_key, value))


def wait_for(predicate):
    deadline = time.monotonic() + 10
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.01)


# Same name and election_path: one of them leads; it alone loads the tree
# and runs the callbacks.  The others wait, and take over when it goes.
workers = [Jobs(label, client, 'jobs', '/jobs', election_path='/elections',
                wait_until_elected=True, heartbeat=1, recovery_time=1)
           for label in ('a', 'b')]
threads = [threading.Thread(target=w.watch_forever) for w in workers]
for thread in threads:
    thread.start()


def leader():
    return next((w for w in workers
                 if w.synced and w.etcd_elector.is_elected), None)


wait_for(leader)
first = leader()
other = workers[1] if first is workers[0] else workers[0]
assert first.seen == [('nightly', 'pending')] and other.seen == []

first.stop()              # resigns at once: the other takes over now
wait_for(lambda: leader() is other)
# The new leader starts from a full read of the tree.
assert other.seen == [('nightly', 'pending')]

other.stop()
for thread in threads:
    thread.join()
print('leaders:', first.label, 'then', other.label)
