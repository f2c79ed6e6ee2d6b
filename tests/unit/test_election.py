"""EtcdElection on the in-memory fake."""

import gc
import threading
import time
import weakref

import etcd
import pytest

from etcdwatch import election as election_mod
from etcdwatch import EtcdElection
from etcdwatch import EtcdElectionLost
from etcdwatch import EtcdWatcher
from etcdwatch.testing.fake import FakeEtcdClient
from tests.helpers import FlakyClient
from tests.helpers import HangingRefresh
from tests.helpers import Runner
from tests.helpers import wait_until

E = '/election'


@pytest.fixture
def client():
    return FakeEtcdClient()


def elector(client, **kwargs):
    kwargs.setdefault('work_time', 5)
    kwargs.setdefault('recovery_time', 1)
    return EtcdElection(client, 'svc', E, **kwargs)


def holder(client):
    try:
        return client.read(E + '/master_svc').value
    except etcd.EtcdKeyNotFound:
        return None


def test_seed_api(client):
    e = elector(client)
    assert e.master_key == E + '/master_svc'
    assert isinstance(e.thread_id, str) and e.thread_id
    assert elector(client).thread_id != e.thread_id
    assert not e.is_elected


def test_first_wins_and_renews(client):
    a, b = elector(client), elector(client)
    a.wait_until_elected()
    assert holder(client) == a.thread_id and a.is_elected
    token = a.fencing_token
    a.wait_until_elected()
    assert a.fencing_token == token
    assert not b.is_elected
    done = threading.Event()
    t = threading.Thread(target=lambda: (b.wait_until_elected(), done.set()),
                         daemon=True)
    t.start()
    assert not done.wait(0.5)
    a.clean()
    assert done.wait(5)
    assert holder(client) == b.thread_id
    assert b.fencing_token > token


def test_renewal_is_a_ttl_refresh_that_wakes_nobody(client):
    a = elector(client)
    a.wait_until_elected()
    start = client.read(E + '/master_svc')
    woken = []

    def follower_watch():
        try:
            woken.append(client.watch(E + '/master_svc',
                                      index=start.modifiedIndex + 1,
                                      timeout=1))
        except etcd.EtcdWatchTimedOut:
            pass
    t = threading.Thread(target=follower_watch, daemon=True)
    t.start()
    for _ in range(5):
        a.wait_until_elected()
        a.extend_election(5)
    t.join(5)
    assert woken == []
    assert client.read(E + '/master_svc').value == a.thread_id


def test_follower_takes_over_when_the_key_expires():
    from etcdwatch.testing.fake import FakeClock
    clock = FakeClock()
    client = FakeEtcdClient(clock=clock)
    a, b = elector(client), elector(client, recovery_time=30)
    a.wait_until_elected()
    done = threading.Event()
    threading.Thread(target=lambda: (b.wait_until_elected(), done.set()),
                     daemon=True).start()
    wait_until(lambda: client.calls.get('watch', 0) >= 1)
    assert not done.is_set()
    clock.advance(6)
    # Woken by the expiry, not by recovery_time (30 s).
    assert done.wait(5)
    assert holder(client) == b.thread_id


def test_extend_election_raises_when_lost(client):
    a, b = elector(client), elector(client)
    a.wait_until_elected()
    client.delete(E + '/master_svc')
    b.wait_until_elected()
    with pytest.raises(EtcdElectionLost):
        a.extend_election(5)
    assert not a.is_elected
    b.extend_election(5)


def test_clean_is_idempotent_and_only_deletes_our_key(client):
    a, b = elector(client), elector(client)
    a.wait_until_elected()
    b.clean()
    assert holder(client) == a.thread_id
    a.clean()
    a.clean()
    assert holder(client) is None


def test_k_electors_are_not_held_forever(client):
    e = elector(client)
    e.wait_until_elected()
    assert e in election_mod._live_electors
    ref = weakref.ref(e)
    del e
    # Its keepalive and guard hold it only for the length of one call.
    wait_until(lambda: (gc.collect(), ref() is None)[1], timeout=5)


def test_k_a_leader_that_is_collected_releases_its_key(client):
    e = elector(client)
    e.wait_until_elected()
    assert holder(client) == e.thread_id
    del e
    wait_until(lambda: (gc.collect(), holder(client) is None)[1])


