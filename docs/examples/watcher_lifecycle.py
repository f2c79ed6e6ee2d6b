"""A watcher's life cycle: start, close, with (docs/watchers.rst)."""

from etcdwatch import EtcdChangeWatcher
from etcdwatch.testing import FakeEtcdClient, wait_caught_up


class Ports(EtcdChangeWatcher):
    def __init__(self, *args, **kwargs):
        self.table = {}
        super().__init__(*args, **kwargs)

    def added(self, key, value):
        self.table[key] = value

    def removed(self, key):
        self.table.pop(key, None)


client = FakeEtcdClient()
client.write('/ports/p1', 'up')

# ``with`` starts watch_forever on a thread (or a green thread) and, on
# the way out, stops it and waits for it.
with Ports(client, 'ports', '/ports', heartbeat=1) as ports:
    client.write('/ports/p2', 'down')
    wait_caught_up(ports, client, timeout=10)
    print(sorted(ports.table.items()))

# The same by hand: start() and close(timeout) -> True once it ended.
ports = Ports(client, 'ports', '/ports', heartbeat=1).start()
assert ports.close(timeout=10)
