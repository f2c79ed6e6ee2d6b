"""FakeEtcdClient on its own (tests/functional/test_conformance.py compares
it with a real etcd)."""

import os
import subprocess
import sys
import textwrap
import threading
import time

import etcd
import pytest
import urllib3.exceptions

from etcdwatch import handlers
from etcdwatch.testing.fake import FakeClock
from etcdwatch.testing.fake import FakeEtcdClient

WAIT = 10.0


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def client(clock):
    return FakeEtcdClient(clock=clock)


class Background(object):
    """Runs ``func`` in a thread; ``result()`` returns or raises its end."""

    def __init__(self, func, *args, **kwargs):
        self._box = {}
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        args=(func, args, kwargs))
        self._thread.start()

    def _run(self, func, args, kwargs):
        try:
            self._box['result'] = func(*args, **kwargs)
        except Exception as e:
            self._box['error'] = e

    def result(self, timeout=WAIT):
        self._thread.join(timeout)
        assert not self._thread.is_alive(), 'still running'
        if 'error' in self._box:
            raise self._box['error']
        return self._box['result']


def start_watch(client, *args, **kwargs):
    """A watch in a thread, returned once it is blocked in the fake."""
    before = client.waiting_watches
    watch = Background(client.watch, *args, **kwargs)
    assert client.wait_for_watches(before + 1, WAIT)
    return watch


# ------------------------------------------------------------ results


def test_starts_empty_at_index_zero():
    client = FakeEtcdClient()
    root = client.read('/')
    assert isinstance(root, etcd.EtcdResult)
    assert (root.action, root.key, root.dir, root.etcd_index) == (
        'get', None, True, 0)
    assert list(root.leaves) == [root]
    assert not client.calls.get('write')


def test_write_and_read_give_etcd_results(client):
    made = client.write('/a', 'one')
    assert (made.action, made.key, made.value, made.dir) == (
        'set', '/a', 'one', False)
    assert made.createdIndex == made.modifiedIndex == made.etcd_index == 1
    assert made.raft_index == 1
    assert made.newKey and made.ttl is None and made.expiration is None
    again = client.write('/a', 'two')
    assert not again.newKey
    assert again._prev_node.value == 'one'
    got = client.read('/a')
    assert (got.action, got.value, got.modifiedIndex, got.etcd_index) == (
        'get', 'two', 2, 2)
    assert client.get('/a').value == 'two'
    assert '/a' in client and '/b' not in client


def test_values_are_sent_as_python_etcd_sends_them(client):
    assert client.write('/i', 42).value == '42'
    assert client.write('/b', b'raw').value == 'raw'
    assert client.write('/n', None).value == ''
    # python-etcd sends prevValue=None as the string "None".
    with pytest.raises(etcd.EtcdCompareFailed) as e:
        client.write('/i', 'x', prevValue=None)
    assert e.value.payload['cause'] == '[None != 42]'
    with pytest.raises(etcd.EtcdException,
                       match='Cannot create a directory with a value'):
        client.write('/d', 'v', dir=True)


