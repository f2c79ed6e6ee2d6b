"""The asyncio watchers on the in-memory v3 etcd (no server, no network).

The fake is held to a real etcd by tests/functional/
test_fake_v3_conformance.py; the same behaviours run on a real etcd in
tests/functional/test_aio_watcher.py.
"""

import asyncio

import pytest

from etcdwatch import aio
from etcdwatch.testing import fake_v3

TIMEOUT = 10


@pytest.fixture
def fake():
    return fake_v3.FakeEtcd3Server()


def client_of(fake):
    return aio.AsyncEtcd3Client([fake.base_url.split('//')[1]],
                                transport=fake.async_httpx_transport())


class Recorder(aio.AsyncEtcdChangeWatcher):
    def __init__(self, *args, **kwargs):
        self.reports = []
        super().__init__(*args, **kwargs)

    def added(self, short_key, value):          # a plain hook
        self.reports.append(('put', short_key, value))

    async def removed(self, short_key):         # an async one
        await asyncio.sleep(0)
        self.reports.append(('delete', short_key))


async def until(predicate, timeout=TIMEOUT):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, 'timed out'
        await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_plain_and_async_hooks_see_every_change(fake):
    writer = fake.client()
    writer.put('/p/a', '1')
    async with client_of(fake) as client:
        async with Recorder(client, 'rec', '/p', heartbeat=2) as w:
            assert await w.wait_synced(TIMEOUT)
            writer.put('/p/b', '2')
            writer.put('/p/b', '2')
            writer.delete('/p/a')
            await until(lambda: len(w.reports) == 3)
            assert w.etcd_data == {'/p/b': '2'}
    assert w.reports == [('put', 'a', '1'), ('put', 'b', '2'),
                         ('delete', 'a')]


@pytest.mark.asyncio
async def test_stopped_watcher_starts_no_callback(fake):
    writer = fake.client()
    started = asyncio.Event()
    release = asyncio.Event()

    class Slow(Recorder):
        async def added(self, short_key, value):
            started.set()
            await release.wait()
            self.reports.append(('put', short_key, value))

    async with client_of(fake) as client:
        w = Slow(client, 'slow', '/q', heartbeat=2).start()
        assert await w.wait_synced(TIMEOUT)
        writer.put('/q/a', '1')
        writer.put('/q/b', '2')
        await asyncio.wait_for(started.wait(), TIMEOUT)
        w.stop()                    # while a callback runs: not cut short
        release.set()
        await asyncio.wait_for(w.aclose(), TIMEOUT)
    # The running callback finished; the next one never started.
    assert w.reports == [('put', 'a', '1')]


@pytest.mark.asyncio
async def test_callback_errors_are_retried_with_backoff(fake):
    writer = fake.client()
    attempts = []

    class Failing(Recorder):
        CALLBACK_RETRY_MIN = 0.01

        def added(self, short_key, value):
            attempts.append(asyncio.get_running_loop().time())
            if len(attempts) < 4:
                raise ValueError('try again')
            super().added(short_key, value)

    async with client_of(fake) as client:
        async with Failing(client, 'failing', '/r', heartbeat=2) as w:
            writer.put('/r/a', '1')
            await until(lambda: w.reports)
    assert w.reports == [('put', 'a', '1')]
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    # 0.01, 0.02, 0.04 s at least: the waits grow.
    assert gaps[0] >= 0.005 and gaps[2] >= 0.03, gaps
    assert w.stats()['callback_errors'] == 3


@pytest.mark.asyncio
async def test_watch_prefix_on_the_fake(fake):
    writer = fake.client()
    writer.put('/s/x', '1')
    async with client_of(fake) as client:
        changes = aio.watch_prefix(client, '/s', heartbeat=2)
        assert await anext(changes) == ('add', 'x', '1')
        writer.put('/s/x', '2')
        assert await asyncio.wait_for(anext(changes), TIMEOUT) == (
            'change', 'x', '2')
        await changes.aclose()


def test_bad_arguments_name_the_argument(fake):
    client = client_of(fake)
    with pytest.raises(ValueError, match='watch_path'):
        Recorder(client, 'bad', 'no-slash')
    with pytest.raises(ValueError, match='heartbeat'):
        Recorder(client, 'bad', '/ok', heartbeat=-1)
    with pytest.raises(TypeError, match='etcd_client'):
        Recorder(object(), 'bad', '/ok')


@pytest.mark.asyncio
async def test_a_failing_hook_is_named_in_the_log(fake, caplog):
    writer = fake.client()

    class Broken(Recorder):
        CALLBACK_RETRY_MIN = 0.01

        def added(self, key, value):
            if not self.reports:
                self.reports.append('failed once')
                raise ValueError('broken')

    async with client_of(fake) as client:
        async with Broken(client, 'broken', '/t', heartbeat=2) as w:
            writer.put('/t/a', '1')
            await until(lambda: w.stats()['callback_errors'] == 1)
    failures = [r.getMessage() for r in caplog.records
                if 'will retry' in r.getMessage()]
    # The hook that raised (added), not the do_all_work that called it.
    assert failures and failures[0].startswith(
        'broken: callback added() failed on')


@pytest.mark.asyncio
async def test_watchers_of_one_client_share_a_recent_quorum_read(fake):
    from etcdwatch.backends import v3_async
    writer = fake.client()
    writer.put('/q/a', '1')
    async with client_of(fake) as client:
        first = v3_async.AsyncV3Backend(client)
        second = v3_async.AsyncV3Backend(client)
        reads = []
        original = client.post

        async def post(path, payload, **kwargs):
            reads.append(path)
            return await original(path, payload, **kwargs)
        client.post = post
        current = await first.check_current('/q', 1)
        assert reads == ['kv/range']
        # Another watcher's check just after: answered by that read.
        assert await second.check_current('/q', current) == current
        assert reads == ['kv/range']
        # One that stands past it asks etcd itself.
        writer.put('/q/b', '2')
        assert await second.check_current('/q', current + 1) == current + 1
        assert reads == ['kv/range', 'kv/range']
