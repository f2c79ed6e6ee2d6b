"""An asyncio watcher (docs/asyncio.rst, "A watcher").

Runs on the in-memory v3 etcd so it needs no server; against a real etcd
pass ``AsyncEtcd3Client(['10.0.0.1:2379', '10.0.0.2:2379'])`` instead.
"""

import asyncio

from etcdwatch import aio
from etcdwatch.testing import FakeEtcd3Server


class Ports(aio.AsyncEtcdChangeWatcher):
    """Applies ports to a local table; told only of real changes."""

    def __init__(self, *args, **kwargs):
        self.table = {}
        super().__init__(*args, **kwargs)

    async def added(self, short_key, value):     # added or changed
        self.table[short_key] = value

    async def removed(self, short_key):
        del self.table[short_key]


async def main(etcd):
    writer = etcd.client()                       # an etcd3gw client
    writer.put('/ports/p1', 'up')
    async with aio.AsyncEtcd3Client(
            ['fake-etcd:2379'],
            transport=etcd.async_httpx_transport()) as client:
        async with Ports(client, 'ports', '/ports', heartbeat=5) as ports:
            await ports.wait_synced(timeout=10)  # the initial load
            assert ports.table == {'p1': 'up'}
            writer.put('/ports/p1', 'up')        # same value: not a change
            writer.put('/ports/p2', 'down')
            while ports.table != {'p1': 'up', 'p2': 'down'}:
                await asyncio.sleep(0.01)
    return sorted(ports.table.items())


print(asyncio.run(asyncio.wait_for(main(FakeEtcd3Server()), 30)))
