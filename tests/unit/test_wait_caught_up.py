"""etcdwatch.testing.wait_caught_up, on FakeEtcdClient.

The same tests run on real etcd, v2 and v3, in
tests/functional/test_wait_caught_up.py (which imports them and gives
its own ``etcd`` fixture).  The v3 fake
(FakeEtcd3Server) is not among them: a watcher's v3 watch needs the socket
under etcd3gw's session, which the fake's requests adapter has not got.
"""

import threading
import time

import pytest

from etcdwatch import EtcdChangeWatcher
from etcdwatch.testing import FakeEtcdClient
from etcdwatch.testing import wait_caught_up


class Fake(object):
    """What the tests do to etcd: here, to a FakeEtcdClient."""

    prefix = ''

    def __init__(self):
        self.client = FakeEtcdClient()

    def put(self, key, value):
        """Write; return etcd's index after it."""
        self.client.write(self.prefix + key, value)
        return self.client.index

    def delete(self, key):
        self.client.delete(self.prefix + key)
        return self.client.index

    def forget_history(self, events_written):
        self.client.clear_history()


@pytest.fixture
def etcd():
    return Fake()


class Ports(EtcdChangeWatcher):
    DANGER_PAUSE = 0.05
    CALLBACK_RETRY_MIN = 0.01

    def __init__(self, etcd):
        self.ports = {}
        self.fail = False
        super(Ports, self).__init__(etcd.client, 'ports',
                                    etcd.prefix + '/ports', heartbeat=0.2)

    def added(self, short_key, value):
        if self.fail:
            raise RuntimeError('refused')
        self.ports[short_key] = value

    def removed(self, short_key):
        self.ports.pop(short_key, None)


def _start(watcher):
    thread = threading.Thread(target=watcher.watch_forever, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def running(etcd):
    watcher = Ports(etcd)
    thread = _start(watcher)
    yield watcher
    watcher.stop()
    thread.join(10)
    assert not thread.is_alive()


def test_returns_once_the_last_change_under_the_prefix_is_applied(
        etcd, running):
    etcd.put('/ports/p1', 'up')
    index = etcd.delete('/ports/p1')
    etcd.put('/ports/p2', 'down')
    assert wait_caught_up(running, etcd.client, 10) >= index
    assert running.ports == {'p2': 'down'}


def test_a_last_write_outside_the_prefix_does_not_hang_it(etcd, running):
    # The watcher's index stays at its last change under /ports, below
    # etcd's: comparing the two alone would wait forever.
    etcd.put('/ports/p1', 'up')
    last = etcd.put('/elsewhere/k', 'v')
    started = time.monotonic()
    assert wait_caught_up(running, etcd.client, 10) == last
    assert time.monotonic() - started < 5
    assert running.ports == {'p1': 'up'}
    assert running.stats()['index'] < last


def test_a_change_not_yet_applied_is_waited_for(etcd):
    watcher = Ports(etcd)          # loaded, but nothing runs it
    etcd.put('/ports/p1', 'up')
    etcd.put('/elsewhere/k', 'v')         # the newest write: not watched
    with pytest.raises(TimeoutError) as caught:
        wait_caught_up(watcher, etcd.client, 0.5)
    assert 'ports' in str(caught.value)
    assert watcher.ports == {}
    thread = _start(watcher)
    try:
        wait_caught_up(watcher, etcd.client, 10)
        assert watcher.ports == {'p1': 'up'}
    finally:
        watcher.stop()
        thread.join(10)


def test_a_delete_not_yet_applied_is_waited_for(etcd):
    etcd.put('/ports/p1', 'up')
    watcher = Ports(etcd)
    assert watcher.ports == {'p1': 'up'}
    etcd.delete('/ports/p1')
    etcd.put('/elsewhere/k', 'v')
    with pytest.raises(TimeoutError):
        wait_caught_up(watcher, etcd.client, 0.5)
    thread = _start(watcher)
    try:
        wait_caught_up(watcher, etcd.client, 10)
        assert watcher.ports == {}
    finally:
        watcher.stop()
        thread.join(10)


def test_a_callback_waiting_for_a_retry_is_not_caught_up(etcd, running):
    running.fail = True
    etcd.put('/ports/p1', 'up')
    with pytest.raises(TimeoutError) as caught:
        wait_caught_up(running, etcd.client, 0.5)
    assert 'waiting for a retry' in str(caught.value)
    running.fail = False
    wait_caught_up(running, etcd.client, 10)
    assert running.ports == {'p1': 'up'}


def test_after_history_is_gone_it_waits_for_the_reread(etcd):
    watcher = Ports(etcd)
    etcd.put('/ports/p1', 'up')
    etcd.put('/ports/p2', 'up')
    etcd.forget_history(2)          # no watch reaches back to p1's write
    with pytest.raises(TimeoutError):
        wait_caught_up(watcher, etcd.client, 0.3)
    thread = _start(watcher)
    try:
        wait_caught_up(watcher, etcd.client, 10)
        assert watcher.ports == {'p1': 'up', 'p2': 'up'}
        assert watcher.stats()['resyncs'] >= 2
    finally:
        watcher.stop()
        thread.join(10)