def test_k_a_leader_collected_inside_a_call_to_its_client(client):
    # The collector runs in whichever thread allocates, maybe in the
    # middle of a call to the very client, which then holds a lock the
    # release needs (a FakeEtcdClient's is not reentrant): the finalizer
    # must not wait for it there, or that thread hangs for good.
    e = elector(client)
    e.wait_until_elected()
    release = (e._backend, e.master_key, e.thread_id, e._held)
    done = threading.Event()

    def finalizer_inside_a_call():
        with client._lock:
            election_mod._release_if_held(*release)
        done.set()
    thread = threading.Thread(target=finalizer_inside_a_call, daemon=True)
    thread.start()
    assert done.wait(10), 'the finalizer deadlocked on the client'
    wait_until(lambda: holder(client) is None)


def test_k_a_follower_that_is_collected_deletes_nothing(client):
    a, b = elector(client), elector(client)
    a.wait_until_elected()
    del b
    gc.collect()
    assert holder(client) == a.thread_id


def test_k_atexit_cleanup_releases(client):
    e = elector(client)
    e.wait_until_elected()
    election_mod.cleanup_electors()
    assert holder(client) is None


def test_i_multi_worker_false_never_proceeds_without_etcd(client):
    flaky = FlakyClient(client)
    e = elector(flaky, recovery_time=0.05)
    flaky.down = True
    done = threading.Event()
    threading.Thread(target=lambda: (e.wait_until_elected(), done.set()),
                     daemon=True).start()
    assert not done.wait(0.5)
    assert not e.is_elected
    flaky.down = False
    assert done.wait(5)
    assert holder(client) == e.thread_id


def test_i_multi_worker_true_works_without_etcd(client):
    flaky = FlakyClient(client)
    e = elector(flaky, recovery_time=0.05, multi_worker_ok=True)
    flaky.down = True
    e.wait_until_elected()
    assert holder(client) is None
    e.extend_election(5)


def test_i_leader_keeps_its_term_through_a_short_outage(client):
    flaky = FlakyClient(client)
    e = elector(flaky)
    e.wait_until_elected()
    flaky.down = True
    e.extend_election(5)       # still within the lease: kept
    e._lease_deadline = time.monotonic() - 1   # the lease ran out locally
    with pytest.raises(EtcdElectionLost):
        e.extend_election(5)


@pytest.mark.parametrize('argument,kwargs', [
    ('name', {'name': 'a?b'}),
    ('name', {'name': ''}),
    ('name', {'name': 'a/b'}),
    ('election_path', {'election_path': '/e#x'}),
    ('election_path', {'election_path': 'e'}),
    ('work_time', {'work_time': 0}),
    ('work_time', {'work_time': None}),
    ('recovery_time', {'recovery_time': -5}),
])
def test_j_bad_input(client, argument, kwargs):
    args = {'name': 'svc', 'election_path': E, 'work_time': 5}
    args.update(kwargs)
    with pytest.raises(ValueError, match=argument):
        EtcdElection(client, **args)
    assert not client.calls


class Elected(EtcdWatcher):
    def __init__(self, *args, **kwargs):
        self.loads = 0
        super(Elected, self).__init__(*args, **kwargs)

    def do_work(self, action, key, value):
        pass

    def do_all_work(self):
        self.loads += 1


def test_only_the_elected_watcher_loads_and_watches(client):
    client.write('/data/a', '1')
    ws = [Elected(client, 'w', '/data', election_path=E,
                  wait_until_elected=True, heartbeat=0.2, recovery_time=0.2)
          for _ in range(3)]
    assert all(w.etcd_data is None for w in ws)
    runners = [Runner(w) for w in ws]
    for r in runners:
        r.__enter__()
    try:
        wait_until(lambda: sum(w.synced for w in ws) == 1)
        leader = next(w for w in ws if w.synced)
        assert leader.etcd_elector.is_elected
        assert leader.etcd_data == {'/data/a': '1'}
        runners[ws.index(leader)].__exit__(None, None, None)
        wait_until(lambda: sum(w.synced for w in ws) == 2)
        second = next(w for w in ws if w.synced and w is not leader)
        assert second.etcd_data == {'/data/a': '1'}
    finally:
        for w, r in zip(ws, runners):
            if r.thread.is_alive():
                r.__exit__(None, None, None)


# -- keepalive, loss, fencing, observe, resign (the election issue) ------

