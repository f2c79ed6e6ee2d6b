"""etcd's v3 API across a cluster: the client moves on (docs/v3.rst)."""

import threading
import time

import etcdwatch
from etcdwatch.testing import EtcdCluster
from etcdwatch import v3client


class Hosts(etcdwatch.EtcdChangeWatcher):
    def __init__(self, *args, **kwargs):
        self.seen = {}
        super(Hosts, self).__init__(*args, **kwargs)

    def added(self, short_key, value):
        self.seen[short_key] = value


with EtcdCluster(size=3, enable_v2=False) as cluster:
    client = v3client.client(['%s:%d' % hp for hp in cluster.hosts],
                             timeout=10)
    hosts = Hosts(client, 'hosts', '/hosts', heartbeat=1)
    hosts.DANGER_PAUSE = 0.2          # retry quickly, for the example
    thread = threading.Thread(target=hosts.watch_forever)
    thread.start()

    # Lose the member the client talks to; write through another.
    in_use = client.base_url
    next(m for m in cluster.members if m.client_url == in_use).kill()
    cluster.wait_for_leader()
    other = next(m for m in cluster.members if m.is_running)
    v3client.client(['%s:%d' % (other.host, other.port)]).put(
        b'/hosts/h1', b'up')

    deadline = time.monotonic() + 30
    while hosts.seen != {'h1': 'up'}:
        assert time.monotonic() < deadline, hosts.seen
        time.sleep(0.05)
    hosts.stop()
    thread.join()
    assert client.base_url != in_use
    print('moved from %s to %s' % (in_use, client.base_url))
