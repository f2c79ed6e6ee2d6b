"""Follow a prefix, and stop (docs/guide.rst, "More on watching")."""

import threading
import time

from etcdwatch import EtcdWatcher
from etcdwatch.testing import FakeEtcdClient

client = FakeEtcdClient()
client.write('/config/log_level', 'info')


class Config(EtcdWatcher):
    """Keeps a copy of /config; etcd_data is always up to date."""

    def do_all_work(self):
        # After every full read: the start, and when history is gone.
        print('loaded', sorted(self.etcd_data.items()))

    def do_work(self, action, key, value):
        # One call per change: 'add', 'change' or 'delete'.
        print(action, key, value)


# The constructor loads the tree and calls do_all_work() at once.
watcher = Config(client, 'config', '/config', heartbeat=1)
assert watcher.synced
assert watcher.etcd_data == {'/config/log_level': 'info'}

# watch_forever() follows etcd until stop(); run it in a thread.
thread = threading.Thread(target=watcher.watch_forever)
thread.start()
client.write('/config/log_level', 'debug')
index = client.delete('/config/log_level').modifiedIndex

# Wait until the watcher has applied etcd's index (here for the example;
# stats() is cheap enough for health checks too).
deadline = time.monotonic() + 10
while watcher.stats()['index'] < index:
    assert time.monotonic() < deadline
    time.sleep(0.01)

watcher.stop()            # watch_forever() returns within one heartbeat
thread.join()
assert watcher.etcd_data == {}
print(watcher.stats()['events'], 'events')