def test_keepalive_holds_the_key_while_the_worker_checks_in(client):
    flaky_follower = FlakyClient(client)
    a = elector(client, work_time=1)
    b = elector(flaky_follower, work_time=1, recovery_time=30)
    a.wait_until_elected()
    token = a.fencing_token
    done = threading.Event()
    threading.Thread(target=lambda: (b.wait_until_elected(), done.set()),
                     daemon=True).start()
    wait_until(lambda: flaky_follower.calls.get('watch', 0) == 1)
    refreshes_before = client.calls.get('write', 0)
    deadline = time.monotonic() + 3.5       # several TTLs
    while time.monotonic() < deadline:
        a.check_in()
        time.sleep(0.1)
    assert a.is_elected and a.fencing_token == token
    assert not done.is_set()
    # Renewed several times, and the follower was never woken.
    assert client.calls.get('write', 0) - refreshes_before >= 5
    assert flaky_follower.calls.get('watch', 0) == 1
    a.resign()
    assert done.wait(5)


def test_a_hung_leader_loses_within_two_work_times(client):
    lost = []
    a = elector(client, work_time=1, on_lost=lost.append)
    b = elector(client, work_time=1, recovery_time=0.5)
    a.wait_until_elected()
    start = time.monotonic()
    # a never checks in again; b takes over once the key expires.
    b.wait_until_elected()
    took = time.monotonic() - start
    assert took < 2 * 1 + 0.5 + 1.0, took
    assert not a.is_elected
    wait_until(lambda: lost)
    assert lost[0].lost.is_set()
    with pytest.raises(EtcdElectionLost):
        a.check_in()


def test_callbacks_and_terms(client):
    events = []
    a = elector(client, on_elected=lambda t: events.append(('won', t)),
                on_lost=lambda t: events.append(('lost', t)))
    a.wait_until_elected()
    first = a.term
    assert events == [('won', first)]
    a.resign()
    assert events[-1] == ('lost', first) and first.lost.is_set()
    with pytest.raises(EtcdElectionLost):
        first.check()
    a.wait_until_elected()
    assert a.term.fencing_token > first.fencing_token
    assert [e[0] for e in events] == ['won', 'lost', 'won']


def test_loss_is_noticed_by_the_keepalive(client):
    lost = threading.Event()
    a = elector(client, work_time=1, on_lost=lambda t: lost.set())
    a.wait_until_elected()
    # Someone else takes the key (say, an operator).
    client.write(E + '/master_svc', 'intruder')
    assert lost.wait(5)
    assert not a.is_elected
    with pytest.raises(EtcdElectionLost):
        a.check_in()


def test_a_callback_that_raises_is_logged_not_fatal(client, caplog):
    def boom(term):
        raise RuntimeError('callback bug')
    a = elector(client, on_elected=boom)
    a.wait_until_elected()
    assert a.is_elected
    assert 'callback bug' in caplog.text


def test_leader_observes_without_campaigning(client):
    a, b = elector(client), elector(client)
    assert b.leader() is None
    a.wait_until_elected()
    assert b.leader() == a.thread_id
    assert not b.is_elected


def test_resign_hands_over_at_once(client):
    a, b = elector(client), elector(client, recovery_time=30)
    a.wait_until_elected()
    done = threading.Event()
    threading.Thread(target=lambda: (b.wait_until_elected(), done.set()),
                     daemon=True).start()
    client.wait_for_watches(1)
    a.resign()
    assert done.wait(5)
    a.resign()      # idempotent
    assert b.leader() == b.thread_id


def test_run_and_leadership(client):
    a = elector(client)
    assert a.run(lambda x: (a.is_elected, x), 7) == (True, 7)
    assert holder(client) is None
    with a.leadership() as term:
        assert holder(client) == a.thread_id
        term.check()
    assert term.lost.is_set() and holder(client) is None


def test_bad_callbacks_are_refused(client):
    with pytest.raises(ValueError, match='on_lost'):
        elector(client, on_lost='not callable')


def test_an_elected_watcher_that_loses_stops_then_reloads(client):
    client.write('/data/a', '1')
    w = Elected(client, 'w', '/data', election_path=E,
                wait_until_elected=True, heartbeat=0.2, recovery_time=0.2)
    with Runner(w):
        wait_until(lambda: w.synced)
        assert w.loads == 1
        token = w.etcd_elector.fencing_token
        # Another worker takes the key while ours is between refreshes.
        client.delete(E + '/master_w')
        client.write(E + '/master_w', 'other', ttl=1)
        wait_until(lambda: not w.etcd_elector.is_elected)
        client.write('/data/b', '2')
        wait_until(lambda: w.etcd_elector.is_elected, timeout=10)
        wait_until(lambda: w.loads == 2)
        assert w.etcd_elector.fencing_token > token
        assert w.etcd_data == {'/data/a': '1', '/data/b': '2'}


