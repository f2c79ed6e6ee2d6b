"""Quick start: react to each change under a prefix (docs/guide.rst)."""

import etcd3gw

from etcdwatch import EtcdChangeWatcher


class Ports(EtcdChangeWatcher):
    def added(self, key, value):       # a new key, or a new value
        print('port', key, 'is', value, flush=True)

    def removed(self, key):
        print('port', key, 'is gone', flush=True)


client = etcd3gw.client(host='127.0.0.1', port=2379)
Ports(client, 'ports', '/ports', heartbeat=10).watch_forever()