def test_errors_carry_python_etcds_payload(client):
    client.write('/a/b', 'v')
    with pytest.raises(etcd.EtcdKeyNotFound) as e:
        client.read('/x/y')
    assert e.value.payload == {'errorCode': 100, 'message': 'Key not found',
                               'cause': '/x', 'index': 1, 'status': 404}
    cases = [
        (etcd.EtcdNotDir, 104, lambda: client.read('/a/b/c')),
        (etcd.EtcdNotDir, 104, lambda: client.write('/a/b/c', 'v')),
        (etcd.EtcdNotFile, 102, lambda: client.write('/a', 'v')),
        (etcd.EtcdNotFile, 102, lambda: client.delete('/a')),
        (etcd.EtcdDirNotEmpty, 108, lambda: client.delete('/a', dir=True)),
        (etcd.EtcdAlreadyExist, 105,
         lambda: client.write('/a/b', 'v', prevExist=False)),
        (etcd.EtcdKeyNotFound, 100,
         lambda: client.write('/a/c', 'v', prevExist=True)),
        (etcd.EtcdRootReadOnly, 107, lambda: client.write('/', 'v')),
        (etcd.EtcdRootReadOnly, 107,
         lambda: client.delete('/', recursive=True)),
        (etcd.EtcdCompareFailed, 101,
         lambda: client.write('/a/b', 'w', prevValue='nope')),
        (etcd.EtcdValueError, 202, lambda: client.write('/t', 'v', ttl=-1)),
        (etcd.EtcdValueError, 201,
         lambda: client.write('/a/b', 'v', prevValue='')),
        (etcd.EtcdValueError, 203,
         lambda: client.write('/a/b', 'v', prevIndex='x')),
        (etcd.EtcdValueError, 209,
         lambda: client.write('/a/b', 'v', prevExist=None)),
        # Codes python-etcd does not know come out as EtcdException.
        (etcd.EtcdException, 212,
         lambda: client.write('/a/b', None, refresh=True, prevExist=True)),
        (etcd.EtcdException, 211,
         lambda: client.write('/a/b', 'v', ttl=5, refresh=True)),
    ]
    for exc_class, code, call in cases:
        with pytest.raises(exc_class) as e:
            call()
        assert e.value.payload['errorCode'] == code
    # Nothing failed bumped the index.
    assert client.index == 1


def test_quorum_reads_answer_as_plain_reads(client):
    # On etcd a quorum read goes through raft but answers the same, its
    # "not found" included (test_conformance holds this to a real etcd).
    client.write('/a/b', 'v')
    client.write('/a/c', 'w')
    assert client.read('/a/b', quorum=True).value == 'v'
    with pytest.raises(etcd.EtcdKeyNotFound) as e:
        client.read('/a/missing', quorum=True)
    assert e.value.payload == {
        'errorCode': 100, 'message': 'Key not found',
        'cause': '/a/missing', 'index': 2, 'status': 404}
    with pytest.raises(etcd.EtcdNotDir) as e:
        client.read('/a/b/_q', quorum=True)
    assert e.value.payload['index'] == 2
    with pytest.raises(etcd.EtcdValueError) as e:
        client.read('/a/b', quorum='maybe')
    assert e.value.payload['errorCode'] == 209
    assert client.index == 2


def test_update_of_a_directory_is_a_raft_error_as_on_etcd_3_5(client):
    client.write('/d', None, dir=True)
    with pytest.raises(etcd.EtcdException) as e:
        client.write('/d', None, dir=True, prevExist=True, ttl=5)
    assert type(e.value) is etcd.EtcdException
    assert e.value.payload == {
        'errorCode': 300, 'message': 'Raft Internal Error',
        'cause': 'nodePath /1/d : Not a file ()', 'index': 0, 'status': 500}


def test_compare_and_swap_and_delete(client):
    first = client.write('/k', 'a')
    cas = client.write('/k', 'b', prevValue='a')
    assert (cas.action, cas.value, cas._prev_node.value) == (
        'compareAndSwap', 'b', 'a')
    assert client.test_and_set('/k', 'c', 'b').value == 'c'
    with pytest.raises(etcd.EtcdCompareFailed) as e:
        client.write('/k', 'x', prevIndex=first.modifiedIndex)
    assert e.value.payload['cause'] == '[1 != 3]'
    got = client.read('/k')
    got.value = 'd'
    assert client.update(got).action == 'compareAndSwap'
    with pytest.raises(etcd.EtcdCompareFailed):
        client.update(got)
    with pytest.raises(etcd.EtcdCompareFailed):
        client.delete('/k', prevValue='a')
    cad = client.delete('/k', prevValue='d')
    assert (cad.action, cad._prev_node.value) == ('compareAndDelete', 'd')
    client.write('/k', 'e')
    assert client.pop('/k', prevIndex=client.index).value == 'e'


def test_create_update_and_append(client):
    created = client.write('/k', 'v', prevExist=False)
    assert (created.action, created.newKey) == ('create', True)
    updated = client.write('/k', 'w', prevExist=True)
    assert (updated.action, updated.newKey) == ('update', False)
    keys = [client.write('/q', str(i), append=True).key for i in range(3)]
    assert keys == sorted(keys)
    assert keys[0] == '/q/%020d' % 3
    listed = client.read('/q', sorted=True)
    assert [n.value for n in listed.leaves] == ['0', '1', '2']


