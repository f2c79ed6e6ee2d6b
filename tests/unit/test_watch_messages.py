"""A watch message handled as a whole (v3), and its callbacks run as a run.

``Backend.watch_tree_events`` returns every event at hand, ending at the
end of a revision; the watcher applies them in one pass and asks the
driver for their ``do_work`` calls in one EACH request.  The guarantees
of one event at a time still hold: callbacks in order, a failing one
retried with the rest behind it, none started after stop(), and a
revision never split.
"""

import asyncio
import threading
import time

import pytest

from etcdwatch import aio
from etcdwatch import backends
from etcdwatch.backends import base
from etcdwatch.backends import v3proto as proto
from etcdwatch import driving
from etcdwatch import EtcdChangeWatcher
from etcdwatch import EtcdWatcher
from etcdwatch.rules import delivery
from etcdwatch.rules import requests
from etcdwatch.testing import FakeEtcd3Server
from tests.helpers import wait_until

WAIT = 10


def _message(revision, *events):
    """A watch message at ``revision`` with ``(key, mod_revision)`` puts."""
    return {'header': {'revision': str(revision)}, 'events': [
        {'kv': {'key': proto.b64(key), 'value': proto.b64('v%d' % rev),
                'mod_revision': str(rev)}} for key, rev in events]}


# -- the cursor -------------------------------------------------------------

def test_pop_all_returns_the_whole_message_then_continues_after_it():
    cursor = proto.Cursor('/p/', '/p0', 10)
    cursor.take(_message(12, ('/p/a', 10), ('/p/b', 11), ('/p/c', 11)), 'w')
    events = cursor.pop_all()
    assert [(e.key, e.index) for e in events] == [
        ('/p/a', 10), ('/p/b', 11), ('/p/c', 11)]
    assert cursor.pop_all() is None
    # The next call asks from after the last revision: nothing is kept
    # back and nothing comes twice.
    assert not cursor.position(12)
    cursor.take(_message(12, ('/p/d', 12)), 'w')
    assert [e.key for e in cursor.pop_all()] == ['/p/d']


def test_asking_again_from_inside_a_returned_message_replays_it():
    cursor = proto.Cursor('/p/', '/p0', 10)
    cursor.take(_message(11, ('/p/a', 10), ('/p/b', 11)), 'w')
    cursor.pop_all()
    # An index already given is asked again: the stream must start over.
    assert cursor.position(11)
    assert cursor.start_revision() == 11


def test_a_message_taken_after_one_event_was_popped_keeps_the_rest():
    cursor = proto.Cursor('/p/', '/p0', 10)
    cursor.take(_message(11, ('/p/a', 10), ('/p/b', 11), ('/p/c', 11)), 'w')
    assert cursor.pop().key == '/p/a'
    assert [e.key for e in cursor.ready(True)] == ['/p/b', '/p/c']


# -- the queue and the driver ----------------------------------------------

def test_work_run_stops_at_a_whole_tree_callback():
    queue = delivery.DeliveryQueue()
    queue.push(('add', '/a', 1))
    queue.push(('add', '/b', 2))
    queue.push(delivery.ALL_WORK)
    queue.push(('add', '/c', 3))
    assert queue.work_run() == [('add', '/a', 1), ('add', '/b', 2)]
    queue.failed()
    queue.succeeded()
    assert queue.head == ('add', '/b', 2) and queue.failures == 0


class _Host(object):
    def __init__(self, fail_at=None):
        self.calls = []
        self.fail_at = fail_at

    def do_work(self, *item):
        if len(self.calls) == self.fail_at:
            raise ValueError('refused %s' % (item,))
        self.calls.append(item)


def _each(items, proceed=lambda: True, done=lambda: None):
    return (yield requests.each('do_work', items, proceed, done))


ITEMS = [('add', '/k%d' % n, n) for n in range(5)]


def test_each_runs_every_item_in_order():
    host = _Host()
    assert driving.drive(_each(ITEMS), None, host) == (5, None)
    assert host.calls == ITEMS


def test_each_stops_at_the_first_that_raises():
    host = _Host(fail_at=2)
    ran, error = driving.drive(_each(ITEMS), None, host)
    assert ran == 2 and isinstance(error, ValueError)
    assert host.calls == ITEMS[:2]


