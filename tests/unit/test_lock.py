"""EtcdLock and AsyncEtcdLock on the in-memory fakes (v2 and v3).

The promise checked first is at most one holder at a time, from the
intervals each holder logged; then the queue's order, the fencing token,
timeouts and withdrawal, the keepalive and what ends a hold.
"""

import asyncio
import threading
import time

import pytest

from etcdwatch import aio
from etcdwatch.aio.lock import AsyncEtcdLock
from etcdwatch import backends
from etcdwatch.backends import v2 as v2_backend
from etcdwatch.lock import EtcdLock
from etcdwatch.lock import EtcdLockLost
from etcdwatch.testing import FakeEtcd3Server
from etcdwatch.testing import FakeEtcdClient
from tests.helpers import wait_until

PATH = '/locks'
WAIT = 20.0


def ticking(fake):
    """Move ``fake``'s clock with real time, until the event returned is set.

    So its leases expire as a real etcd's do.
    """
    stop = threading.Event()

    def tick():
        last = time.monotonic()
        while not stop.wait(0.02):
            now = time.monotonic()
            fake.advance(now - last)
            last = now
    threading.Thread(target=tick, daemon=True).start()
    return stop


@pytest.fixture(params=['v2', 'v3'])
def client(request):
    """A v2 FakeEtcdClient, or an etcd3gw client on a FakeEtcd3Server.

    The FakeEtcd3Server's clock follows real time.
    """
    if request.param == 'v2':
        yield FakeEtcdClient()
        return
    fake = FakeEtcd3Server()
    stop = ticking(fake)
    yield fake.client()
    stop.set()


def queue_of(client, name='job'):
    return backends.for_client(client).read_queue(PATH + '/' + name).entries


def assert_one_at_a_time(intervals):
    """``intervals``: (start, end, who, token); none may overlap."""
    intervals = sorted(intervals)
    for a, b in zip(intervals, intervals[1:]):
        assert a[1] <= b[0], 'two holders at once: %r and %r' % (a, b)
    tokens = [i[3] for i in intervals]
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens), \
        'fencing tokens do not grow: %r' % tokens


