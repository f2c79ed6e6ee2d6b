"""The lock on asyncio (docs/lock.rst), on the in-memory v3 fake.

With a real etcd: ``aio.AsyncEtcd3Client(['127.0.0.1:2379'])``.
"""

import asyncio

from etcdwatch import aio
from etcdwatch.aio.lock import AsyncEtcdLock
from etcdwatch.testing import FakeEtcd3Server

fake = FakeEtcd3Server()


async def main():
    async with aio.AsyncEtcd3Client(
            [fake.base_url.split('//')[1]],
            transport=fake.async_httpx_transport()) as client:
        holder = AsyncEtcdLock(client, 'reindex', '/locks', ttl=10)
        waiter = AsyncEtcdLock(client, 'reindex', '/locks', ttl=10)
        async with holder:
            # Cancelling a waiting acquire withdraws its key from the queue.
            task = asyncio.ensure_future(waiter.acquire())
            await asyncio.sleep(0.1)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            print('held by', await holder.holder() == holder.id,
                  'token', holder.fencing_token)
        assert await waiter.acquire(timeout=5)
        await waiter.release()
        await holder.aclose()
        await waiter.aclose()


asyncio.run(main())