@pytest.mark.parametrize('change', ['delete', 'take'])
def test_a_leader_sees_its_key_deleted_or_taken_at_once(client, change):
    lost = []
    a = elector(client, work_time=30,
                on_lost=lambda t: lost.append(time.monotonic()))
    a.wait_until_elected()
    client.wait_for_watches(1)          # the guard watches the key
    changed = time.monotonic()
    if change == 'delete':
        client.delete(E + '/master_svc')
    else:
        client.write(E + '/master_svc', 'intruder')
    # work_time 30: the keepalive would not renew for 10 s.
    wait_until(lambda: not a.is_elected, timeout=5)
    wait_until(lambda: lost, timeout=5)
    assert lost[0] - changed < 1.0
    with pytest.raises(EtcdElectionLost):
        a.check_in()
    assert not a.is_elected


def test_a_renewal_that_hangs_does_not_delay_the_loss(client):
    # A member cut off from its cluster: the renewal blocks for the
    # client's whole timeout.  The term must end at the lease deadline,
    # which comes before the key can expire on the server.
    hanging = HangingRefresh(client)
    release = hanging.release

    lost = []
    a = elector(hanging, work_time=4,
                on_lost=lambda t: lost.append(time.monotonic()))
    try:
        sent = time.monotonic()
        a.wait_until_elected()
        wait_until(lambda: lost, timeout=10)
        # The local deadline: 4 s after the create was sent, minus a 1 s
        # margin; the key expires on the server 4 s after it.
        assert 2.9 < lost[0] - sent < 3.6
        assert not a.is_elected
    finally:
        release.set()


class Timed(EtcdWatcher):
    """Logs when each callback starts and returns; can hold one open."""

    def __init__(self, *args, **kwargs):
        self.log = []
        self.hold = threading.Event()
        self.holding = threading.Event()
        self.on_callback = None
        super(Timed, self).__init__(*args, **kwargs)

    def do_all_work(self):
        self.do_work('all', None, None)

    def do_work(self, action, key, value):
        self.log.append(('start', key, time.monotonic()))
        if key == '/data/slow':
            self.holding.set()
            if self.on_callback is not None:
                self.on_callback()
            assert self.hold.wait(30)
        self.log.append(('end', key, time.monotonic()))


@pytest.mark.parametrize('stop_from', ['another thread', 'the callback'])
def test_a_stopped_leader_releases_after_its_running_callback(client,
                                                              stop_from):
    a = Timed(client, 'w', '/data', election_path=E,
              wait_until_elected=True, heartbeat=0.2, recovery_time=0.2)
    with Runner(a):
        wait_until(lambda: a.synced)
        b = Timed(client, 'w', '/data', election_path=E,
                  wait_until_elected=True, heartbeat=0.2, recovery_time=0.2)
        with Runner(b):
            if stop_from == 'the callback':
                a.on_callback = a.stop
            client.write('/data/slow', '1')
            assert a.holding.wait(10)
            if stop_from == 'another thread':
                started = time.monotonic()
                a.stop()
                assert time.monotonic() - started < 1.0, 'stop() blocked'
            # a still holds the key while its callback runs.
            time.sleep(0.5)     # what b would need to take over (no wait)
            assert not b.log and b.etcd_elector.leader() == \
                a.etcd_elector.thread_id
            returned = time.monotonic()
            a.hold.set()
            wait_until(lambda: b.log, timeout=10)
            assert b.log[0][2] > returned
            assert a.log[-1][0] == 'end'
            # Nothing started on a after its stop.
            starts = [key for what, key, _t in a.log if what == 'start']
            assert starts[-1] == '/data/slow'


def test_a_term_won_right_after_a_resign_has_its_keepalive_and_guard(
        client):
    # The ended term's tasks may still be alive when the next term begins:
    # the new term must get tasks of its own.
    lost = []
    a = elector(client, work_time=30, on_lost=lambda t: lost.append(t))
    for _ in range(20):
        a.wait_until_elected()
        term = a.term
        assert a._keepalive_running(), 'a term without keepalive or guard'
        assert a._keepalive[0] is term and a._guard[0] is term
        a.resign()
    a.wait_until_elected()
    client.wait_for_watches(1)
    client.delete(E + '/master_svc')
    # Only the guard can notice (renewals every 10 s).
    wait_until(lambda: len(lost) == 21, timeout=5)
    assert not a.is_elected


