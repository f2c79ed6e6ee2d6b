"""EtcdWatcher and EtcdChangeWatcher on the in-memory fake.

Each test that names a seed defect (a. to k. in the core issue) fails on the
seed's logic.
"""

import logging
import threading
import time

import etcd
import pytest

from etcdwatch import EtcdChangeWatcher
from etcdwatch import EtcdWatcher
from etcdwatch.testing.fake import FakeClock
from etcdwatch.testing.fake import FakeEtcdClient
from tests.helpers import etcd_state
from tests.helpers import FlakyClient
from tests.helpers import fold_changes
from tests.helpers import Runner
from tests.helpers import wait_until

P = '/w'


class RawRecorder(EtcdWatcher):
    """Records every do_work / do_all_work call."""

    def __init__(self, *args, **kwargs):
        self.calls = []
        super(RawRecorder, self).__init__(*args, **kwargs)

    def do_work(self, action, key, value):
        self.calls.append((action, key, value))

    def do_all_work(self):
        self.calls.append(('all', dict(self.etcd_data)))


class Recorder(EtcdChangeWatcher):
    """Records key_change calls; can be told to fail."""

    CALLBACK_RETRY_MIN = 0.01
    CALLBACK_RETRY_MAX = 0.05

    def __init__(self, *args, **kwargs):
        self.changes = []
        self.fail_when = None
        self.attempts = 0
        super(Recorder, self).__init__(*args, **kwargs)

    def key_change(self, action, key, value):
        self.attempts += 1
        if self.fail_when is not None and self.fail_when(self.attempts):
            raise RuntimeError('callback failure %d' % self.attempts)
        self.changes.append((action, key, value))

    def reported(self):
        """What the notifications add up to: key -> value."""
        return fold_changes(self.changes)


def converged(watcher, client):
    truth = etcd_state(client, P)
    return (watcher.etcd_data == truth and
            watcher.implemented_state == truth and
            watcher.reported() == truth)


@pytest.fixture
def client():
    return FakeEtcdClient()


def make(client, cls=Recorder, **kwargs):
    kwargs.setdefault('heartbeat', 0.2)
    return cls(client, 'test', P, **kwargs)


def test_initial_load_in_constructor(client):
    client.write(P + '/a', '1')
    client.write(P + '/b/c', '2')
    w = make(client)
    assert w.etcd_data == {P + '/a': '1', P + '/b/c': '2'}
    assert sorted(w.changes) == [('add', P + '/a', '1'),
                                 ('add', P + '/b/c', '2')]
    assert w.synced and w.wait_synced(0)
    assert w.stats()['resyncs'] == 1


def test_watch_events_become_notifications(client):
    w = make(client)
    with Runner(w):
        client.write(P + '/a', '1')
        client.write(P + '/a', '2')
        client.delete(P + '/a')
        client.write(P + '/b', '3')
        wait_until(lambda: len(w.changes) == 4)
    assert w.changes == [('add', P + '/a', '1'), ('change', P + '/a', '2'),
                         ('delete', P + '/a', None), ('add', P + '/b', '3')]
    assert converged(w, client)
    assert w.stats()['events'] == 4


def test_raw_watcher_actions(client):
    w = make(client, RawRecorder)
    with Runner(w):
        client.write(P + '/a', '1')
        client.write(P + '/a', '1')
        client.write(P + '/a', '2', prevValue='1')
        client.delete(P + '/a', prevValue='2')
        wait_until(lambda: len(w.calls) == 5)
    assert w.calls[1:] == [('add', P + '/a', '1'), ('change', P + '/a', '1'),
                           ('change', P + '/a', '2'),
                           ('delete', P + '/a', None)]


def test_b_expire_and_compare_and_delete_are_removals():
    clock = FakeClock()
    client = FakeEtcdClient(clock=clock)
    w = make(client, RawRecorder)
    with Runner(w):
        client.write(P + '/ttl', 'x', ttl=5)
        client.write(P + '/cad', 'y')
        wait_until(lambda: len(w.etcd_data) == 2)
        clock.advance(6)
        client.delete(P + '/cad', prevValue='y')
        wait_until(lambda: len(w.calls) == 5)
    assert w.etcd_data == {}
    assert sorted(c for c in w.calls[3:]) == [
        ('delete', P + '/cad', None), ('delete', P + '/ttl', None)]


