"""One notification per real change (docs/guide.rst, "React to changes")."""

import threading
import time

from etcdwatch import EtcdChangeWatcher
from etcdwatch.testing import FakeEtcdClient

client = FakeEtcdClient()
client.write('/ports/p1', 'up')


class Ports(EtcdChangeWatcher):
    """Applies ports to a local table; told only of real changes."""

    def __init__(self, *args, **kwargs):
        self.table = {}
        super(Ports, self).__init__(*args, **kwargs)

    def added(self, short_key, value):         # added or changed
        self.table[short_key] = value

    def removed(self, short_key):
        del self.table[short_key]


ports = Ports(client, 'ports', '/ports', heartbeat=1)
assert ports.table == {'p1': 'up'}            # the initial load

thread = threading.Thread(target=ports.watch_forever)
thread.start()
client.write('/ports/p1', 'up')               # same value: not a change
client.write('/ports/p2', 'down')
client.write('/ports/vlan/p3', 'up')          # keys below sub-directories
index = client.delete('/ports/vlan', recursive=True).modifiedIndex

deadline = time.monotonic() + 10
while ports.stats()['index'] < index:
    assert time.monotonic() < deadline
    time.sleep(0.01)
ports.stop()
thread.join()

# p3 came and went: one 'removed' for each key under the deleted directory.
assert ports.table == {'p1': 'up', 'p2': 'down'}
# implemented_state: what was last delivered without error, by full key.
assert ports.implemented_state == {'/ports/p1': 'up', '/ports/p2': 'down'}
print(sorted(ports.table.items()))
