"""A pass of the loop follows the watch stream for up to a heartbeat.

``Mirror.step(..., follow=)``: after a watch message was delivered whole,
the pass watches again for what ``follow()`` allows, so a busy prefix
costs one ``do_tick`` (and one term check) per heartbeat, not one per
message.  Only a pass's first watch takes silence as a reason for a
quorum read; ``do_watch()`` on its own watches once; stop(), a lost term
and (for the asyncio iterator) a change to yield end the pass.
"""

import asyncio
import itertools
import threading

import pytest

from etcdwatch import aio
from etcdwatch import EtcdWatcher
from etcdwatch.testing import FakeEtcd3Server
from etcdwatch.testing import FakeEtcdClient
from tests.helpers import Runner
from tests.helpers import wait_until

P = '/f'
E = '/elect'
WAIT = 10


class Counting(EtcdWatcher):
    """Counts do_tick; records do_work keys; runs ``hook(key)`` in each."""

    DANGER_PAUSE = 0.1

    def __init__(self, *args, **kwargs):
        self.calls = []
        self.ticks = 0
        self.hook = None
        super().__init__(*args, **kwargs)

    def do_tick(self):
        self.ticks += 1

    def do_work(self, action, key, value):
        self.calls.append(key)
        if self.hook is not None:
            self.hook(key)

    def do_all_work(self):
        pass


def spy(watcher):
    """Log every watch and check_current of ``watcher``'s backend, in order.

    A watch is logged as ``['watch', timeout, delivered]`` when it begins
    (``delivered`` is filled in when it returns); a check as
    ``['check']``.
    """
    log = []
    backend = watcher._backend
    watch, check = backend.watch_tree_events, backend.check_current

    def watching(path, index, timeout):
        entry = ['watch', timeout, None]
        log.append(entry)
        events = watch(path, index, timeout)
        entry[2] = bool(events)
        return events

    def checking(path, index):
        log.append(['check'])
        return check(path, index)
    backend.watch_tree_events = watching
    backend.check_current = checking
    return log


@pytest.fixture(params=['v2', 'v3'])
def etcd(request):
    """(a client for the watcher, write(key, value) from another)."""
    if request.param == 'v2':
        client = FakeEtcdClient()
        return client, lambda key, value: client.write(key, value)
    fake = FakeEtcd3Server()
    writer = fake.client()
    return fake.client(), lambda key, value: writer.put(key, value)


def _thread(watcher):
    thread = threading.Thread(target=watcher.watch_forever, daemon=True)
    thread.start()
    return thread


# -- (a) a busy stream --

def test_a_busy_stream_costs_one_tick_per_pass_and_still_one_per_heartbeat(
        etcd):
    client, write = etcd
    w = Counting(client, 'w', P, heartbeat=0.5)
    log = spy(w)
    busy = threading.Event()
    busy.set()
    numbers = itertools.count()

    def next_write(key):
        # Each callback writes the next key: the stream is never silent,
        # so a pass can only end at its heartbeat.
        if busy.is_set():
            n = next(numbers)
            write('%s/k%d' % (P, n % 10), 'v%d' % n)
    w.hook = next_write
    with Runner(w):
        write(P + '/first', '1')
        wait_until(lambda: w.calls)
        ticks = w.ticks
        delivered = sum(1 for e in log if e[0] == 'watch' and e[2])
        # Without a heartbeat to a pass, a busy stream starves do_tick.
        wait_until(lambda: w.ticks >= ticks + 4, timeout=30,
                   message='do_tick starved by a busy stream')
        passes = w.ticks - ticks
        delivered = sum(1 for e in log if e[0] == 'watch' and e[2]) - (
            delivered)
        busy.clear()
    # One tick per pass, not one per message (each pass follows many).
    assert delivered >= 3 * passes, (delivered, passes)
    assert w.stats()['checks'] == 0


# -- (b) silence after a message --