def test_a_refresh_that_lands_after_the_term_ended_revives_nothing(client):
    # A member cut off from its cluster: the renewal hangs past the lease
    # deadline (the guard ends the term), then goes through.
    hanging = HangingRefresh(client, hanging=False)
    release = hanging.release

    events = []
    a = elector(hanging, work_time=3,
                on_elected=lambda t: events.append(('won', t)),
                on_lost=lambda t: events.append(('lost', t)))
    try:
        hanging.hanging = True
        a.wait_until_elected()
        wait_until(lambda: len(events) == 2, timeout=10)
        release.set()
        # The refresh lands now; give the keepalive time to act on it.
        time.sleep(0.5)
        assert [what for what, _t in events] == ['won', 'lost']
        assert a.term is None and not a.is_elected
        assert events[0][1].lost.is_set()
    finally:
        release.set()


def test_wait_until_elected_with_a_timeout_withdraws(client):
    a, b = elector(client), elector(client)
    assert a.wait_until_elected() is True
    started = time.monotonic()
    assert b.wait_until_elected(timeout=0.3) is False
    assert 0.3 <= time.monotonic() - started < 0.3 + 1 + 2   # + a watch
    a.resign()
    time.sleep(0.2)
    # b does not take the key later: nobody campaigns.
    assert holder(client) is None and not b.is_elected
    assert b.wait_until_elected(timeout=5) is True    # asked again
    b.resign()


def test_cancel_makes_a_pending_campaign_return_false(client):
    a, b = elector(client), elector(client, recovery_time=1)
    a.wait_until_elected()
    result = []
    thread = threading.Thread(
        target=lambda: result.append(b.wait_until_elected()), daemon=True)
    thread.start()
    client.wait_for_watches(2)        # b waits on the key (a's guard too)
    b.cancel()
    thread.join(5)
    assert result == [False]
    a.resign()
    time.sleep(0.2)
    assert holder(client) is None and not b.is_elected


def test_cancel_gives_back_a_key_won_in_the_meantime(client):
    b = elector(client)
    original = b._candidacy.campaign

    def campaign(stopped, time_left=None):
        won = yield from original(lambda: False, time_left)
        b._cancelled.set()  # as if cancel() came while the create was sent
        return won
    b._candidacy.campaign = campaign
    assert b.wait_until_elected() is False
    assert holder(client) is None and not b.is_elected


def test_observe_reports_each_new_leader(client):
    seen = []
    watcher = elector(client)
    observer = watcher.observe(seen.append)
    wait_until(lambda: seen == [None])
    a, b = elector(client), elector(client)
    a.wait_until_elected()
    wait_until(lambda: seen == [None, a.thread_id])
    a.resign()
    b.wait_until_elected()
    wait_until(lambda: seen[-1] == b.thread_id)
    assert a.thread_id in seen and seen.index(a.thread_id) < seen.index(
        b.thread_id)
    observer.stop()
    assert observer.join(5)
    b.resign()
    assert not watcher.is_elected and seen[-1] == b.thread_id
    with pytest.raises(ValueError, match='on_change'):
        watcher.observe('not callable')


def test_leaders_generator(client):
    a = elector(client)
    a.wait_until_elected()
    leaders = elector(client).leaders()
    assert next(leaders) == a.thread_id
    a.resign()
    assert next(leaders) is None
    leaders.close()


def test_stats(client):
    a, b = elector(client), elector(client)
    assert a.stats()['seconds_since_contact'] is None
    a.wait_until_elected()
    a.extend_election(5)
    stats = a.stats()
    assert stats['terms_won'] == 1 and stats['renewals'] >= 1
    assert stats['elected'] and stats['term'] == a.fencing_token
    assert 0 <= stats['seconds_since_contact'] < 5
    assert not b.wait_until_elected(timeout=0.2)
    assert b.stats()['campaign_seconds'] >= 0.2
    client.delete(E + '/master_svc')
    with pytest.raises(EtcdElectionLost):
        a.extend_election(5)
    stats = a.stats()
    assert stats['terms_lost'] == 1 and stats['failed_renewals'] >= 1
    assert not stats['elected'] and stats['term'] is None


def test_candidate_id_is_the_keys_value(client):
    e = EtcdElection(client, 'svc', '/e', work_time=10,
                     candidate_id='member-7.a1')
    assert e.thread_id == 'member-7.a1'
    assert e.wait_until_elected(timeout=10)
    assert e.leader() == 'member-7.a1'
    e.resign()
    assert e.leader() is None


@pytest.mark.parametrize('bad', ['', '  ', 'a\nb', b'id', 7])
def test_a_bad_candidate_id_is_named(client, bad):
    with pytest.raises(ValueError, match='candidate_id'):
        EtcdElection(client, 'svc', '/e', work_time=10, candidate_id=bad)