def test_each_asks_proceed_before_every_item():
    host = _Host()
    ran, error = driving.drive(
        _each(ITEMS, proceed=lambda: len(host.calls) < 3), None, host)
    assert (ran, error) == (3, None) and host.calls == ITEMS[:3]


def test_each_ends_at_a_declined_callback():
    host = _Host()

    def run_callback(name, args):
        if len(host.calls) == 1:
            return requests.NOT_RUN
        return getattr(host, name)(*args)
    assert driving.drive(_each(ITEMS), None, host,
                         run_callback=run_callback) == (1, None)


# -- the watchers on the in-memory v3 etcd ----------------------------------

class _Recorder(EtcdWatcher):
    """Records each do_work, and what etcd_data held during it."""

    def __init__(self, *args, **kwargs):
        self.calls = []
        self.fail = set()
        self.hook = None
        super().__init__(*args, **kwargs)

    def do_work(self, action, key, value):
        if self.hook is not None:
            self.hook(key)
        if key in self.fail:
            self.fail.discard(key)
            raise RuntimeError('not now: %s' % key)
        self.calls.append((action, key, value))

    def do_all_work(self):
        pass


def _write_behind(writer, revisions, txn_keys):
    """Plain puts, then one transaction of ``txn_keys`` puts (one rev)."""
    for n in range(revisions):
        writer.put('/p/k%d' % (n % 50), 'v%d' % n)
    writer.transaction({'compare': [], 'success': [
        {'request_put': {'key': proto.b64('/p/t%d' % n),
                         'value': proto.b64('t%d' % n)}}
        for n in range(txn_keys)], 'failure': []})


def _loaded(keys=0):
    """(fake etcd, a loaded _Recorder on /p); then ``keys`` puts behind it.

    The puts are /p/k0, /p/k1... = v0, v1...: one message for the watcher.
    """
    fake = FakeEtcd3Server()
    w = _Recorder(fake.client(), 'w', '/p', heartbeat=1)
    w.refresh_all_data()
    writer = fake.client()
    for n in range(keys):
        writer.put('/p/k%d' % n, 'v%d' % n)
    return fake, w


def _keys(w):
    return [key for _a, key, _v in w.calls]


def test_one_watch_call_applies_a_whole_message():
    fake = FakeEtcd3Server()
    w = _Recorder(fake.client(), 'w', '/p', heartbeat=1)
    w.refresh_all_data()
    _write_behind(fake.client(), 300, 40)
    w.do_watch()
    # 301 revisions, 340 events: one message, one pass.
    assert w.stats()['events'] == 340
    assert len(w.calls) == 340
    assert w.calls[-40:] == [('add', '/p/t%d' % n, 't%d' % n)
                             for n in range(40)]
    snapshot = backends.for_client(fake.client()).read_tree('/p')
    assert w.etcd_data == snapshot.items
    assert w.tick == snapshot.index + 1


def test_a_failing_callback_in_a_message_is_retried_in_order():
    _fake, w = _loaded(20)
    w.CALLBACK_RETRY_MIN = w.CALLBACK_RETRY_MAX = 0.01
    w.fail = {'/p/k7'}
    w.do_watch()
    assert _keys(w) == [
        '/p/k%d' % n for n in range(7)]
    assert w.stats()['callback_errors'] == 1
    w.do_watch()            # the retry: k7 first, then the rest
    assert _keys(w) == [
        '/p/k%d' % n for n in range(20)]


def test_no_callback_of_a_message_starts_after_stop():
    _fake, w = _loaded(20)

    def stop_at_the_fifth(key):
        if key == '/p/k4':
            w.stop()
    w.hook = stop_at_the_fifth
    w.do_watch()
    # The fifth had started when stop() came: it finishes, no other
    # starts.
    assert _keys(w) == [
        '/p/k%d' % n for n in range(5)]


def test_etcd_data_holds_the_whole_message_during_its_callbacks():
    fake, w = _loaded()
    writer = fake.client()
    writer.put('/p/a', '1')
    writer.put('/p/b', '2')
    seen = []
    w.hook = lambda key: seen.append(dict(w.etcd_data))
    w.do_watch()
    assert seen == [{'/p/a': '1', '/p/b': '2'}] * 2