def test_a_follow_up_watch_that_times_out_asks_etcd_nothing(etcd):
    client, write = etcd
    w = Counting(client, 'w', P, heartbeat=0.3)
    log = spy(w)
    write(P + '/a', '1')
    with Runner(w):
        wait_until(lambda: ['check'] in log)
    assert w.calls == [P + '/a']
    first, follow_up, silent, check = log[:4]
    # The pass's first watch (a whole heartbeat) brings the message...
    assert first == ['watch', 0.3, True]
    # ...the follow-up waits what is left of the heartbeat, and its
    # silence ends the pass without a quorum read...
    assert follow_up[0] == 'watch' and follow_up[1] < 0.3
    assert follow_up[2] is False
    # ...which only a silent first watch of a pass earns.
    assert silent == ['watch', 0.3, False]
    assert check == ['check']
    assert w.stats()['checks'] == log.count(['check'])


# -- (c) do_watch on its own --

def test_do_watch_on_its_own_takes_one_message(etcd):
    client, write = etcd
    w = Counting(client, 'w', P, heartbeat=5)
    log = spy(w)
    # The callback makes the next message at once: following would take it.
    w.hook = lambda key: key == P + '/a' and write(P + '/b', '2')
    write(P + '/a', '1')
    w.do_watch()
    assert w.calls == [P + '/a']
    assert [e[0] for e in log] == ['watch']
    w.do_watch()
    assert w.calls == [P + '/a', P + '/b']
    assert len(log) == 2


def test_do_watch_on_its_own_takes_one_v2_message_of_several():
    client = FakeEtcdClient()
    w = Counting(client, 'w', P, heartbeat=5)
    for key in 'abc':
        client.write(P + '/' + key, key)
    w.do_watch()
    # v2: one event a watch; the others wait for the next call.
    assert w.calls == [P + '/a']
    assert w.stats()['events'] == 1


# -- (d) stop() from a callback --

def test_stop_from_a_callback_ends_the_pass(etcd):
    client, write = etcd
    # A heartbeat the test would not outlive: the pass must end at stop().
    w = Counting(client, 'w', P, heartbeat=60)
    log = spy(w)
    watches_at_stop = []

    def stop_at(key):
        if key == P + '/stop':
            w.stop()
            watches_at_stop.append(len(log))
    w.hook = stop_at
    thread = _thread(w)
    try:
        write(P + '/stop', '1')
        thread.join(WAIT)
        assert not thread.is_alive(), 'the pass went on after stop()'
    finally:
        w.stop()
        thread.join(WAIT)
    assert watches_at_stop and len(log) == watches_at_stop[0], log
    assert w.calls == [P + '/stop']


def test_a_re_read_asked_for_in_a_callback_ends_the_pass(etcd):
    client, write = etcd
    w = Counting(client, 'w', P, heartbeat=5)
    indexes = []
    watch = w._backend.watch_tree_events

    def watching(path, index, timeout):
        indexes.append(index)
        return watch(path, index, timeout)
    w._backend.watch_tree_events = watching

    def ask_for_a_re_read(key):
        if key == P + '/reread':
            w.tick = None
    w.hook = ask_for_a_re_read
    with Runner(w):
        write(P + '/reread', '1')
        # The pass ends at once and the next one reads the tree, instead
        # of following from no index at all.
        wait_until(lambda: w.stats()['resyncs'] >= 2, timeout=WAIT)
        write(P + '/after', '2')
        wait_until(lambda: P + '/after' in w.calls, timeout=WAIT)
    assert None not in indexes, indexes


# -- (e) an elected watcher that loses its term --