# -------------------------------------------------------- directories


def test_directories(client):
    client.write('/d/e/f', 'deep')
    parent = client.read('/d/e')
    # Made by the write that needed it, at its index.
    assert parent.dir and parent.createdIndex == 1
    client.write('/d/x', 'x')
    client.write('/d/empty', None, dir=True)
    client.write('/d/_hidden', 'h')
    flat = client.read('/d', sorted=True)
    assert [(n['key'], 'nodes' in n) for n in flat._children] == [
        ('/d/e', False), ('/d/empty', False), ('/d/x', False)]
    deep = client.read('/d', recursive=True, sorted=True)
    assert [n.key for n in deep.leaves] == ['/d/e/f', '/d/empty', '/d/x']
    assert [n.key for n in deep.get_subtree()] == [
        '/d', '/d/e', '/d/e/f', '/d/empty', '/d/x']
    assert client.read('/d/_hidden').value == 'h'
    assert client.dump('/d') == {'/d/e/f': 'deep', '/d/x': 'x',
                                 '/d/_hidden': 'h'}


def test_recursive_delete_is_one_event(client):
    client.write('/d/a', '1')
    client.write('/d/b/c', '2')
    before = client.index
    gone = client.delete('/d', recursive=True)
    assert (gone.action, gone.key, gone.dir) == ('delete', '/d', True)
    assert gone._prev_node.dir
    assert client.index == before + 1
    assert client.dump() == {}
    # Watches of keys below it, from before, see that one event.
    event = client.watch('/d/b/c', index=before + 1)
    assert (event.action, event.key) == ('delete', '/d')


def test_delete_of_a_directory_wakes_watchers_below_it(client):
    client.write('/d/a', '1')
    below = start_watch(client, '/d/a')
    elsewhere = start_watch(client, '/d/missing', timeout=0.2)
    client.delete('/d', recursive=True)
    assert below.result().key == '/d'
    # Only nodes that existed hear of it while watching.
    with pytest.raises(etcd.EtcdWatchTimedOut):
        elsewhere.result()


# ---------------------------------------------------------------- TTLs


def test_ttl_and_expiry_on_a_fake_clock(client, clock):
    made = client.write('/t', 'v', ttl=5)
    assert made.ttl == 5 and made.expiration.endswith('Z')
    clock.advance(2.5)
    assert client.read('/t').ttl == 3
    clock.advance(2.25)
    assert client.read('/t').ttl == 1
    clock.advance(0.25)
    with pytest.raises(etcd.EtcdKeyNotFound):
        client.read('/t')
    event = client.watch('/t', index=made.modifiedIndex + 1)
    assert (event.action, event.key, event.value) == ('expire', '/t', None)
    assert event.modifiedIndex == 2 and event.createdIndex == 1
    assert event._prev_node.value == 'v'
    assert event._prev_node.ttl is None     # 0 left: etcd omits it
    assert event._prev_node.expiration == made.expiration


def test_expiry_wakes_a_blocked_watch(client, clock):
    client.write('/t', 'v', ttl=5)
    watch = start_watch(client, '/t')
    clock.advance(4)
    assert client.waiting_watches == 1
    clock.advance(1)
    assert watch.result().action == 'expire'


def test_expiring_directory_takes_its_children(client, clock):
    client.write('/d', None, dir=True, ttl=3)
    client.write('/d/child', 'c')
    client.write('/d/sub/grandchild', 'g', ttl=100)
    watch = start_watch(client, '/d/sub/grandchild')
    clock.advance(3)
    event = watch.result()
    assert (event.action, event.key, event.dir) == ('expire', '/d', True)
    assert client.dump() == {}
    clock.advance(100)
    assert client.index == 4        # the grandchild never expires alone


def test_expiry_on_a_clock_that_moves_by_itself():
    class Clock(object):
        # Real time plus a jump; nobody tells the fake when it moves.
        offset = 0.0

        def time(self):
            return time.monotonic() + self.offset

    clock = Clock()
    client = FakeEtcdClient(clock=clock)
    client.write('/t', 'v', ttl=1)
    clock.offset = 0.95
    # The blocked watch wakes when the key is due, and expires it.
    assert client.watch('/t', index=2, timeout=WAIT).action == 'expire'


