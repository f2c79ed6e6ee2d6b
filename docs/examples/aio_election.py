"""An elected asyncio worker (docs/asyncio.rst, "An elected worker").

Runs on the in-memory v3 etcd so it needs no server; against a real etcd
pass ``AsyncEtcd3Client(['10.0.0.1:2379', '10.0.0.2:2379'])`` instead.
"""

import asyncio

from etcdwatch import aio
from etcdwatch.testing import FakeEtcd3Server

done = []


async def worker(client, name):
    election = aio.AsyncEtcdElection(client, 'janitor', '/elections',
                                     work_time=10)
    async with election.leadership() as term:    # waits until elected
        for batch in range(3):
            election.check_in()     # shows life; raises once the term ended
            await asyncio.sleep(0.01)             # one piece of work
            done.append((name, term.fencing_token, batch))
    # Leaving the block resigned: the next candidate leads at once.


async def main(etcd):
    async with aio.AsyncEtcd3Client(
            ['fake-etcd:2379'],
            transport=etcd.async_httpx_transport()) as client:
        await asyncio.gather(worker(client, 'a'), worker(client, 'b'))
    # One leader at a time: each term's three batches are contiguous.
    terms = [token for _name, token, _batch in done]
    assert terms == sorted(terms) and len(set(terms)) == 2
    return [(name, batch) for name, _token, batch in done]


print(asyncio.run(asyncio.wait_for(main(FakeEtcd3Server()), 30)))