def test_at_most_one_holder_among_threads(client):
    locks = [EtcdLock(client, 'job', PATH, ttl=5) for _ in range(5)]
    intervals = []

    def work(lock, who):
        for _ in range(4):
            with lock:
                start = time.monotonic()
                assert lock.is_held
                token = lock.fencing_token
                time.sleep(0.005)
                assert lock.is_held
                intervals.append((start, time.monotonic(), who, token))
    threads = [threading.Thread(target=work, args=(lock, i))
               for i, lock in enumerate(locks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive()
    assert len(intervals) == 20
    assert {i[2] for i in intervals} == set(range(5))
    assert_one_at_a_time(intervals)
    assert queue_of(client) == []


def test_waiters_are_served_in_the_order_they_queued(client):
    holder = EtcdLock(client, 'job', PATH, ttl=5)
    assert holder.acquire()
    order = []
    waiters = [EtcdLock(client, 'job', PATH, ttl=5) for _ in range(4)]
    threads = []
    for i, lock in enumerate(waiters):
        def wait(lock=lock, i=i):
            with lock:
                order.append(i)
        t = threading.Thread(target=wait)
        t.start()
        threads.append(t)
        # Queued (its key exists) before the next one starts.
        wait_until(lambda: len(queue_of(client)) == i + 2, WAIT)
    holder.release()
    for t in threads:
        t.join(WAIT)
    assert order == [0, 1, 2, 3]


class CountingV2Backend(v2_backend.V2Backend):
    """Counts each read of the queue."""

    def __init__(self, client):
        super(CountingV2Backend, self).__init__(client)
        self.reads = 0

    def read_queue(self, prefix):
        self.reads += 1
        return super(CountingV2Backend, self).read_queue(prefix)


def test_a_release_wakes_only_the_next_waiter():
    client = FakeEtcdClient()
    holder = EtcdLock(client, 'job', PATH, ttl=30)
    assert holder.acquire()
    counted = [CountingV2Backend(client) for _ in range(3)]
    waiters = [EtcdLock(b, 'job', PATH, ttl=30) for b in counted]
    threads = []
    for i, lock in enumerate(waiters):
        t = threading.Thread(target=lock.acquire)
        t.start()
        threads.append(t)
        wait_until(lambda: len(queue_of(client)) == i + 2, WAIT)
    wait_until(lambda: client.waiting_watches >= 3, WAIT)
    before = [b.reads for b in counted]
    holder.release()
    threads[0].join(WAIT)
    assert waiters[0].is_held
    time.sleep(0.2)
    after = [b.reads for b in counted]
    assert after[0] == before[0] + 1
    assert after[1:] == before[1:], 'a waiter further back woke up'
    for lock, t in zip(waiters, threads):
        t.join(WAIT)
        assert lock.is_held
        lock.release()


def test_non_blocking_and_timeout_leave_no_key(client):
    holder = EtcdLock(client, 'job', PATH, ttl=5)
    other = EtcdLock(client, 'job', PATH, ttl=5)
    assert holder.acquire(blocking=False)
    assert not other.acquire(blocking=False)
    started = time.monotonic()
    assert not other.acquire(timeout=0.3)
    assert time.monotonic() - started < 5
    assert [e.value for e in queue_of(client)] == [holder.id]
    assert other.fencing_token is None and not other.is_held
    holder.release()
    assert other.acquire(timeout=5)
    assert other.fencing_token > 0
    other.release()
    assert queue_of(client) == []


def test_the_fencing_token_is_the_keys_creation_index(client):
    lock = EtcdLock(client, 'job', PATH, ttl=5)
    tokens = []
    for _ in range(3):
        with lock:
            [entry] = queue_of(client)
            assert entry.key == lock.key
            assert entry.created_index == lock.fencing_token
            tokens.append(lock.fencing_token)
    assert tokens == sorted(set(tokens))
    assert lock.fencing_token is None and lock.key is None


def test_misuse_raises():
    client = FakeEtcdClient()
    lock = EtcdLock(client, 'job', PATH, ttl=5)
    with pytest.raises(RuntimeError, match='not acquired'):
        lock.release()
    lock.acquire()
    with pytest.raises(RuntimeError, match='re-entrant'):
        lock.acquire()
    lock.release()
    with pytest.raises(RuntimeError):
        lock.release()
    holder = EtcdLock(client, 'job', PATH, ttl=5)
    assert holder.acquire()
    waiting = threading.Thread(target=lock.acquire, args=(True, 0.5))
    waiting.start()
    wait_until(lambda: lock.key is not None, WAIT)
    with pytest.raises(RuntimeError, match='in progress'):
        lock.release()
    waiting.join(WAIT)
    holder.release()


@pytest.mark.parametrize('kwargs, argument', [
    (dict(name=''), 'name'),
    (dict(name='a/b'), 'name'),
    (dict(lock_path='locks'), 'lock_path'),
    (dict(ttl=0), 'ttl'),
    (dict(ttl='5'), 'ttl'),
    (dict(max_silence=-1), 'max_silence'),
])
def test_bad_arguments_are_named(kwargs, argument):
    args = dict(name='job', lock_path=PATH, ttl=5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=argument):
        EtcdLock(FakeEtcdClient(), **args)
    lock = EtcdLock(FakeEtcdClient(), 'job', PATH, ttl=5)
    with pytest.raises(ValueError, match='timeout'):
        lock.acquire(timeout=-1)
    with pytest.raises(ValueError, match='blocking'):
        lock.acquire(blocking=None)


def test_the_keepalive_keeps_a_waiter_and_a_holder_past_the_ttl(client):
    holder = EtcdLock(client, 'job', PATH, ttl=1)
    waiter = EtcdLock(client, 'job', PATH, ttl=1)
    assert holder.acquire()
    got = []
    t = threading.Thread(target=lambda: got.append(waiter.acquire()))
    t.start()
    time.sleep(3.5)           # several TTLs: only renewals keep the keys
    assert holder.is_held
    holder.check_in()
    assert [e.value for e in queue_of(client)] == [holder.id, waiter.id]
    assert not got
    holder.release()
    t.join(WAIT)
    assert got == [True]
    assert waiter.stats()['renewals'] >= 2
    waiter.release()


def test_a_holder_that_stops_checking_in_loses_the_lock(client):
    """max_silence: a hung holder's key expires; it knows first."""
    hung = EtcdLock(client, 'job', PATH, ttl=1, max_silence=0.5)
    waiter = EtcdLock(client, 'job', PATH, ttl=1)
    assert hung.acquire()
    no_longer_held = []

    def watch_hung():
        while hung.is_held:
            time.sleep(0.005)
        no_longer_held.append(time.monotonic())
    watcher = threading.Thread(target=watch_hung)
    watcher.start()
    assert waiter.acquire(timeout=WAIT)
    acquired = time.monotonic()
    watcher.join(WAIT)
    assert no_longer_held[0] <= acquired
    with pytest.raises(EtcdLockLost):
        hung.check_in()
    hung.release()              # quietly: the hold was lost
    waiter.release()


def test_a_deleted_key_ends_the_hold(client):
    lock = EtcdLock(client, 'job', PATH, ttl=3)
    assert lock.acquire()
    backends.for_client(client).delete_if(lock.key, lock.id)
    wait_until(lambda: not lock.is_held, WAIT)
    with pytest.raises(EtcdLockLost):
        lock.check_in()
    assert lock.stats()['lost'] == 1
    lock.release()
    assert lock.acquire(timeout=5)
    lock.release()


def test_release_tells_whether_our_key_was_still_there(client):
    lock = EtcdLock(client, 'job', PATH, ttl=30)
    assert lock.acquire()
    assert lock.release() is True
    assert queue_of(client) == []
    assert lock.acquire()
    # Gone before the release (deleted, as an expiry would): False.
    backends.for_client(client).delete_if(lock.key, lock.id)
    assert lock.release() is False
    assert lock.acquire(timeout=5)
    assert lock.release() is True


def test_a_collected_lock_deletes_its_key(client):
    lock = EtcdLock(client, 'job', PATH, ttl=30)
    assert lock.acquire()
    del lock
    import gc
    gc.collect()
    wait_until(lambda: queue_of(client) == [], WAIT)


# -- asyncio ----------------------------------------------------------------

def aio_client_of(fake):
    return aio.AsyncEtcd3Client([fake.base_url.split('//')[1]],
                                transport=fake.async_httpx_transport())


@pytest.mark.asyncio
async def test_aio_one_holder_at_a_time_in_order():
    fake = FakeEtcd3Server()
    async with aio_client_of(fake) as c:
        locks = [AsyncEtcdLock(c, 'job', PATH, ttl=5) for _ in range(4)]
        intervals, order = [], []

        async def work(lock, who):
            async with lock:
                order.append(who)
                start = time.monotonic()
                assert lock.is_held
                token = lock.fencing_token
                await asyncio.sleep(0.01)
                intervals.append((start, time.monotonic(), who, token))
        assert await locks[0].acquire()
        tasks = []
        for i, lock in enumerate(locks[1:], 1):
            tasks.append(asyncio.ensure_future(work(lock, i)))
            while len(queue_of(fake.client())) < i + 1:
                await asyncio.sleep(0.01)
        await locks[0].release()
        await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
        assert order == [1, 2, 3]
        assert_one_at_a_time(intervals)
        for lock in locks:
            await lock.aclose()
    assert queue_of(fake.client()) == []


@pytest.mark.asyncio
async def test_aio_cancelled_acquire_withdraws_its_key():
    fake = FakeEtcd3Server()
    async with aio_client_of(fake) as c:
        # Long TTLs: a loaded machine must not end the holder's hold.
        holder = AsyncEtcdLock(c, 'job', PATH, ttl=30)
        waiter = AsyncEtcdLock(c, 'job', PATH, ttl=30)
        assert await holder.acquire()
        task = asyncio.ensure_future(waiter.acquire())
        while len(queue_of(fake.client())) < 2:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert [e.value for e in queue_of(fake.client())] == [holder.id]
        assert not await waiter.acquire(timeout=0.3)
        assert not await waiter.acquire(blocking=False)
        assert [e.value for e in queue_of(fake.client())] == [holder.id]
        assert await holder.holder() == holder.id
        await holder.release()
        assert await waiter.acquire(timeout=WAIT)
        assert waiter.fencing_token > 0
        with pytest.raises(RuntimeError):
            await waiter.acquire()
        await waiter.release()
        with pytest.raises(RuntimeError):
            await waiter.release()
        await holder.aclose()
        await waiter.aclose()


@pytest.mark.asyncio
async def test_aio_a_deleted_key_ends_the_hold():
    fake = FakeEtcd3Server()
    async with aio_client_of(fake) as c:
        lock = AsyncEtcdLock(c, 'job', PATH, ttl=3)
        assert await lock.acquire()
        fake.client().delete(lock.key)
        deadline = time.monotonic() + WAIT
        while lock.is_held:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        with pytest.raises(EtcdLockLost):
            lock.check_in()
        await lock.aclose()


def test_is_held_never_past_the_local_lease_deadline():
    """The rules on a manual clock: held until sent + ttl - margin."""
    from etcdwatch import driving
    from etcdwatch.rules import lock as rules

    now = [100.0]
    state = rules.LockState('job', PATH + '/job', 'me', 8,
                            threading.Event, clock=lambda: now[0])

    class Host(object):
        def _ensure_keepalive(self, place):
            pass
    backend = backends.for_client(FakeEtcdClient())
    assert driving.drive(state.acquire(lambda: False), backend, Host())
    token = state.fencing_token
    assert token is not None and state.is_held()
    # Margin: a quarter of the TTL, at most 1 s.
    now[0] = 100.0 + 8 - 1 - 0.001
    assert state.is_held()
    now[0] = 100.0 + 8 - 1
    assert not state.is_held()
    assert state.fencing_token == token      # not lost: only not fresh
    # A renewal sent now confirms a new deadline.
    assert driving.drive(state._renew(state.place), backend, Host())
    assert state.is_held()
    now[0] += 7
    assert not state.is_held()


@pytest.mark.asyncio
async def test_aio_release_tells_whether_our_key_was_still_there():
    fake = FakeEtcd3Server()
    async with aio_client_of(fake) as c:
        lock = AsyncEtcdLock(c, 'job', PATH, ttl=30)
        assert await lock.acquire()
        assert await lock.release() is True
        assert await lock.acquire()
        fake.client().delete(lock.key)
        assert await lock.release() is False
        await lock.aclose()


# -- shared (reader) holds --------------------------------------------------

def test_shared_holders_hold_together_and_a_writer_waits_for_them(client):
    readers = [EtcdLock(client, 'job', PATH, ttl=30, shared=True)
               for _ in range(2)]
    writer = EtcdLock(client, 'job', PATH, ttl=30)
    late = EtcdLock(client, 'job', PATH, ttl=30, shared=True)
    assert all(r.acquire(blocking=False) for r in readers)
    assert all(r.is_held for r in readers)
    assert readers[0].id.startswith('shared:')
    assert not writer.acquire(blocking=False)
    got = []
    waiting = threading.Thread(target=lambda: got.append(
        writer.acquire(timeout=WAIT)))
    waiting.start()
    wait_until(lambda: len(queue_of(client)) == 3, WAIT)
    # A reader queued behind a waiting writer waits for it.
    assert not late.acquire(blocking=False)
    assert readers[0].release() is True
    assert not got and not writer.is_held
    assert readers[1].release() is True
    waiting.join(WAIT)
    assert got == [True] and writer.is_held
    reading = threading.Thread(target=lambda: got.append(
        late.acquire(timeout=WAIT)))
    reading.start()
    wait_until(lambda: len(queue_of(client)) == 2, WAIT)
    assert not late.is_held
    assert writer.release() is True
    reading.join(WAIT)
    assert got == [True, True] and late.is_held
    assert late.release() is True
    assert queue_of(client) == []


def test_shared_must_be_a_bool(client):
    with pytest.raises(ValueError, match='shared'):
        EtcdLock(client, 'job', PATH, ttl=30, shared='yes')
    with pytest.raises(ValueError, match='shared'):
        AsyncEtcdLock(object(), 'job', PATH, ttl=30, shared=1)


@pytest.mark.asyncio
async def test_aio_shared_holders_hold_together_and_a_writer_waits():
    fake = FakeEtcd3Server()
    async with aio_client_of(fake) as c:
        readers = [AsyncEtcdLock(c, 'job', PATH, ttl=30, shared=True)
                   for _ in range(2)]
        writer = AsyncEtcdLock(c, 'job', PATH, ttl=30)
        assert await readers[0].acquire(blocking=False)
        assert await readers[1].acquire(blocking=False)
        assert not await writer.acquire(blocking=False)
        waiting = asyncio.ensure_future(writer.acquire(timeout=WAIT))
        deadline = time.monotonic() + WAIT
        while len(backends.for_client(fake.client()).read_queue(
                PATH + '/job').entries) < 3:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert await readers[0].release()
        assert not waiting.done()
        assert await readers[1].release()
        assert await asyncio.wait_for(waiting, WAIT)
        assert writer.is_held
        assert await writer.release()
        for lock in readers + [writer]:
            await lock.aclose()
