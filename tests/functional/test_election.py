"""The production election on a real etcd: keepalive, loss, resign, faults.

Every test runs twice, through the ``backend_client`` or
``backend_cluster`` fixture: on etcd's v2 API (python-etcd) and on its v3
API (etcd3gw, on an etcd with v2 disabled), with the same assertions.
Workers run in their own processes where the scenario needs it
(signals).
"""

import signal
import statistics
import threading
import time
import uuid

from etcdwatch import backends
from etcdwatch.backends import base
from etcdwatch import EtcdElection
from tests import drivers
from tests.drivers import make_driver
from tests.functional.procs import Workers
from tests.helpers import campaign_in_thread
from tests.helpers import wait_until

# Generous: a 2-core machine shared with other test runs.
WAIT = 30
# How much later than its timeout a watch call may return.
SLACK = 1.5


def unique_name():
    return 'svc' + uuid.uuid4().hex[:8]


def count_calls(obj, method):
    """Wrap ``obj.method`` to count its calls; returns the count's list."""
    calls = []
    original = getattr(obj, method)

    def counted(*args, **kwargs):
        calls.append(time.monotonic())
        return original(*args, **kwargs)
    setattr(obj, method, counted)
    return calls


def test_refreshes_wake_no_follower(backend_client, etcd_prefix):
    d, path = backend_client, etcd_prefix + '/el'
    span = 12       # seconds: twelve TTLs of 1 s (v3: six leases of 2 s)
    leader = EtcdElection(d.client, unique_name(), path, work_time=1)
    refreshes = count_calls(leader._backend, 'refresh')
    leader.wait_until_elected()
    key = leader.master_key
    follower = backends.for_client(d.new_client())
    _, start = follower.read_key(key)
    woken = []
    thread = threading.Thread(target=lambda: woken.append(
        follower.watch_key(key, start + 1, span + 1)), daemon=True)
    thread.start()
    deadline = time.monotonic() + span
    while time.monotonic() < deadline:
        leader.check_in()
        time.sleep(0.1)
    thread.join(span + WAIT)
    # The key lives on, renewed every work_time / 3, yet the follower's
    # live watch saw no event (its call timed out: None).
    assert d.state(path) == {key: leader.thread_id}
    assert len(refreshes) >= span, len(refreshes)
    assert woken == [None]
    follower.close()
    leader.resign()


def test_resign_hands_over_in_under_100ms_median(backend_client,
                                                 etcd_prefix):
    d, path, name = backend_client, etcd_prefix + '/el', unique_name()
    handovers = []
    for _ in range(10):
        a = EtcdElection(d.client, name, path, work_time=5,
                         recovery_time=30)
        b = EtcdElection(d.new_client(), name, path, work_time=5,
                         recovery_time=30)
        watches = count_calls(b._backend, 'watch_key')
        a.wait_until_elected()
        elected, _, thread = campaign_in_thread(b)
        # Measure from a follower parked on its watch (it would see the
        # delete through etcd's history even if it were not yet).
        wait_until(lambda: watches, timeout=WAIT)
        start = time.monotonic()
        a.resign()
        assert elected.wait(WAIT)
        handovers.append(time.monotonic() - start)
        thread.join(WAIT)
        b.resign()
    print('%s: resign() handovers, median %.1f ms, max %.1f ms'
          % (d.name, 1000 * statistics.median(handovers),
             1000 * max(handovers)))
    assert statistics.median(handovers) < 0.1, handovers


def test_create_refresh_delete_if(backend_client, etcd_prefix):
    d, key = backend_client, etcd_prefix + '/el/master_x'
    be = backends.for_client(d.client)
    token = be.create(key, 'me', 5)
    assert token
    assert be.create(key, 'other', 5) is None
    state, index = be.read_key(key)
    assert (state.value, state.created_index) == ('me', token)
    # A watcher of the key (on its own client) waits from here on: the
    # first event it sees must be the delete, not any of the refreshes.
    seen = []
    watcher = backends.for_client(d.new_client())
    thread = threading.Thread(target=lambda: seen.append(
        watcher.watch_key(key, index + 1, WAIT)))
    thread.start()
    try:
        for _ in range(5):
            assert be.refresh(key, 'me', 5)
        assert not be.refresh(key, 'other', 5)
        assert not be.delete_if(key, 'other')
        assert be.read_key(key)[0].value == 'me'
        assert be.delete_if(key, 'me')
        assert not be.delete_if(key, 'me')
        assert not be.refresh(key, 'me', 5)
    finally:
        thread.join(WAIT + SLACK)
        watcher.close()
    [event] = seen
    assert (event.kind, event.key) == (base.DELETE, key)
    assert be.read_key(key)[0] is None
    # A new term gets a greater fencing token.
    assert be.create(key, 'other', 5) > token
    assert be.delete_if(key, 'other')


