"""An application's own unit tests, on FakeEtcdClient (docs/testing.rst).

Run them with pytest.  ``PortAgent`` stands for your code: a change watcher
that applies ports to a local table.
"""

import threading

import etcd
import pytest

from etcdwatch import EtcdChangeWatcher
from etcdwatch.testing import FakeClock
from etcdwatch.testing import FakeEtcdClient
from etcdwatch.testing import wait_caught_up


class PortAgent(EtcdChangeWatcher):
    # Tests need not wait 2 s after each etcd error.
    DANGER_PAUSE = 0.05

    def __init__(self, client):
        self.ports = {}
        # A short heartbeat: stop() takes effect within it.
        super(PortAgent, self).__init__(client, 'agent', '/ports',
                                        heartbeat=0.2)

    def added(self, short_key, value):
        self.ports[short_key] = value

    def removed(self, short_key):
        self.ports.pop(short_key, None)


@pytest.fixture
def client():
    return FakeEtcdClient()


@pytest.fixture
def running(client):
    """A PortAgent whose watch_forever runs in a thread."""
    agent = PortAgent(client)
    thread = threading.Thread(target=agent.watch_forever)
    thread.start()
    yield agent
    agent.stop()
    thread.join(10)


def test_loads_what_is_there(client):
    client.write('/ports/p1', 'up')
    agent = PortAgent(client)          # the constructor loads the tree
    assert agent.ports == {'p1': 'up'}


def test_follows_changes(client, running):
    client.write('/ports/p1', 'up')
    client.write('/ports/p1', 'down')
    wait_caught_up(running, client)    # raises TimeoutError after 10 s
    assert running.ports == {'p1': 'down'}


def test_writes_elsewhere_are_not_waited_for(client, running):
    client.write('/ports/p1', 'up')
    client.write('/routers/r1', 'up')  # etcd's newest index, not under /ports
    wait_caught_up(running, client)
    assert running.ports == {'p1': 'up'}


def test_counts_requests(client, running):
    # wait_for_watches: the agent is parked in its watch, so what follows
    # reaches it as an event, not as part of a read.
    assert client.wait_for_watches(1)
    client.calls.clear()
    client.write('/ports/p1', 'up')
    wait_caught_up(running, client)
    assert client.calls['write'] == 1


def test_rides_out_an_etcd_outage(client, running):
    assert client.wait_for_watches(1)
    with client.outage():              # every call fails meanwhile
        with pytest.raises(etcd.EtcdConnectionFailed):
            client.read('/ports')
    client.write('/ports/p1', 'up')
    wait_caught_up(running, client)
    assert running.ports == {'p1': 'up'}
    assert running.stats()['errors'] >= 1


def test_retries_a_failed_watch(client, running):
    assert client.wait_for_watches(1)
    client.fail_next('watch', etcd.EtcdConnectionFailed('boom'), times=2)
    client.write('/ports/p1', 'up')    # wakes the watch already parked
    client.write('/ports/p2', 'up')    # the next two watches fail
    wait_caught_up(running, client)
    assert running.ports == {'p1': 'up', 'p2': 'up'}


def test_recovers_when_etcd_history_is_gone(client):
    agent = PortAgent(client)
    client.write('/ports/p1', 'up')
    client.write('/ports/gone', 'x')
    client.delete('/ports/gone')
    client.clear_history()             # as if etcd moved 1000 events on
    agent.do_watch()                   # one step: history gone, re-read
    assert agent.ports == {'p1': 'up'}
    assert agent.stats()['resyncs'] == 2


def test_ttl_expiry_on_a_fake_clock():
    clock = FakeClock()
    client = FakeEtcdClient(clock=clock)
    client.write('/ports/p1', 'up', ttl=30)
    agent = PortAgent(client)
    assert agent.ports == {'p1': 'up'}
    clock.advance(31)                  # no real waiting
    agent.do_watch()                   # the expiry arrives as a delete
    assert agent.ports == {}
