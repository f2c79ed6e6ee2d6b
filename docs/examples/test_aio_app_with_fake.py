"""Testing asyncio code with the in-memory v3 etcd (docs/asyncio.rst)."""

import asyncio

import pytest

from etcdwatch import aio
from etcdwatch.testing import FakeEtcd3Server


class Inventory(aio.AsyncEtcdChangeWatcher):
    def __init__(self, *args, **kwargs):
        self.hosts = set()
        super().__init__(*args, **kwargs)

    async def added(self, short_key, value):
        self.hosts.add(short_key)

    async def removed(self, short_key):
        self.hosts.discard(short_key)


@pytest.mark.asyncio
async def test_inventory_follows_etcd():
    etcd = FakeEtcd3Server()
    writer = etcd.client()
    async with aio.AsyncEtcd3Client(
            ['fake-etcd:2379'],
            transport=etcd.async_httpx_transport()) as client:
        async with Inventory(client, 'inv', '/hosts', heartbeat=5) as inv:
            assert await inv.wait_synced(timeout=10)
            writer.put('/hosts/a', '')
            writer.put('/hosts/b', '')
            writer.delete('/hosts/a')

            async def caught_up():
                while inv.hosts != {'b'}:
                    await asyncio.sleep(0.01)
            await asyncio.wait_for(caught_up(), 10)