def test_election_hands_over_at_once_on_clean(backend_client, etcd_prefix):
    d, path = backend_client, etcd_prefix + '/el'
    # Long TTL and recovery time: only the delete's notification can make
    # the follower win quickly.
    leader = EtcdElection(d.client, 'svc', path, work_time=10,
                          recovery_time=5)
    follower = EtcdElection(d.new_client(), 'svc', path, work_time=10,
                            recovery_time=5)
    leader.wait_until_elected()
    first = leader.fencing_token
    elected, times, thread = campaign_in_thread(follower)
    try:
        # The follower stays out while the leader renews.
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            leader.wait_until_elected()
            assert leader.is_elected
            assert not elected.wait(0.2)
        released = time.monotonic()
        leader.clean()
        assert elected.wait(WAIT)
        handover = times[0] - released
        print('%s: handover after clean() %.3fs' % (d.name, handover))
        assert handover < 2.0, handover
        assert follower.fencing_token > first
        assert not leader.is_elected
    finally:
        thread.join(WAIT)
        follower.clean()


def test_election_taken_over_after_lease_expiry(backend_client,
                                                etcd_prefix):
    d, path = backend_client, etcd_prefix + '/el'
    work_time, recovery_time = 2, 1
    crashed = EtcdElection(d.client, 'svc', path, work_time=work_time,
                           recovery_time=recovery_time)
    follower = EtcdElection(d.new_client(), 'svc', path,
                            work_time=work_time, recovery_time=recovery_time)
    # When the leader last renewed its key: its keepalive goes on for up
    # to work_time after the worker last showed life.
    renewed = [time.monotonic()]
    refresh = crashed._backend.refresh

    def recorded_refresh(*args):
        sent = time.monotonic()
        ok = refresh(*args)
        if ok:
            renewed[0] = sent
        return ok
    crashed._backend.refresh = recorded_refresh
    crashed.wait_until_elected()
    shown_life = time.monotonic()
    first = crashed.fencing_token
    # From here on the leader's worker shows no life: as if it hung.
    elected, times, thread = campaign_in_thread(follower)
    try:
        assert elected.wait(WAIT)
        failover = times[0] - renewed[0]
        print('%s: takeover %.3fs after the last renewal, %.3fs after the '
              'last sign of life' % (d.name, failover,
                                     times[0] - shown_life))
        # The lease (v3: at least etcd's minimum TTL, 2 s) plus etcd's
        # expiry granularity; the follower is woken by the delete.
        assert failover <= max(work_time, 2) + recovery_time + 1, failover
        assert times[0] - shown_life <= 2 * work_time + recovery_time + 1
        assert follower.fencing_token > first
        assert not crashed.is_elected
    finally:
        thread.join(WAIT)
        follower.clean()
        crashed.clean()


def _lines(workers, event):
    return sorted(((line, w) for w in workers.all
                   for line in w.events(event)),
                  key=lambda pair: pair[0]['t'])


def test_sigstop_of_the_leader_past_its_ttl(backend_client):
    """The paused leader notices the loss before working again.

    And the periods in which each process believed it led never overlap.
    """
    _sigstop_of_the_leader(backend_client, [[], [], []])


def test_sigstop_of_an_asyncio_leader_past_its_ttl(etcd_v3_server,
                                                   etcd3_client):
    """The same with asyncio candidates (v3), and a threaded one."""
    d = drivers.V3Driver(etcd_v3_server, etcd3_client)
    _sigstop_of_the_leader(d, [['--asyncio'], ['--asyncio'], []])


def _sigstop_of_the_leader(d, kinds):
    name, work_time = unique_name(), 2
    with Workers() as workers:
        for more in kinds:
            workers.start(*d.worker_args('lead', name, work_time, 0.5, 0.1,
                                         *more))
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
        after_resume = [line['event'] for line in first.lines
                        if line['t'] > stopped_at]
        # The loss (on_lost, then the worker's own check) before any work.
        assert after_resume.index('lost') < (
            after_resume.index('work') if 'work' in after_resume
            else len(after_resume)), after_resume[:4]
        assert after_resume[0] in ('term_lost', 'lost'), after_resume[:4]

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