def test_tick_during_a_callback_is_after_that_callbacks_event():
    fake, w = _loaded()
    start = w.tick
    writer = fake.client()
    for key in ('a', 'b', 'c'):
        writer.put('/p/' + key, '1')
    ticks = []
    w.hook = lambda key: ticks.append((key, w.tick))
    w.do_watch()
    assert w.stats()['events'] == 3         # one message
    # As one event at a time: during each callback, tick is the index
    # after that callback's event (the CLI prints tick - 1 as its index).
    assert ticks == [('/p/a', start + 1), ('/p/b', start + 2),
                     ('/p/c', start + 3)]
    assert w.tick == start + 3


def test_a_change_watcher_reports_a_message_in_etcds_order():
    fake = FakeEtcd3Server()
    writer = fake.client()
    writer.put('/p/a', '1')
    reports = []

    class Changes(EtcdChangeWatcher):
        def key_change(self, action, key, value):
            reports.append((action, key, value))

    w = Changes(fake.client(), 'w', '/p', heartbeat=1)
    w.refresh_all_data()
    reports.clear()
    writer.put('/p/a', '1')         # a rewrite: no change
    writer.put('/p/b', 'x')
    writer.delete('/p/b')
    writer.put('/p/a', '2')
    writer.put('/p/a', '2')         # a rewrite: no change
    writer.put('/p/c', 'y')
    w.do_watch()
    assert w.stats()['events'] == 6     # one message
    # One report per real change, in etcd's order, each with the value
    # its event left (not the tree's, which holds the whole message).
    assert reports == [('add', '/p/b', 'x'), ('delete', '/p/b', None),
                       ('change', '/p/a', '2'), ('add', '/p/c', 'y')]
    assert w.implemented_state == {'/p/a': '2', '/p/c': 'y'}


def test_an_elected_watcher_that_loses_its_term_stops_mid_message():
    _fake, w = _loaded(10)
    leading = threading.Event()
    leading.set()
    w._mirror._leading = leading.is_set

    def lose_at_the_third(key):
        if key == '/p/k2':
            leading.clear()
    w.hook = lose_at_the_third
    w.do_watch()
    assert _keys(w) == ['/p/k0', '/p/k1', '/p/k2']


def test_a_backend_of_ones_own_gets_one_event_per_call():
    class One(base.Backend):
        def __init__(self):
            super().__init__(None)
            self.asked = []

        def watch_tree(self, path, from_index, timeout):
            self.asked.append(from_index)
            return base.Event(base.PUT, path + '/a', 'v', from_index, False,
                              from_index)

        read_tree = read_key = watch_key = create = refresh = None
        delete_if = check_current = None

    backend = One()
    assert backend.watch_tree_events('/p', 7, 1) == [
        base.Event(base.PUT, '/p/a', 'v', 7, False, 7)]
    assert backend.asked == [7]


def test_a_quiet_watch_returns_none():
    fake = FakeEtcd3Server()
    backend = backends.for_client(fake.client())
    index = backend.read_tree('/p').index
    assert backend.watch_tree_events('/p', index + 1, 0.05) is None
    fake.client().put('/p/x', '1')
    wait_until(lambda: backend.watch_tree_events('/p', index + 1, WAIT))


# -- the asyncio watcher ------------------------------------------------------

class _AsyncRecorder(aio.AsyncEtcdWatcher):
    def __init__(self, *args, **kwargs):
        self.calls = []
        self.fail = set()
        super().__init__(*args, **kwargs)

    async def do_work(self, action, key, value):
        await asyncio.sleep(0)
        if key in self.fail:
            self.fail.discard(key)
            raise RuntimeError('not now: %s' % key)
        self.calls.append(key)

    def do_all_work(self):
        pass