def test_refresh_keeps_value_bumps_index_and_wakes_nobody(client, clock):
    client.write('/t', 'v', ttl=5)
    watch = start_watch(client, '/t', timeout=0.2)
    clock.advance(4)
    refreshed = client.refresh('/t', ttl=5)
    assert (refreshed.action, refreshed.value, refreshed.ttl) == (
        'update', 'v', 5)
    assert refreshed.modifiedIndex == client.index == 2
    with pytest.raises(etcd.EtcdWatchTimedOut):
        watch.result()
    clock.advance(4)
    assert client.read('/t').value == 'v'
    # A watch from the refresh's index skips it.
    client.write('/t', 'w')
    assert client.watch('/t', index=2).value == 'w'
    # An update without ttl makes the key permanent.
    client.write('/t', 'x', prevExist=True)
    clock.advance(100)
    assert client.read('/t').ttl is None


# ------------------------------------------------------------- watches


def test_watch_from_history(client):
    for i in range(5):
        client.write('/k', str(i))
    client.write('/other', 'o')
    event = client.watch('/k', index=3)
    assert (event.action, event.value, event.modifiedIndex) == (
        'set', '2', 3)
    # etcd_index is the index when the watch began.
    assert event.etcd_index == 6
    assert client.watch('/', index=6, recursive=True).key == '/other'
    assert client.read('/k', wait=True, waitIndex=5).value == '4'


def test_blocked_watch_is_woken_by_a_write(client):
    client.write('/x', 'x')
    watch = start_watch(client, '/k')
    client.write('/other', 'o')
    client.write('/k', 'v')
    event = watch.result()
    assert (event.key, event.value, event.modifiedIndex) == ('/k', 'v', 3)
    assert event.etcd_index == 1        # where it started
    assert not event.newKey
    assert client.waiting_watches == 0


def test_recursive_watch_and_hidden_keys(client):
    watch = start_watch(client, '/p', recursive=True)
    plain = start_watch(client, '/p')
    client.write('/p/_hidden', 'h')
    client.write('/p/a/b', 'v')
    assert watch.result().key == '/p/a/b'
    client.delete('/p', recursive=True)
    assert plain.result().key == '/p'
    # The history does not hide them.
    assert client.watch('/p', index=1, recursive=True).key == '/p/_hidden'


def test_watch_future_index(client):
    watch = start_watch(client, '/k', index=3)
    client.write('/k', '1')
    client.write('/k', '2')
    client.write('/k', '3')
    assert watch.result().value == '3'


def test_watch_timeouts():
    client = FakeEtcdClient(read_timeout=0.1)
    with pytest.raises(etcd.EtcdWatchTimedOut) as e:
        client.watch('/k')
    assert isinstance(e.value, etcd.EtcdConnectionFailed)
    assert isinstance(e.value.cause, urllib3.exceptions.ReadTimeoutError)
    with pytest.raises(etcd.EtcdWatchTimedOut):
        client.watch('/k', timeout=0.05)
    # 0 means no timeout at all.
    watch = start_watch(client, '/k', timeout=0)
    assert client.waiting_watches == 1
    client.write('/k', 'v')
    assert watch.result().value == 'v'


def test_eternal_watch(client):
    for i in range(3):
        client.write('/k', str(i))
    events = client.eternal_watch('/k', index=1)
    assert [next(events).value for _ in range(3)] == ['0', '1', '2']


def test_history_size_and_cleared_index():
    client = FakeEtcdClient(history_size=10)
    for i in range(25):
        client.write('/k', str(i))
    assert client.watch('/k', index=16).modifiedIndex == 16
    with pytest.raises(etcd.EtcdEventIndexCleared) as e:
        client.watch('/k', index=15)
    assert e.value.payload == {
        'errorCode': 401,
        'message': 'The event in requested index is outdated and cleared',
        'cause': 'the requested history has been cleared [16/15]',
        'index': 25, 'status': 400}