def test_leader_survives_losing_its_cluster_member(backend_cluster):
    """Its client moves on to another member (v3: FailoverEtcd3Client)."""
    cluster, api = backend_cluster
    _leader_survives_losing_its_member(
        cluster, list(make_driver(api, cluster.members[0]).worker_flags))


def test_asyncio_leader_survives_losing_its_cluster_member(etcd_cluster_v3):
    """The same with an AsyncEtcd3Client on every member (v3)."""
    _leader_survives_losing_its_member(etcd_cluster_v3,
                                       ['--v3', '--asyncio'])


def _leader_survives_losing_its_member(cluster, flags):
    # The TTL must outlast the cluster's own failover: if the member was
    # raft's leader, writes stall until the others elect a new one.
    name, work_time = unique_name(), 10
    hosts = ','.join('%s:%d' % hp for hp in cluster.hosts)
    cluster.wait_for_leader()
    with Workers() as workers:
        leader = workers.start('lead', hosts, name, work_time, 1, 0.1,
                               *flags)
        elected = leader.wait_for(lambda lines: leader.events('elected'))
        base = elected[0]['base_uri']
        member = next(m for m in cluster.members
                      if m.client_url == base)
        member.kill()
        killed_at = time.time()
        # Keep working for two TTLs through the other members.
        leader.wait_for(lambda lines: lines[-1]['t'] > killed_at +
                        2 * work_time, timeout=60)
        assert not leader.events('lost'), leader.events('lost')
        assert len(leader.events('elected')) == 1


def test_etcd_paused_just_after_winning_ends_the_term_by_its_lease(
        fresh_backend):
    """Whatever the keepalive's and the guard's requests wait for.

    etcd is paused right after the election, while the leader keeps
    showing life: its renewals (and any read) hang for the client's whole
    timeout (10 s), yet the term ends by the local lease deadline.
    """
    d, work_time = fresh_backend, 3
    ends = []
    e = EtcdElection(d.client, unique_name(), '/el-pause', work_time=work_time,
                     recovery_time=1,
                     on_lost=lambda term: ends.append(time.monotonic()))
    e.wait_until_elected()
    d.server.pause()
    paused = time.monotonic()
    try:
        while not ends:
            if e.is_elected:
                e.check_in()
            time.sleep(0.05)
            assert time.monotonic() - paused < WAIT
    finally:
        d.server.resume()
    print('\n%s: term ended %.2f s into an etcd pause (work_time %s s)'
          % (d.name, ends[0] - paused, work_time))
    assert ends[0] - paused <= work_time
    e.clean()


def test_cancel_and_timeout_end_a_pending_campaign(backend_client,
                                                   etcd_prefix):
    """cancel() from another thread: at once on v3, within the wait on v2.

    Either way the candidate withdraws and never takes the key later.
    """
    d, path = backend_client, etcd_prefix + '/el'
    recovery_time = 2
    leader = EtcdElection(d.client, 'svc', path, work_time=10,
                          recovery_time=recovery_time)
    follower = EtcdElection(d.new_client(), 'svc', path, work_time=10,
                            recovery_time=recovery_time)
    leaders = []
    observer = follower.observe(leaders.append)
    try:
        assert leader.wait_until_elected(timeout=WAIT)
        started = time.monotonic()
        assert follower.wait_until_elected(timeout=0.5) is False
        timed_out = time.monotonic() - started
        result = []
        thread = threading.Thread(
            target=lambda: result.append(follower.wait_until_elected()),
            daemon=True)
        thread.start()
        asked = time.monotonic()
        follower.cancel()
        thread.join(WAIT)
        took = time.monotonic() - asked
        assert result == [False]
        wait_until(lambda: leader.thread_id in leaders, timeout=WAIT)
        leader.resign()
        wait_until(lambda: leaders[-1:] == [None], timeout=WAIT)
        # A campaign still running would take the key within a wait for
        # it: give it that long, and more, to prove none does.
        time.sleep(recovery_time + 0.5)
        assert leader.leader() is None and not follower.is_elected
        print('\n%s: wait_until_elected(timeout=0.5) returned after %.2f s; '
              'cancel() ended a campaign in %.3f s (recovery_time %s s)'
              % (d.name, timed_out, took, recovery_time))
        assert timed_out < 0.5 + recovery_time + SLACK
        # v3 wakes the wait for the key at once; v2 ends it within it.
        assert took < (1.0 if d.name == 'v3' else recovery_time + SLACK)
        assert leaders[-2:] == [leader.thread_id, None]
    finally:
        observer.stop()
        follower.clean()
        leader.clean()
