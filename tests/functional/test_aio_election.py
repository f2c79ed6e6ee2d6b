"""AsyncEtcdElection on a real etcd (v3 gateway), beside threaded ones."""

import asyncio
import statistics
import time
import uuid

import pytest

from etcdwatch import aio
from etcdwatch import EtcdElection
from tests import drivers

WAIT = 30


def async_client(server, timeout=5):
    return aio.AsyncEtcd3Client(['%s:%d' % (server.host, server.port)],
                                timeout=timeout)


def unique_name():
    return 'svc' + uuid.uuid4().hex[:8]


@pytest.mark.asyncio
async def test_threaded_and_asyncio_candidates_take_turns(etcd_v3_server,
                                                          etcd_prefix):
    """One election, both kinds; resign hands over in well under 100 ms."""
    name, path = unique_name(), etcd_prefix + '/el'
    async with async_client(etcd_v3_server) as client:
        asyncs = [aio.AsyncEtcdElection(client, name, path, work_time=10,
                                        recovery_time=5) for _ in range(2)]
        threaded = EtcdElection(drivers.v3_client(etcd_v3_server), name,
                                path, work_time=10, recovery_time=5)
        handovers, tokens = [], []
        try:
            assert await asyncs[0].campaign(timeout=WAIT)
            for rounds in range(10):
                leader = asyncs[rounds % 2]
                follower = asyncs[(rounds + 1) % 2]
                waiting = asyncio.ensure_future(follower.campaign())
                await asyncio.sleep(0.05)     # the follower waits on the key
                assert not waiting.done()
                started = time.monotonic()
                await leader.resign()
                assert await asyncio.wait_for(waiting, WAIT)
                handovers.append(time.monotonic() - started)
                tokens.append(follower.fencing_token)
            # The threaded candidate waits its turn, then leads.
            current = asyncs[10 % 2]
            thread = asyncio.ensure_future(asyncio.to_thread(
                threaded.wait_until_elected))
            await asyncio.sleep(0.2)
            assert not thread.done() and current.is_elected
            assert await threaded_leader_is(current, threaded.thread_id,
                                            expected=False)
            await current.resign()
            await asyncio.wait_for(thread, WAIT)
            assert threaded.is_elected
            assert await current.leader() == threaded.thread_id
            assert threaded.fencing_token > tokens[-1]
        finally:
            threaded.clean()
            for e in asyncs:
                await e.aclose()
    median = statistics.median(handovers)
    print('\nasyncio resign -> follower elected: median %.1f ms, max %.1f '
          'ms (10 handovers)' % (1000 * median, 1000 * max(handovers)))
    assert tokens == sorted(tokens) and len(set(tokens)) == 10
    assert median < 0.1


async def threaded_leader_is(elector, thread_id, expected):
    return (await elector.leader() == thread_id) == expected


@pytest.mark.asyncio
async def test_takeover_after_the_leader_stops_showing_life(
        etcd_v3_server, etcd_prefix):
    name, path = unique_name(), etcd_prefix + '/el'
    work_time, recovery_time = 2, 1
    async with async_client(etcd_v3_server) as client:
        hung = aio.AsyncEtcdElection(client, name, path, work_time=work_time,
                                     recovery_time=recovery_time)
        follower = aio.AsyncEtcdElection(client, name, path,
                                         work_time=work_time,
                                         recovery_time=recovery_time)
        assert await hung.campaign()
        shown_life = time.monotonic()
        lost = hung.term.lost
        # The leader's worker shows no life from here on.
        assert await follower.campaign(timeout=WAIT)
        took = time.monotonic() - shown_life
        # Its own guard ended its term first.
        assert lost.is_set() and not hung.is_elected
        print('\nasyncio takeover %.2f s after the last sign of life' % took)
        # The lease (etcd's minimum 2 s) after the keepalive stopped at
        # work_time, plus recovery and etcd's expiry granularity.
        assert took <= 2 * work_time + recovery_time + 2
        await follower.aclose()
        await hung.aclose()


@pytest.mark.asyncio
async def test_key_deleted_by_someone_else_ends_the_term(etcd_v3_server,
                                                         etcd3_client,
                                                         etcd_prefix):
    lost = []
    async with async_client(etcd_v3_server) as client:
        e = aio.AsyncEtcdElection(
            client, unique_name(), etcd_prefix + '/el', work_time=30,
            recovery_time=2, on_lost=lambda t: lost.append(time.monotonic()))
        assert await e.campaign()
        await asyncio.sleep(0.2)         # the guard is watching
        # Renewals every 10 s: only the guard can notice.
        await asyncio.to_thread(etcd3_client.delete, e.master_key)
        deleted = time.monotonic()
        await asyncio.wait_for(e.term.lost.wait() if e.term else
                               asyncio.sleep(0), WAIT)
        assert lost and not e.is_elected
        print('\nasyncio: on_lost %.3f s after the delete'
              % (lost[0] - deleted))
        assert lost[0] - deleted < 1.0
        await e.aclose()


@pytest.mark.asyncio
async def test_paused_etcd_ends_the_term_at_the_lease_deadline(
        fresh_etcd_v3_server, etcd_prefix):
    """A renewal that hangs does not keep the term past its lease."""
    server = fresh_etcd_v3_server
    work_time = 3
    ends = []
    async with async_client(server, timeout=10) as client:
        e = aio.AsyncEtcdElection(
            client, unique_name(), etcd_prefix + '/el', work_time=work_time,
            recovery_time=1, on_lost=lambda t: ends.append(time.monotonic()))
        assert await e.campaign()
        # Keep showing life, as a working leader does.
        assert e.is_elected
        server.pause()
        paused = time.monotonic()
        try:
            while not ends:
                e.check_in() if e.is_elected else None
                await asyncio.sleep(0.1)
                assert time.monotonic() - paused < WAIT
        finally:
            server.resume()
        took = ends[0] - paused
        print('\nasyncio: term ended %.2f s into an etcd pause '
              '(work_time %s s)' % (took, work_time))
        # By the local lease deadline: at most work_time after the last
        # confirmed renewal, which came before the pause.
        assert took <= work_time
        assert await e.campaign(timeout=WAIT)    # etcd is back
        await e.aclose()