@pytest.mark.asyncio
async def test_the_asyncio_watcher_applies_a_whole_message():
    fake = FakeEtcd3Server()
    async with aio.AsyncEtcd3Client(
            [fake.base_url.split('//')[1]],
            transport=fake.async_httpx_transport()) as client:
        w = _AsyncRecorder(client, 'w', '/p', heartbeat=1)
        w.CALLBACK_RETRY_MIN = w.CALLBACK_RETRY_MAX = 0.01
        await w.refresh_all_data()
        writer = fake.client()
        for n in range(30):
            writer.put('/p/k%d' % n, 'v%d' % n)
        w.fail = {'/p/k11'}
        await w.do_watch()
        assert w.stats()['events'] == 30
        assert w.calls == ['/p/k%d' % n for n in range(11)]
        await w.do_watch()
        assert w.calls == ['/p/k%d' % n for n in range(30)]
        await w.aclose()


def test_callbacks_that_returned_are_not_run_again_after_a_base_exception():
    _fake, w = _loaded(5)
    original = w.do_work

    def interrupted(action, key, value):
        if key == '/p/k3' and not getattr(w, 'interrupted', False):
            w.interrupted = True
            raise KeyboardInterrupt
        original(action, key, value)
    w.do_work = interrupted
    with pytest.raises(KeyboardInterrupt):
        w.do_watch()
    assert _keys(w) == ['/p/k0', '/p/k1', '/p/k2']
    w.do_watch()
    assert _keys(w) == ['/p/k%d' % n for n in range(5)]


class _Slow(_Recorder):
    DANGER_PAUSE = 0.1

    def do_work(self, action, key, value):
        time.sleep(0.02)
        super().do_work(action, key, value)


def test_an_elected_watcher_keeps_its_term_through_a_long_message():
    # 300 callbacks of 20 ms: one message takes three times work_time,
    # which one check-in per pass of the loop would not cover.
    fake = FakeEtcd3Server()
    w = _Slow(fake.client(), 'w', '/p', election_path='/e',
              wait_until_elected=True, recovery_time=1, heartbeat=1)
    assert w.etcd_elector.work_time < 3
    gate = threading.Event()
    w.hook = lambda key: key == '/p/first' and gate.wait(WAIT)
    thread = threading.Thread(target=w.watch_forever, daemon=True)
    thread.start()
    try:
        assert w.wait_synced(WAIT)
        term = w.etcd_elector.fencing_token
        writer = fake.client()
        writer.put('/p/first', 'x')
        wait_until(lambda: w.hook is not None and not gate.is_set() and
                   w.stats()['events'] == 1)
        for n in range(300):
            writer.put('/p/k%d' % n, 'v%d' % n)
        lost, sizes = [], []
        w.etcd_elector.on_lost = lambda *args: lost.append(time.monotonic())
        apply_all = w._mirror.apply_all
        w._mirror.apply_all = lambda events: (sizes.append(len(events)),
                                              apply_all(events))
        # As a reconnect would: the next stream catches up in one message.
        w._backend.close()
        gate.set()
        wait_until(lambda: len(w.calls) == 301, timeout=60)
        assert sizes == [300]
        assert not lost and w.etcd_elector.is_elected
        assert w.etcd_elector.fencing_token == term
    finally:
        w.stop()
        thread.join(WAIT)


@pytest.mark.asyncio
async def test_a_cancelled_asyncio_run_does_not_run_callbacks_again():
    fake = FakeEtcd3Server()
    async with aio.AsyncEtcd3Client(
            [fake.base_url.split('//')[1]],
            transport=fake.async_httpx_transport()) as client:
        w = _AsyncRecorder(client, 'w', '/p', heartbeat=1)
        await w.refresh_all_data()
        writer = fake.client()
        for n in range(5):
            writer.put('/p/k%d' % n, 'v%d' % n)
        blocked = asyncio.Event()
        original = w.do_work

        async def hanging(action, key, value):
            if key == '/p/k3' and not blocked.is_set():
                blocked.set()
                await asyncio.sleep(3600)
            await original(action, key, value)
        w.do_work = hanging
        task = asyncio.ensure_future(w.do_watch())
        await asyncio.wait_for(blocked.wait(), WAIT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert w.calls == ['/p/k0', '/p/k1', '/p/k2']
        await w.do_watch()
        assert w.calls == ['/p/k%d' % n for n in range(5)]
        await w.aclose()