def test_c_recursive_directory_delete_removes_every_key(client):
    for k in ('/d/a', '/d/b/c', '/d/b/e', '/keep'):
        client.write(P + k, k)
    w = make(client)
    with Runner(w):
        client.delete(P + '/d', recursive=True)
        wait_until(lambda: len(w.etcd_data) == 1)
        wait_until(lambda: len(w.changes) == 7)
    assert sorted(w.changes[4:]) == [('delete', P + '/d/a', None),
                                     ('delete', P + '/d/b/c', None),
                                     ('delete', P + '/d/b/e', None)]
    assert converged(w, client)


def test_c_deleting_the_watched_directory_itself(client):
    client.write(P + '/a', '1')
    w = make(client)
    with Runner(w):
        client.delete(P, recursive=True)
        wait_until(lambda: w.etcd_data == {})
        client.write(P + '/b', '2')
        wait_until(lambda: w.etcd_data == {P + '/b': '2'})
    assert converged(w, client)


def test_d_directories_are_not_data(client):
    client.write(P + '/empty', None, dir=True)
    client.write(P + '/a', '1')
    w = make(client, RawRecorder)
    assert w.etcd_data == {P + '/a': '1'}
    with Runner(w):
        client.write(P + '/newdir', None, dir=True)
        client.write(P + '/b', '2')
        wait_until(lambda: len(w.calls) == 2)
    assert w.calls[1] == ('add', P + '/b', '2')
    assert w.etcd_data == {P + '/a': '1', P + '/b': '2'}


def test_e_missing_watch_path_is_an_empty_tree(client):
    w = make(client)
    assert w.etcd_data == {} and w.synced
    with Runner(w):
        client.write(P + '/x/y', 'v')
        wait_until(lambda: w.changes == [('add', P + '/x/y', 'v')])


def test_f_no_false_changes(client):
    client.write(P + '/a', '1')
    w = make(client)
    with Runner(w):
        client.write(P + '/a', '1')
        client.write(P + '/a', '1')
        client.write(P + '/z', '9')
        wait_until(lambda: w.etcd_data.get(P + '/z') == '9')
        wait_until(lambda: len(w.changes) == 2)
        # A resync that finds nothing new reports nothing.
        w.tick = None
        wait_until(lambda: w.stats()['resyncs'] == 2)
    assert w.changes == [('add', P + '/a', '1'), ('add', P + '/z', '9')]


def test_f_history_loss_reports_net_changes_only(client):
    for i in range(5):
        client.write(P + '/k%d' % i, 'old')
    w = make(client)
    client.write(P + '/k0', 'new')
    client.write(P + '/k1', 'tmp')
    client.write(P + '/k1', 'old')
    client.delete(P + '/k2')
    client.write(P + '/k9', 'added')
    client.write(P + '/gone', 'x')
    client.delete(P + '/gone')
    client.clear_history()
    with Runner(w):
        wait_until(lambda: w.stats()['resyncs'] == 2)
        wait_until(lambda: converged(w, client))
    assert sorted(w.changes[5:]) == [('add', P + '/k9', 'added'),
                                     ('change', P + '/k0', 'new'),
                                     ('delete', P + '/k2', None)]


def test_burst_larger_than_history_converges(client):
    w = make(client)
    for i in range(1500):
        client.write(P + '/k%d' % (i % 300), str(i))
    for i in range(0, 300, 7):
        client.delete(P + '/k%d' % i)
    with Runner(w):
        wait_until(lambda: converged(w, client), timeout=20)
    assert w.stats()['resyncs'] >= 2


def test_far_behind_catches_up_with_one_read(client):
    w = make(client)
    w.CATCHUP_MIN_LAG = 50
    for i in range(200):
        client.write(P + '/k%d' % (i % 20), str(i))
    with Runner(w):
        wait_until(lambda: converged(w, client))
    assert w.stats()['resyncs'] == 2
    assert w.stats()['events'] == 0
    # Net changes only: 20 adds (their last values), nothing else.
    assert len(w.changes) == 20


