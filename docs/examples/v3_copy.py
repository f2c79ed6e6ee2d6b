"""Copy a v2 tree into v3 once (docs/v3.rst, "Migrating a deployment")."""

import etcd
import etcd3gw

from etcdwatch import EtcdWatcher
from etcdwatch.testing import EtcdServer


class Tree(EtcdWatcher):
    """Only loads the tree: etcd_data is what a watcher would see."""

    def do_all_work(self):
        pass


# For the example: an etcd with both APIs, and some v2 data to move.
with EtcdServer(enable_v2=True) as server:
    old = server.client()
    old.write('/networking-vpp/nodes/host1/ports/p1', '{"mac": "fa:16"}')
    old.write('/networking-vpp/nodes/host1/name', 'café')
    old.write('/networking-vpp/state/host1/alive', '1', ttl=60)
    old.write('/networking-vpp/empty', None, dir=True)

    v2 = etcd.Client(host=server.host, port=server.port)
    v3 = etcd3gw.client(host=server.host, port=server.port, timeout=10)
    for node in v2.read('/networking-vpp', recursive=True).leaves:
        if not node.dir:
            v3.put(node.key.encode('utf-8'), node.value.encode('utf-8'))

    # A watcher on v3 now loads what a watcher on v2 loads.
    on_v2 = Tree(v2, 'v2', '/networking-vpp').etcd_data
    on_v3 = Tree(v3, 'v3', '/networking-vpp').etcd_data
    assert on_v3 == on_v2 and len(on_v3) == 3, (on_v2, on_v3)
    print(sorted(on_v3.items()))
