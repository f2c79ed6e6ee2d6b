"""AsyncEtcdElection on the in-memory v3 etcd (no server, no network).

The same behaviours run on a real etcd in tests/functional/
test_aio_election.py, with threaded candidates in the same election.
"""

import asyncio

import pytest

from etcdwatch import aio
from etcdwatch import EtcdElectionLost
from etcdwatch.testing import FakeEtcd3Server

E = '/election'
TIMEOUT = 10


@pytest.fixture
def fake():
    return FakeEtcd3Server()


def client_of(fake):
    return aio.AsyncEtcd3Client([fake.base_url.split('//')[1]],
                                transport=fake.async_httpx_transport())


def holder(fake):
    found = fake.client().get(E + '/master_svc')
    return found[0].decode() if found else None


def candidate(client, **kwargs):
    kwargs.setdefault('work_time', 6)
    kwargs.setdefault('recovery_time', 1)
    return aio.AsyncEtcdElection(client, 'svc', E, **kwargs)


@pytest.mark.asyncio
async def test_one_leads_and_the_next_takes_over_on_resign(fake):
    async with client_of(fake) as client:
        a, b = candidate(client), candidate(client)
        assert await a.campaign(timeout=TIMEOUT)
        assert a.is_elected and holder(fake) == a.thread_id
        assert await a.leader() == a.thread_id
        first = a.fencing_token
        waiting = asyncio.ensure_future(b.campaign())
        await asyncio.sleep(0.2)
        assert not waiting.done() and not b.is_elected
        await a.resign()
        assert await asyncio.wait_for(waiting, TIMEOUT)
        assert b.is_elected and not a.is_elected
        assert b.fencing_token > first
        await b.aclose()
        await a.aclose()
        assert holder(fake) is None


@pytest.mark.asyncio
async def test_campaign_times_out_and_withdraws(fake):
    async with client_of(fake) as client:
        a, b = candidate(client), candidate(client)
        assert await a.campaign()
        assert not await b.campaign(timeout=0.3)
        await a.resign()
        await asyncio.sleep(0.3)
        # b withdrew: it does not take the key a gave up.
        assert holder(fake) is None and not b.is_elected
        await a.aclose()
        await b.aclose()


@pytest.mark.asyncio
async def test_cancelling_a_campaign_withdraws_cleanly(fake):
    async with client_of(fake) as client:
        a, b = candidate(client), candidate(client)
        assert await a.campaign()
        task = asyncio.ensure_future(b.campaign())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await a.resign()
        await asyncio.sleep(0.3)
        assert holder(fake) is None and not b.is_elected
        await a.aclose()
        await b.aclose()


@pytest.mark.asyncio
async def test_leadership_resigns_after_the_body_unwound(fake):
    events = []
    async with client_of(fake) as client:
        a = candidate(client)

        async def lead():
            async with a.leadership() as term:
                events.append(('leading', term.fencing_token))
                try:
                    await asyncio.sleep(60)
                finally:
                    # Still the leader while the body unwinds.
                    events.append(('unwinding', holder(fake) == a.thread_id,
                                   a.is_elected))
        task = asyncio.ensure_future(lead())
        while not events:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert events[1] == ('unwinding', True, True)
        assert holder(fake) is None and not a.is_elected
        await a.aclose()


@pytest.mark.asyncio
async def test_callbacks_and_lost_when_the_key_is_deleted(fake):
    elected, lost = [], []

    async def on_lost(term):
        await asyncio.sleep(0)
        lost.append(term)

    async with client_of(fake) as client:
        a = candidate(client, on_elected=elected.append, on_lost=on_lost)
        assert await a.campaign()
        term = a.term
        assert elected == [term] and not term.lost.is_set()
        await asyncio.sleep(0.1)        # the guard is watching
        fake.client().delete(E + '/master_svc')     # an operator
        await asyncio.wait_for(term.lost.wait(), TIMEOUT)
        assert lost == [term] and not a.is_elected
        with pytest.raises(EtcdElectionLost):
            a.check_in()
        with pytest.raises(EtcdElectionLost):
            term.check()
        await a.aclose()


@pytest.mark.asyncio
async def test_extend_election(fake):
    async with client_of(fake) as client:
        a = candidate(client)
        assert await a.campaign()
        await a.extend_election(20)
        assert a.is_elected
        fake.client().delete(E + '/master_svc')
        with pytest.raises(EtcdElectionLost):
            await a.extend_election(20)
        await a.aclose()


class Recorder(aio.AsyncEtcdChangeWatcher):
    def __init__(self, *args, **kwargs):
        self.reports = []
        super().__init__(*args, **kwargs)

    async def added(self, key, value):
        self.reports.append(key)


@pytest.mark.asyncio
async def test_only_the_elected_watcher_delivers_and_stop_hands_over(fake):
    writer = fake.client()
    writer.put('/w/a', '1')
    async with client_of(fake) as client:
        first = Recorder(client, 'svc', '/w', election_path=E,
                         wait_until_elected=True, heartbeat=1,
                         recovery_time=1).start()
        while not first.reports:
            await asyncio.sleep(0.01)
        second = Recorder(client, 'svc', '/w', election_path=E,
                          wait_until_elected=True, heartbeat=1,
                          recovery_time=1).start()
        writer.put('/w/b', '2')
        while first.reports != ['a', 'b']:
            await asyncio.sleep(0.01)
        assert second.reports == [] and not second.synced
        await first.aclose()            # resigns: the second takes over
        while second.reports != ['a', 'b']:
            await asyncio.sleep(0.01)
        assert second.etcd_elector.is_elected
        await second.aclose()
    assert holder(fake) is None


def test_bad_arguments_name_the_argument(fake):
    client = client_of(fake)
    for kwargs, argument in (({'work_time': 0}, 'work_time'),
                             ({'recovery_time': -1}, 'recovery_time'),
                             ({'on_lost': 3}, 'on_lost')):
        with pytest.raises(ValueError, match=argument):
            candidate(client, **kwargs)
    with pytest.raises(ValueError, match='name'):
        aio.AsyncEtcdElection(client, 'a/b', E, work_time=5)


@pytest.mark.asyncio
async def test_leaders_async_iterator(fake):
    async with client_of(fake) as client:
        a, b = candidate(client), candidate(client)
        leaders = candidate(client).leaders()
        assert await asyncio.wait_for(anext(leaders), TIMEOUT) is None
        assert await a.campaign()
        assert await asyncio.wait_for(anext(leaders), TIMEOUT) == \
            a.thread_id
        await a.resign()
        assert await b.campaign()
        seen = [await asyncio.wait_for(anext(leaders), TIMEOUT)]
        if seen[0] is None:          # the gap between the two, if seen
            seen.append(await asyncio.wait_for(anext(leaders), TIMEOUT))
        assert seen[-1] == b.thread_id
        await leaders.aclose()
        await a.aclose()
        await b.aclose()


@pytest.mark.asyncio
async def test_candidate_id_is_the_keys_value(fake):
    async with client_of(fake) as client:
        e = candidate(client, candidate_id='member-7.a1')
        assert await e.campaign(timeout=TIMEOUT)
        assert holder(fake) == 'member-7.a1'
        assert await e.leader() == 'member-7.a1'
        await e.aclose()


def test_a_bad_candidate_id_is_named(fake):
    with pytest.raises(ValueError, match='candidate_id'):
        candidate(object(), candidate_id='')
