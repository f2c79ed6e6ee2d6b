"""Changes as an async iterator (docs/asyncio.rst, "No subclass")."""

import asyncio

from etcdwatch import aio
from etcdwatch.testing import FakeEtcd3Server


async def main(etcd):
    writer = etcd.client()
    writer.put('/config/level', 'info')
    async with aio.AsyncEtcd3Client(
            ['fake-etcd:2379'],
            transport=etcd.async_httpx_transport()) as client:
        config = {}
        async for change in aio.watch_prefix(client, '/config'):
            if change is aio.RESYNC:
                continue                  # net changes after a re-read follow
            if change.action == 'delete':
                config.pop(change.key, None)
            else:
                config[change.key] = change.value
            if change.key == 'level' and change.value == 'info':
                writer.put('/config/level', 'debug')   # someone changes it
            if config == {'level': 'debug'}:
                break                     # leaving the loop closes the watch
    return config


print(asyncio.run(asyncio.wait_for(main(FakeEtcd3Server()), 30)))