def test_an_elected_watchers_pass_ends_when_its_term_is_lost():
    client = FakeEtcdClient()
    w = Counting(client, 'w', P, election_path=E, wait_until_elected=True,
                 heartbeat=60, recovery_time=1)
    log = spy(w)
    lost = []

    def lose_at(key):
        if key == P + '/lose':
            # Another worker takes the key; the elector's guard sees it.
            client.write(E + '/master_w', 'intruder')
            wait_until(lambda: not w.etcd_elector.is_elected, timeout=WAIT)
            lost.append((len(log), w.ticks))
    w.hook = lose_at
    thread = _thread(w)
    try:
        assert w.wait_synced(WAIT)
        # The elector's guard and the data watch are both waiting.
        client.wait_for_watches(2)
        write_index = client.write(P + '/lose', '1').modifiedIndex
        assert write_index
        wait_until(lambda: lost)
        watches, ticks = lost[0]
        # The next pass begins (do_tick, then the campaign), long before
        # the 60 s heartbeat: the lost term ended the pass...
        wait_until(lambda: w.ticks > ticks, timeout=WAIT,
                   message='the pass went on after the term was lost')
        # ...without another watch.
        assert len(log) == watches, log
        assert w.calls == [P + '/lose']
    finally:
        w.stop()
        thread.join(WAIT)
    assert not thread.is_alive()


# -- asyncio --

def client_of(fake):
    return aio.AsyncEtcd3Client([fake.base_url.split('//')[1]],
                                transport=fake.async_httpx_transport())


@pytest.mark.asyncio
async def test_the_iterator_yields_a_change_long_before_its_heartbeat():
    fake = FakeEtcd3Server()
    writer = fake.client()
    writer.put('/s/x', '1')
    async with client_of(fake) as client:
        changes = aio.watch_prefix(client, '/s', heartbeat=60)
        try:
            assert await asyncio.wait_for(changes.__anext__(), WAIT) == (
                'add', 'x', '1')
            writer.put('/s/x', '2')
            # The pass ends at the message that brought it, not at the
            # end of a 60 s heartbeat.
            assert await asyncio.wait_for(changes.__anext__(), WAIT) == (
                'change', 'x', '2')
            writer.put('/s/y', '3')
            assert await asyncio.wait_for(changes.__anext__(), WAIT) == (
                'add', 'y', '3')
        finally:
            await changes.aclose()


class _AsyncCounting(aio.AsyncEtcdWatcher):
    def __init__(self, *args, **kwargs):
        self.calls = []
        self.ticks = 0
        self.hook = None
        super().__init__(*args, **kwargs)

    def do_tick(self):
        self.ticks += 1

    async def do_work(self, action, key, value):
        self.calls.append(key)
        if self.hook is not None:
            self.hook(key)

    def do_all_work(self):
        pass


@pytest.mark.asyncio
async def test_asyncio_do_watch_on_its_own_takes_one_message():
    fake = FakeEtcd3Server()
    writer = fake.client()
    async with client_of(fake) as client:
        w = _AsyncCounting(client, 'w', P, heartbeat=5)
        await w.refresh_all_data()
        w.hook = lambda key: key == P + '/a' and writer.put(P + '/b', '2')
        writer.put(P + '/a', '1')
        await w.do_watch()
        assert w.calls == [P + '/a']
        await w.do_watch()
        assert w.calls == [P + '/a', P + '/b']
        await w.aclose()


@pytest.mark.asyncio
async def test_asyncio_run_once_follows_a_busy_stream_for_a_heartbeat():
    fake = FakeEtcd3Server()
    writer = fake.client()
    async with client_of(fake) as client:
        w = _AsyncCounting(client, 'w', P, heartbeat=0.5)
        await w.refresh_all_data()
        numbers = itertools.count()

        def next_write(key):
            n = next(numbers)
            if n < 2000:
                writer.put('%s/k%d' % (P, n % 10), 'v%d' % n)
        w.hook = next_write
        writer.put(P + '/first', '1')
        # One pass follows the self-feeding stream until its heartbeat;
        # it ends (the stream never falls silent).
        assert await asyncio.wait_for(w.run_once(), 30)
        assert w.ticks == 1
        assert len(w.calls) >= 3, w.calls
        assert w.stats()['checks'] == 0
        await w.aclose()
