"""No polling: what the tooz driver asks etcd while it waits.

Counted by etcd itself: the sum of ``grpc_server_started_total`` over
every method (each gateway request, each watch stream) on an etcd of this
module's own, to which nothing else talks, over a window of WINDOW
seconds:

* while a waiter blocks in ``acquire()`` behind a holder (no heart
  threads; ``lock_timeout`` 30, so a lease keepalive comes every 10 s): at
  most LOCK_BOUND requests.  A driver that retried the lock every second
  would make at least WINDOW;
* while a follower calls ``run_watchers()`` in a loop (each call waits
  up to 50 ms for its campaign: about 100 calls) and another coordinator
  leads: at most ELECTION_BOUND requests, however
  many calls.  Its campaign waits on a watch of the leader's key and looks
  again only every ``recovery_time`` (5 s); a driver that campaigned in
  each call (as this one did: 6 requests a call) would make hundreds.

Then the leader resigns and the follower's next calls announce it: the
waiting cost nothing in reaction time.  Figures are printed with ``-s``,
with tooz's etcd3gw driver's for the lock wait.
"""

import re
import threading
import time
import uuid

import pytest
import requests
from tooz import coordination

from etcdwatch.testing.server import EtcdServer
from tests.helpers import wait_until

pytestmark = pytest.mark.functional

WINDOW = 5.0
#: The holder's and the waiter's keepalives (every 10 s: at most one
#: each in 5 s), and a watch stream opened again: 3, plus one spare.
LOCK_BOUND = 4
#: Within 5 s with recovery_time 5: at most two looks at the key (a lease,
#: a create, a revoke, two reads, a watch: 6 requests each), and the
#: leader's keepalive: 13; the limit is 20, a fifth of the calls made.
ELECTION_BOUND = 20


@pytest.fixture(scope='module')
def server():
    with EtcdServer(name='tooz-requests', enable_v2=False) as etcd:
        yield etcd


def requests_started(server):
    """Every gRPC call etcd has begun, by method, from its /metrics."""
    text = requests.get(server.client_url + '/metrics', timeout=30).text
    counts = {}
    for found in re.finditer(r'^grpc_server_started_total\{grpc_method='
                             r'"(\w+)",[^}]*\} (\d+)$', text, re.M):
        counts[found.group(1)] = (counts.get(found.group(1), 0)
                                  + int(found.group(2)))
    return counts


def made_during(server, func):
    """(total, by method) of the requests etcd began while func ran."""
    before = requests_started(server)
    func()
    after = requests_started(server)
    by_method = {name: after[name] - before.get(name, 0) for name in after
                 if after[name] != before.get(name, 0)}
    return sum(by_method.values()), by_method


@pytest.fixture
def coords(server):
    made = []

    def make(scheme='etcdwatch+http'):
        coord = coordination.get_coordinator(
            '%s://%s:%d/' % (scheme, server.host, server.port),
            uuid.uuid4().hex.encode())
        coord.start()
        made.append(coord)
        return coord
    yield make
    for coord in made:
        try:
            coord.stop()
        except Exception:
            pass


def lock_wait(server, make, scheme):
    holder = make(scheme).get_lock(b'lock-' + uuid.uuid4().hex.encode())
    waiter = make(scheme).get_lock(holder.name)
    assert holder.acquire(blocking=False)
    got = []
    thread = threading.Thread(target=lambda: got.append(
        waiter.acquire(blocking=60)), daemon=True)
    thread.start()
    if scheme == 'etcdwatch+http':
        # The waiter's key is queued: it waits on a watch from now on.
        wait_until(lambda: len(waiter._backend.read_queue(
            waiter.prefix).entries) == 2, timeout=30)
    else:
        wait_until(lambda: thread.is_alive(), timeout=30)
    total, by_method = made_during(server, lambda: thread.join(WINDOW))
    assert thread.is_alive() and not got, 'the waiter did not wait'
    holder.release()
    thread.join(60)
    assert got == [True]
    waiter.release()
    return total, by_method


def test_a_blocked_acquire_makes_no_requests(server, coords):
    total, by_method = lock_wait(server, coords, 'etcdwatch+http')
    print('\netcdwatch: a waiter blocked %.0f s in acquire(): %d requests '
          '%r' % (WINDOW, total, by_method))
    assert total <= LOCK_BOUND, by_method


def test_a_follower_in_run_watchers_makes_no_request_per_call(server,
                                                              coords):
    leader, follower = coords(), coords()
    group = b'group-' + uuid.uuid4().hex.encode()
    leader.create_group(group).get()
    elected = []
    leader.watch_elected_as_leader(group, elected.append)
    leader.run_watchers()
    assert [e.member_id for e in elected] == [leader._member_id]
    follower.watch_elected_as_leader(group, elected.append)
    follower.run_watchers()
    calls = []

    def follow():
        end = time.monotonic() + WINDOW
        while time.monotonic() < end:
            follower.run_watchers()
            calls.append(1)
    total, by_method = made_during(server, follow)
    assert len(elected) == 1, 'the follower was elected'
    print('\netcdwatch: a follower called run_watchers() %d times in '
          '%.0f s: %d requests %r' % (len(calls), WINDOW, total, by_method))
    # One request per call would exceed the bound.
    assert len(calls) > ELECTION_BOUND
    assert total <= ELECTION_BOUND, by_method

    # And it takes over at once when the leader goes.
    assert leader.stand_down_group_leader(group)
    resigned = time.monotonic()
    wait_until(lambda: follower.run_watchers() or len(elected) == 2,
               timeout=30)
    print('announced by the follower %.3f s after the resignation'
          % (time.monotonic() - resigned))
    assert elected[1].member_id == follower._member_id


def test_etcd3gw_driver_lock_wait_for_comparison(server, coords):
    """tooz's etcd3gw driver: printed, not asserted."""
    total, by_method = lock_wait(server, coords, 'etcd3+http')
    print('\netcd3gw: a waiter blocked %.0f s in acquire(): %d requests %r'
          % (WINDOW, total, by_method))
