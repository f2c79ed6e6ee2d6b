"""The production election on a real etcd: keepalive, loss, resign, faults.

Workers run in their own processes where the scenario needs it (signals).
"""

import signal
import statistics
import threading
import time
import uuid

import etcd

from etcdwatch import EtcdElection
from tests.functional.procs import Workers
from tests.helpers import FlakyClient
from tests.helpers import wait_until


def address(server):
    return '%s:%d' % (server.host, server.port)


def unique_name():
    return 'svc' + uuid.uuid4().hex[:8]


def test_refreshes_wake_no_follower(etcd_client):
    span = 20       # seconds: twenty TTLs of 1 s
    name = unique_name()
    leader = EtcdElection(etcd_client, name, '/elections', work_time=1)
    leader.wait_until_elected()
    key = leader.master_key
    start = etcd_client.read(key).modifiedIndex
    woken = []
    watcher = etcd.Client(host=etcd_client.host, port=etcd_client.port)

    def follower():
        try:
            woken.append(watcher.watch(key, index=start + 1,
                                       timeout=span + 1))
        except etcd.EtcdWatchTimedOut:
            pass
    thread = threading.Thread(target=follower, daemon=True)
    thread.start()
    deadline = time.monotonic() + span
    while time.monotonic() < deadline:
        leader.check_in()
        time.sleep(0.1)
    thread.join(span + 10)
    # Twenty TTLs went by: the key lives on, renewed ~60 times (each
    # refresh takes an index), yet the follower's live watch saw no event.
    assert etcd_client.read(key).value == leader.thread_id
    assert etcd_client.read(key).modifiedIndex > start
    assert woken == []
    leader.resign()


def test_resign_hands_over_in_under_100ms_median(etcd_client):
    name = unique_name()
    handovers = []
    for _ in range(10):
        a = EtcdElection(etcd_client, name, '/elections', work_time=5,
                         recovery_time=30)
        follower_client = FlakyClient(etcd_client)
        b = EtcdElection(follower_client, name, '/elections', work_time=5,
                         recovery_time=30)
        a.wait_until_elected()
        elected = threading.Event()
        threading.Thread(target=lambda: (b.wait_until_elected(),
                                         elected.set()),
                         daemon=True).start()
        # Measure from a follower parked on its watch (it would see the
        # delete through etcd's history even if it were not yet).
        wait_until(lambda: follower_client.calls.get('watch'))
        start = time.monotonic()
        a.resign()
        assert elected.wait(10)
        handovers.append(time.monotonic() - start)
        b.resign()
    assert statistics.median(handovers) < 0.1, handovers


def _lines(workers, event):
    return sorted(((line, w) for w in workers.all
                   for line in w.events(event)),
                  key=lambda pair: pair[0]['t'])


def test_sigstop_of_the_leader_past_its_ttl(etcd_server):
    """The paused leader notices the loss before working again.

    And the periods in which each process believed it led never overlap.
    """
    name, work_time = unique_name(), 2
    with Workers() as workers:
        for _ in range(3):
            workers.start('lead', address(etcd_server), name, work_time,
                          0.5, 0.1)
        wait_until(lambda: _lines(workers, 'work'), timeout=30)
        first = _lines(workers, 'elected')[0][1]
        first.signal(signal.SIGSTOP)
        stopped_at = time.time()
        # Another takes over once the key expires (TTL 2 s).
        wait_until(lambda: any(w is not first for _, w in
                               _lines(workers, 'elected')), timeout=30)
        wait_until(lambda: time.time() > stopped_at + 2 * work_time)
        first.signal(signal.SIGCONT)
        first.wait_for(lambda lines: any(
            line.get('event') == 'lost' for line in lines))
        # Let the new leader go on for a few units, then check the record.
        done = len(_lines(workers, 'work'))
        wait_until(lambda: len(_lines(workers, 'work')) >= done + 5,
                   timeout=30)
        after_resume = [line for line in first.lines
                        if line['t'] > stopped_at]
        assert after_resume[0]['event'] == 'lost', after_resume[:3]

        # The periods in which each process believed it led (is_elected
        # True at every 'work' line of one term) never overlap.
        spans = {}
        for line, w in _lines(workers, 'work'):
            span = spans.setdefault((id(w), line['term']), [line['t']] * 2)
            span[1] = line['t']
        ordered = sorted(spans.values())
        assert len(ordered) >= 2
        for (_start1, end1), (start2, _end2) in zip(ordered, ordered[1:]):
            assert end1 < start2, ordered


def test_leader_survives_losing_its_cluster_member(etcd_cluster):
    # The TTL must outlast the cluster's own failover: if the member was
    # raft's leader, writes stall until the others elect a new one.
    name, work_time = unique_name(), 10
    hosts = ','.join('%s:%d' % hp for hp in etcd_cluster.hosts)
    with Workers() as workers:
        leader = workers.start('lead', hosts, name, work_time, 1, 0.1)
        elected = leader.wait_for(lambda lines: leader.events('elected'))
        base = elected[0]['base_uri']
        member = next(m for m in etcd_cluster.members
                      if m.client_url == base)
        member.kill()
        killed_at = time.time()
        # Keep working for two TTLs through the other members.
        leader.wait_for(lambda lines: lines[-1]['t'] > killed_at +
                        2 * work_time, timeout=60)
        assert not leader.events('lost'), leader.events('lost')
        assert len(leader.events('elected')) == 1