def test_clear_history(client):
    client.write('/k', 'a')
    client.write('/k', 'b')
    client.clear_history()
    for index in (1, 2):
        with pytest.raises(etcd.EtcdEventIndexCleared):
            client.watch('/k', index=index)
    watch = start_watch(client, '/k', index=3)
    client.write('/k', 'c')
    assert watch.result().value == 'c'
    assert client.watch('/k', index=3).value == 'c'


# --------------------------------------------------------------- hooks


def test_calls_count_every_public_method_as_python_etcd_delegates(client):
    client.write('/k', 'v')
    client.get('/k')
    client.watch('/k', index=1)
    '/k' in client
    assert client.calls == {'write': 1, 'get': 2, 'read': 3, 'watch': 1,
                            '__contains__': 1}


def test_fail_next(client):
    client.fail_next('watch', etcd.EtcdWatchTimedOut('boom'), times=2)
    client.fail_next('write', ValueError)
    client.fail_next('read')
    for _ in range(2):
        with pytest.raises(etcd.EtcdWatchTimedOut, match='boom'):
            client.watch('/k', timeout=1)
    with pytest.raises(ValueError):
        client.write('/k', 'v')
    with pytest.raises(etcd.EtcdConnectionFailed):
        client.read('/k')
    assert client.write('/k', 'v').value == 'v'
    assert client.watch('/k', index=1).value == 'v'
    assert client.calls['watch'] == 3
    with pytest.raises(ValueError):
        client.fail_next('wirte', ValueError)


def test_outage(client, clock):
    client.write('/k', 'v', ttl=5)
    watch = start_watch(client, '/other')
    with client.outage():
        assert not client.available
        with pytest.raises(etcd.EtcdConnectionFailed) as e:
            client.read('/k')
        assert isinstance(e.value.cause, urllib3.exceptions.HTTPError)
        with pytest.raises(etcd.EtcdConnectionFailed):
            watch.result()
        # etcd itself carries on.
        clock.advance(5)
    assert client.available
    assert client.read('/k', wait=True, waitIndex=2).action == 'expire'


def test_a_short_outage_still_cuts_open_watches(client):
    watch = start_watch(client, '/k')
    client.available = False
    client.available = True
    client.write('/k', 'v')
    with pytest.raises(etcd.EtcdConnectionFailed):
        watch.result()


def test_handlers():
    assert FakeEtcdClient(handler='threading')._handler.name == 'threading'
    handler = handlers.get_handler('threading')
    assert FakeEtcdClient(handler=handler)._handler is handler
    with pytest.raises(ValueError):
        FakeEtcdClient(handler='gevent')
    with pytest.raises(ValueError):
        FakeEtcdClient(history_size=0)
    with pytest.raises(ValueError):
        FakeClock().advance(-1)


def test_concurrent_writers(client):
    def writer(n):
        for i in range(200):
            client.write('/w/%d' % n, str(i))
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    watch = start_watch(client, '/w', index=800, recursive=True)
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert client.index == 800
    assert watch.result().modifiedIndex == 800
    assert sorted(client.dump().values()) == ['199'] * 4


EVENTLET_SCRIPT = textwrap.dedent('''
    import sys
    import eventlet
    if sys.argv[1] == 'patched':
        eventlet.monkey_patch()
    from etcdwatch.testing.fake import FakeEtcdClient
    client = FakeEtcdClient(handler=None if sys.argv[1] == 'patched'
                            else 'eventlet')
    print(client._handler.name)
    got = []
    watcher = eventlet.spawn(lambda: got.append(
        client.watch('/k', timeout=10)))
    def writer():
        assert client.wait_for_watches(1, timeout=10)
        client.write('/k', 'green')
    eventlet.spawn(writer).wait()
    watcher.wait()
    try:
        client.watch('/k', timeout=0.05)
    except Exception as e:
        print(type(e).__name__)
    print(got[0].action, got[0].value)
''')


@pytest.mark.parametrize('mode', ['patched', 'unpatched'])
def test_eventlet(mode):
    """A blocked watch in a green thread wakes on a green write."""
    env = dict(os.environ, PYTHONWARNINGS='ignore')
    out = subprocess.run(
        [sys.executable, '-c', EVENTLET_SCRIPT, mode], env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__)))),
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split('\n') == ['eventlet', 'EtcdWatchTimedOut',
                                      'set green', '']