@pytest.mark.parametrize('backend_min_lag,resyncs,events', [
    (16, 2, 0),         # v2's defaults: 200 events behind, one re-read
    (1000, 1, 200),     # v3's: a stream walks 200 events cheaply
])
def test_catch_up_thresholds_default_to_the_apis(client, backend_min_lag,
                                                 resyncs, events):
    w = make(client)
    assert w.CATCHUP_MIN_LAG is None and w.CATCHUP_TREE_FRACTION is None
    assert (w._backend.catchup_min_lag,
            w._backend.catchup_tree_fraction) == (16, 64)
    w._backend.catchup_min_lag = backend_min_lag
    for i in range(200):
        client.write(P + '/k%d' % (i % 20), str(i))
    with Runner(w):
        wait_until(lambda: converged(w, client))
    assert (w.stats()['resyncs'], w.stats()['events']) == (resyncs, events)


def test_a_etcd_errors_are_logged_and_the_loop_goes_on(client, caplog):
    flaky = FlakyClient(client)
    w = make(flaky)
    w.DANGER_PAUSE = 0.01
    flaky.fail('watch', etcd.EtcdConnectionFailed('boom'), times=3)
    with caplog.at_level(logging.DEBUG, logger='etcdwatch'):
        with Runner(w):
            client.write(P + '/a', '1')
            wait_until(lambda: w.changes == [('add', P + '/a', '1')])
    assert w.stats()['errors'] == 3
    # One outage: a warning when it began, a line when it ended; each
    # attempt, with its traceback, at DEBUG only.
    # This watcher's records only: an elector another test left behind
    # may log from its own thread meanwhile.
    records = [r for r in caplog.records if r.name == 'etcdwatch.watcher'
               and 'watching %s' % P in r.getMessage()]
    warnings = [r for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and 'boom' in warnings[0].getMessage()
    attempts = [r for r in records
                if r.levelno == logging.DEBUG and r.exc_info]
    assert len(attempts) == 3
    assert any('available again' in r.getMessage() and '3 failed' in
               r.getMessage() for r in records if r.levelno == logging.INFO)


def test_a_other_errors_are_logged_with_a_traceback_each_time(
        client, caplog):
    w = make(client)
    w.DANGER_PAUSE = 0.01
    ticks = []

    def do_tick():
        ticks.append(1)
        if len(ticks) <= 3:
            raise RuntimeError('bug %d' % len(ticks))
    w.do_tick = do_tick
    with caplog.at_level(logging.ERROR, logger='etcdwatch'):
        with Runner(w):
            client.write(P + '/a', '1')
            wait_until(lambda: w.changes == [('add', P + '/a', '1')])
    errors = [r for r in caplog.records if r.exc_info]
    assert [str(r.exc_info[1]) for r in errors] == [
        'bug 1', 'bug 2', 'bug 3']
    assert w.stats()['errors'] == 3


def test_a_initial_load_failure_is_retried(client):
    flaky = FlakyClient(client)
    flaky.down = True
    client.write(P + '/a', '1')
    w = make(flaky)
    w.DANGER_PAUSE = 0.01
    assert not w.synced and w.etcd_data is None
    with Runner(w):
        flaky.down = False
        assert w.wait_synced(10)
    assert converged(w, client)


def test_g_failing_callback_loses_nothing(client, caplog):
    w = make(client)
    # Walk every event (no catch-up re-read), so that many callbacks run.
    w.CATCHUP_MIN_LAG = 10 ** 6
    # Every third call fails.
    w.fail_when = lambda n: n % 3 == 0
    with caplog.at_level(logging.ERROR, logger='etcdwatch'):
        with Runner(w):
            for i in range(30):
                client.write(P + '/k%d' % (i % 7), str(i))
            for i in range(0, 7, 2):
                client.delete(P + '/k%d' % i)
            wait_until(lambda: converged(w, client))
    assert w.stats()['callback_errors'] > 5
    assert w.stats()['callback_errors'] == len(
        [r for r in caplog.records if 'callback' in r.getMessage()])


def test_g_always_failing_callback_backs_off_without_spinning(client):
    w = make(client)
    w.CALLBACK_RETRY_MIN = 0.05
    w.CALLBACK_RETRY_MAX = 0.2
    w.fail_when = lambda n: True
    with Runner(w):
        client.write(P + '/a', '1')
        start = time.monotonic()
        cpu = time.process_time()
        time.sleep(1.0)
        cpu = time.process_time() - cpu
        elapsed = time.monotonic() - start
    # Backoff 0.05, 0.1, 0.2, 0.2...: a handful of attempts, not thousands.
    assert 3 <= w.attempts <= 15
    assert cpu < 0.5 * elapsed
    # The event is still pending, not dropped.
    assert w.stats()['pending'] == 1


def test_g_failing_callback_then_recovery_delivers_in_order(client):
    w = make(client)
    broken = [True]
    w.fail_when = lambda n: broken[0]
    with Runner(w):
        client.write(P + '/a', '1')
        client.write(P + '/b', '2')
        client.delete(P + '/a')
        wait_until(lambda: w.attempts >= 3)
        broken[0] = False
        wait_until(lambda: converged(w, client))
    assert w.changes == [('add', P + '/a', '1'), ('add', P + '/b', '2'),
                         ('delete', P + '/a', None)]


def test_g_failing_do_all_work_is_retried():
    client = FakeEtcdClient()
    client.write(P + '/a', '1')
    calls = []

    class Fails(EtcdWatcher):
        CALLBACK_RETRY_MIN = 0.01

        def do_all_work(self):
            calls.append(dict(self.etcd_data))
            if len(calls) < 3:
                raise RuntimeError('not yet')

    w = Fails(client, 'x', P, heartbeat=0.2)
    assert not w.synced
    with Runner(w):
        assert w.wait_synced(10)
    assert calls == [{P + '/a': '1'}] * 3


def test_init_resync_hooks_remove_stale_keys(client):
    client.write(P + '/keep', '1')
    client.write(P + '/new', '2')
    seen = []

    class Agent(EtcdChangeWatcher):
        def init_resync_start(self):
            seen.append('start')
            return ['keep', 'stale1', 'stale2']

        def added(self, short_key, value):
            seen.append(('added', short_key, value))

        def removed(self, short_key):
            seen.append(('removed', short_key))

    Agent(client, 'agent', P, heartbeat=0.2)
    assert seen[0] == 'start'
    assert sorted(seen[1:3]) == [('added', 'keep', '1'),
                                 ('added', 'new', '2')]
    assert seen[3:] == [('removed', 'stale1'), ('removed', 'stale2')]


def test_make_short_key(client):
    w = make(client)
    assert w.make_short_key(P + '/a/b') == 'a/b'
    assert w.make_short_key(P) is None
    assert w.make_short_key(P + 'x/a') is None
    assert w.make_short_key('/other/a') is None


def test_default_key_change_calls_added_and_removed(client):
    got = []

    class Ports(EtcdChangeWatcher):
        def added(self, short_key, value):
            got.append(('added', short_key, value))

        def removed(self, short_key):
            got.append(('removed', short_key))

    client.write(P + '/p1', 'up')
    w = Ports(client, 'ports', P, heartbeat=0.2)
    with Runner(w):
        client.write(P + '/p1', 'down')
        client.delete(P + '/p1')
        wait_until(lambda: len(got) == 3)
    assert got == [('added', 'p1', 'up'), ('added', 'p1', 'down'),
                   ('removed', 'p1')]


def test_stop_returns_within_a_heartbeat(client):
    w = make(client, heartbeat=1.0)
    thread = threading.Thread(target=w.watch_forever, daemon=True)
    thread.start()
    wait_until(lambda: client.calls.get('watch', 0) >= 1)
    start = time.monotonic()
    w.stop()
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - start < 1.0 + 1.0


def test_stats(client):
    w = make(client)
    with Runner(w):
        client.write(P + '/a', '1')
        wait_until(lambda: w.stats()['events'] == 1)
    stats = w.stats()
    assert stats['index'] == client.read(P + '/a').modifiedIndex
    assert stats['synced'] and stats['pending'] == 0
    assert stats['last_event_time'] <= time.time()


def test_callbacks_may_take_the_data_lock(client):
    class Locks(Recorder):
        def key_change(self, action, key, value):
            with self.etcd_data_lock:
                super(Locks, self).key_change(action, key, value)

    w = make(client, Locks)
    with Runner(w):
        client.write(P + '/a', '1')
        wait_until(lambda: w.changes == [('add', P + '/a', '1')])


@pytest.mark.parametrize('argument,kwargs', [
    ('watch_path', {'watch_path': '/a?b'}),
    ('watch_path', {'watch_path': '/a#b'}),
    ('watch_path', {'watch_path': '/a%2Fb'}),
    ('watch_path', {'watch_path': 'relative'}),
    ('watch_path', {'watch_path': '/a//b'}),
    ('watch_path', {'watch_path': '/a/../b'}),
    ('watch_path', {'watch_path': '/a b'}),
    ('watch_path', {'watch_path': '/caf\u00e9'}),
    ('heartbeat', {'heartbeat': 0}),
    ('heartbeat', {'heartbeat': -1}),
    ('heartbeat', {'heartbeat': 'soon'}),
    ('recovery_time', {'recovery_time': float('nan')}),
    ('election_path', {'wait_until_elected': True,
                       'election_path': '/e?x'}),
    ('election_path', {'wait_until_elected': True}),
    ('name', {'wait_until_elected': True, 'election_path': '/e',
              'name': 'a/b'}),
])
def test_j_bad_input_is_refused_before_any_request(client, argument, kwargs):
    args = {'name': 'n', 'watch_path': P}
    args.update(kwargs)
    before = dict(client.calls)
    with pytest.raises(ValueError, match=argument):
        Recorder(client, **args)
    assert client.calls == before


class Jsonish(object):
    """A codec: JSON objects only."""

    @staticmethod
    def decode(value):
        import json
        result = json.loads(value)
        if not isinstance(result, dict):
            raise ValueError('not an object')
        return result


def test_codec_values_and_unparsable_values(client):
    client.write(P + '/good', '{"a": 1}')
    client.write(P + '/bad', 'not json')
    refused = []

    class Decoding(Recorder):
        def value_unparsable(self, key, value, error):
            refused.append((key, value, type(error).__name__))

    w = make(client, Decoding, codec=Jsonish())
    assert w.etcd_data == {P + '/good': {'a': 1}}
    assert refused == [(P + '/bad', 'not json', 'JSONDecodeError')]
    with Runner(w):
        client.write(P + '/bad', '{"fixed": true}')
        client.write(P + '/good', '[1]')           # now refused
        wait_until(lambda: len(w.changes) == 3)
    assert w.changes[1:] == [('add', P + '/bad', {'fixed': True}),
                             ('delete', P + '/good', None)]
    assert w.stats()['unparsable'] == 2
    assert refused[-1] == (P + '/good', '[1]', 'ValueError')


def test_codec_must_decode(client):
    with pytest.raises(ValueError, match='codec'):
        make(client, codec=object())


class _Table(EtcdChangeWatcher):
    def __init__(self, *args, **kwargs):
        self.table = {}
        super().__init__(*args, **kwargs)

    def added(self, key, value):
        self.table[key] = value

    def removed(self, key):
        self.table.pop(key, None)


def test_lifecycle_start_close_and_with(client):
    client.write('/life/a', '1')
    with _Table(client, 'life', '/life', heartbeat=1) as w:
        client.write('/life/b', '2')
        wait_until(lambda: w.table == {'a': '1', 'b': '2'})
    assert not w._task.is_alive()         # the with block waited for it
    with pytest.raises(RuntimeError, match='start'):
        w.start()
    assert _Table(client, 'never', '/life').close(timeout=1) is True


def test_ctrl_c_in_a_foreground_watch_forever_ends_it_quietly(client,
                                                              caplog):
    class Interrupted(_Table):
        def do_tick(self):
            raise KeyboardInterrupt

    w = Interrupted(client, 'fg', '/fg', heartbeat=1)
    with caplog.at_level(logging.INFO, logger='etcdwatch'):
        w.watch_forever()               # returns instead of raising
    assert not w.stats()['errors']
    assert any('interrupted' in r.getMessage() for r in caplog.records)


def test_stats_show_etcd_index_and_lag(client):
    client.write('/lag/a', '1')
    w = _Table(client, 'lag', '/lag', heartbeat=1)
    stats = w.stats()
    assert stats['etcd_index'] == stats['index'] and stats['lag'] == 0
    for i in range(3):
        client.write('/lag/k%d' % i, str(i))
    w.do_watch()        # one event applied; etcd is ahead by the others
    stats = w.stats()
    assert stats['etcd_index'] >= stats['index'] + 2
    assert stats['lag'] == stats['etcd_index'] - stats['index']
