"""The same watcher in an eventlet-patched process (docs/guide.rst)."""

import eventlet
eventlet.monkey_patch()   # what OpenStack agents do first thing

from etcdwatch import EtcdChangeWatcher  # noqa: E402
from etcdwatch import handlers  # noqa: E402
from etcdwatch.testing import FakeEtcdClient  # noqa: E402

# etcdwatch sees the patching and picks green primitives by itself.
assert handlers.default_handler().name == 'eventlet'

client = FakeEtcdClient()


class Ports(EtcdChangeWatcher):
    def __init__(self, *args, **kwargs):
        self.table = {}
        super(Ports, self).__init__(*args, **kwargs)

    def added(self, short_key, value):
        self.table[short_key] = value


ports = Ports(client, 'ports', '/ports', heartbeat=1)
green = eventlet.spawn(ports.watch_forever)
client.write('/ports/p1', 'up')
with eventlet.Timeout(10):
    while ports.table != {'p1': 'up'}:
        eventlet.sleep(0.01)
ports.stop()
green.wait()
print(ports.table)
