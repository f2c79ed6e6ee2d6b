"""The recipes on etcd's v3 API, through etcd3gw (docs/v3.rst)."""

import threading
import time

import etcd3gw

import etcdwatch
from etcdwatch.testing import EtcdServer


class Ports(etcdwatch.EtcdWatcher):
    """Records every change, as the callbacks receive it."""

    def __init__(self, *args, **kwargs):
        self.changes = []
        super(Ports, self).__init__(*args, **kwargs)

    def do_all_work(self):
        pass

    def do_work(self, action, key, value):
        self.changes.append((action, key, value))


# An etcd without the v2 API, as etcd 3.6 is.
with EtcdServer(enable_v2=False) as server:
    client = etcd3gw.client(host=server.host, port=server.port, timeout=10)
    elector = etcdwatch.EtcdElection(client, 'l3', '/elections',
                                     work_time=10)
    with elector.leadership():
        assert elector.leader() == elector.thread_id
    assert elector.leader() is None

    # Values reach the callbacks as str; write them as UTF-8 bytes.
    client.put(b'/ports/p1', b'up')
    ports = Ports(client, 'ports', '/ports', heartbeat=1)
    assert ports.etcd_data == {'/ports/p1': 'up'}
    thread = threading.Thread(target=ports.watch_forever)
    thread.start()
    client.put(b'/ports/p2', 'café'.encode('utf-8'))
    client.delete(b'/ports/p1')
    deadline = time.monotonic() + 10
    while len(ports.changes) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    ports.stop()
    thread.join()
    assert ports.changes == [('add', '/ports/p2', 'café'),
                             ('delete', '/ports/p1', None)], ports.changes
    print(ports.changes)
