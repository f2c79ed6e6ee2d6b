"""Group membership on the in-memory fake: the rules, the host, the watcher.

The rules are driven here with a :class:`FakeClock`: each SLEEP they ask
for advances the clock (and so expires the fake's keys), so TTLs are
exact and nothing waits.  The threaded host and the group watcher run on
real threads; eventlet runs in a monkey-patched process of its own.
"""

import gc
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from etcdwatch import backends
from etcdwatch import driving
from etcdwatch import exceptions
from etcdwatch.membership import EtcdGroupWatcher
from etcdwatch.membership import EtcdMembership
from etcdwatch.membership import group_members
from etcdwatch.rules import membership as rules
from etcdwatch.rules import requests
from etcdwatch.testing import FakeClock
from etcdwatch.testing import FakeEtcdClient
from tests.helpers import wait_until

KEY = '/group/m1'


class ClockDriver(object):
    """Runs a rule on a fake etcd, serving its sleeps with a FakeClock."""

    def __init__(self, ttl=3, can_replace=False):
        self.clock = FakeClock()
        self.client = FakeEtcdClient(clock=self.clock)
        self.backend = backends.for_client(self.client)
        self.rules = rules.Membership(KEY, 'v1', ttl, can_replace,
                                      clock=self.clock.time)
        self.sleeps = []
        self.stop_after = None      # stop once the clock passes this
        self.before_sleep = None    # called with each sleep's seconds

    def stopped(self):
        return (self.stop_after is not None and
                self.clock.time() >= self.stop_after)

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        if self.before_sleep is not None:
            self.before_sleep(seconds)
        self.clock.advance(seconds)
        return self.stopped()

    def run(self, rule):
        return driving.drive(rule, self.backend, None, sleep=self.sleep)

    def keepalive_for(self, seconds):
        self.stop_after = self.clock.time() + seconds
        self.run(self.rules.keepalive(self.stopped))

    def value(self):
        return self.client.dump('/group').get(KEY)


# -- arguments ----------------------------------------------------------------

@pytest.mark.parametrize('kwargs, argument', [
    ({'group_path': 'group'}, 'group_path'),
    ({'group_path': '/'}, 'group_path'),
    ({'group_path': '/a?b'}, 'group_path'),
    ({'member_id': ''}, 'member_id'),
    ({'member_id': 'a/b'}, 'member_id'),
    ({'member_id': 7}, 'member_id'),
    ({'value': None}, 'value'),
    ({'value': b'bytes'}, 'value'),
    ({'ttl': 0}, 'ttl'),
    ({'ttl': -1}, 'ttl'),
    ({'ttl': float('inf')}, 'ttl'),
    ({'ttl': '3'}, 'ttl'),
    ({'handler': 'gevent'}, 'handler'),
    ({'max_silence': 0}, 'max_silence'),
    ({'max_silence': '5'}, 'max_silence'),
])
def test_bad_arguments_are_refused_before_anything_is_written(kwargs,
                                                              argument):
    client = FakeEtcdClient()
    args = dict(group_path='/group', member_id='m1', value='v', ttl=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=argument):
        EtcdMembership(client, **args)
    assert client.index == 0 and client.dump() == {}


def test_update_refuses_a_value_that_is_not_a_string():
    client = FakeEtcdClient()
    with EtcdMembership(client, '/group', 'm1', 'v', 3) as member:
        with pytest.raises(ValueError, match='value'):
            member.update(5)
        assert client.dump('/group') == {KEY: 'v'}


def test_a_client_that_is_not_one_is_refused():
    with pytest.raises(TypeError, match='etcd_client'):
        EtcdMembership(object(), '/group', 'm1', 'v', 3)


# -- the rules, on a fake clock -----------------------------------------------

def test_keepalive_keeps_the_key_for_many_ttls_and_refreshes_every_third():
    d = ClockDriver(ttl=3)
    d.keepalive_for(30)
    assert d.value() == 'v1'
    stats = d.rules.report()
    assert stats['registrations'] == 1
    assert stats['keys_lost'] == 0 and stats['failed_renewals'] == 0
    assert stats['renewals'] >= 9
    assert set(d.sleeps) == {1.0}
    assert d.rules.is_registered()


def test_a_deleted_key_is_created_again_at_the_next_round():
    d = ClockDriver(ttl=3)
    assert d.run(d.rules.sync())

    def delete_once(seconds):
        if d.rules.stats['keys_lost'] == 0 and d.value() is not None:
            d.client.delete(KEY)
    d.before_sleep = delete_once
    d.keepalive_for(3)
    assert d.value() == 'v1'
    assert d.rules.stats['keys_lost'] == 1
    assert d.rules.stats['registrations'] == 2


def test_a_key_expired_while_the_process_slept_is_created_again():
    d = ClockDriver(ttl=3)
    assert d.run(d.rules.sync())
    d.clock.advance(10)              # paused far past the TTL
    assert d.value() is None and not d.rules.is_registered()
    assert d.run(d.rules.sync())
    assert d.value() == 'v1' and d.rules.is_registered()
    assert d.rules.stats['keys_lost'] == 1


def test_with_max_silence_a_silent_member_lets_its_key_expire():
    d = ClockDriver(ttl=3)
    d.rules = rules.Membership(KEY, 'v1', 3, clock=d.clock.time,
                               max_silence=2)
    assert d.run(d.rules.sync())
    d.keepalive_for(20)
    # Renewed while within max_silence (rounds at 0, 1 and 2 s), then
    # left to expire; not created again.
    assert d.value() is None and not d.rules.is_registered()
    assert d.rules.report()['silent']
    assert d.rules.stats['renewals'] == 3
    assert d.rules.stats['registrations'] == 1
    # Life shown: the next round registers again.
    d.rules.show_life()
    assert not d.rules.silent()
    d.keepalive_for(1)
    assert d.value() == 'v1' and d.rules.is_registered()
    assert d.rules.stats['registrations'] == 2


def test_with_max_silence_a_member_showing_life_keeps_its_key():
    d = ClockDriver(ttl=3)
    d.rules = rules.Membership(KEY, 'v1', 3, clock=d.clock.time,
                               max_silence=2)
    assert d.run(d.rules.sync())
    d.before_sleep = lambda seconds: d.rules.show_life()
    d.keepalive_for(30)
    assert d.value() == 'v1' and d.rules.is_registered()
    assert d.rules.stats['registrations'] == 1
    assert d.rules.stats['keys_lost'] == 0


def test_show_life_registers_a_lapsed_member_again_at_once():
    client = FakeEtcdClient()
    with EtcdMembership(client, '/group', 'm1', 'v', 1,
                        max_silence=0.5) as member:
        assert member.show_life()
        wait_until(lambda: client.dump('/group') == {}, timeout=10,
                   interval=0.05)
        assert not member.is_registered
        assert member.show_life()
        assert client.dump('/group') == {KEY: 'v'}
        assert member.is_registered


def test_is_registered_ends_before_the_key_can_expire():
    d = ClockDriver(ttl=4)
    assert d.run(d.rules.sync())
    d.clock.advance(4 - d.rules.margin - 0.01)
    assert d.rules.is_registered()
    d.clock.advance(0.02)
    assert not d.rules.is_registered()
    assert d.value() == 'v1'         # etcd still holds it


def test_a_key_held_by_another_value_is_taken_once_it_goes():
    d = ClockDriver(ttl=3)
    d.client.write(KEY, 'someone-else', ttl=5)
    assert d.run(d.rules.sync()) is False
    assert d.value() == 'someone-else'
    assert d.rules.stats['conflicts'] == 1
    d.keepalive_for(7)               # the other key expires after 5 s
    assert d.value() == 'v1'
    assert d.rules.stats['registrations'] == 1


def test_our_own_key_from_before_is_taken_up_without_a_new_create():
    d = ClockDriver(ttl=3)
    d.client.write(KEY, 'v1', ttl=3)  # a create whose answer was lost
    created = d.client.read(KEY).createdIndex
    assert d.run(d.rules.sync())
    assert d.client.read(KEY).createdIndex == created    # refreshed
    assert d.rules.stats['registrations'] == 0
    assert d.rules.is_registered()


def test_errors_back_off_within_bounds_and_the_key_comes_back():
    d = ClockDriver(ttl=3)
    assert d.run(d.rules.sync())
    d.client.available = False

    def back_after_ttl(seconds):
        if d.clock.time() > 1000 + 3 * 3:
            d.client.available = True
    d.before_sleep = back_after_ttl
    d.keepalive_for(20)
    assert d.value() == 'v1'
    retries = [s for s in d.sleeps if s != 1.0]
    assert retries, d.sleeps
    # First ceiling min(ttl / 6, 1) = 0.5, growing to min(ttl / 3, 5) = 1.
    assert all(0.25 <= s <= 1.0 for s in retries), retries
    assert d.rules.stats['keys_lost'] == 1   # expired during the outage
    assert not d.rules.outage.in_outage


def test_update_without_replace_deletes_then_creates():
    d = ClockDriver(ttl=3)
    assert d.run(d.rules.sync())
    d.rules.set_value('v2')
    rule = d.rules.sync()
    asked = []
    answer = None
    while True:
        done, ask = requests.advance(rule, answer)
        if done:
            break
        asked.append(ask.name)
        answer = getattr(d.backend, ask.name)(*ask.args)
    assert asked == ['delete_if', 'create']
    assert d.value() == 'v2' and d.rules.is_registered()


def test_update_with_replace_asks_for_one_replace():
    rule_state = rules.Membership(KEY, 'v1', 3, can_replace=True,
                                  clock=lambda: 0.0)
    rule_state.written[0] = 'v1'
    rule_state.set_value('v2')
    rule = rule_state.sync()
    done, ask = requests.advance(rule, None)
    assert ask == requests.backend('replace', KEY, 'v1', 'v2', 3)
    done, ask = requests.advance(rule, True)
    assert ask.name == 'refresh' and ask.args[:2] == (KEY, 'v2')
    done, result = requests.advance(rule, True)
    assert done and result is True
    assert rule_state.written == ['v2'] and rule_state.is_registered()


def test_leave_deletes_only_our_value():
    d = ClockDriver(ttl=3)
    assert d.run(d.rules.sync())
    d.client.write(KEY, 'someone-else')
    assert d.run(d.rules.leave()) is False
    assert d.value() == 'someone-else'
    d.client.write(KEY, 'v1')
    assert d.run(d.rules.leave()) is True
    assert d.value() is None


# -- the threaded host --------------------------------------------------------

def test_registered_by_the_constructor_and_removed_by_close():
    client = FakeEtcdClient()
    member = EtcdMembership(client, '/group/', 'm1', 'v', 1)
    assert member.key == KEY and member.group_path == '/group'
    assert member.is_registered
    assert client.dump('/group') == {KEY: 'v'}
    assert member.close(timeout=10) is True
    assert client.dump('/group') == {}
    assert member.close() is False               # idempotent
    with pytest.raises(RuntimeError, match='close'):
        member.update('w')
    assert client.dump('/group') == {}
    assert not member._reg.task.is_alive()


def test_the_keepalive_outlives_many_ttls_on_real_time():
    client = FakeEtcdClient()
    with EtcdMembership(client, '/group', 'm1', 'v', 0.6) as member:
        time.sleep(2.0)
        assert client.dump('/group') == {KEY: 'v'}
        assert member.stats()['renewals'] >= 3
        assert member.stats()['registrations'] == 1
    assert client.dump('/group') == {}


def test_constructor_with_etcd_down_registers_when_it_is_back():
    client = FakeEtcdClient()
    client.available = False
    with EtcdMembership(client, '/group', 'm1', 'v', 0.6) as member:
        assert not member.is_registered
        client.available = True
        wait_until(lambda: member.is_registered, timeout=10)
        assert client.dump('/group') == {KEY: 'v'}


def test_update_writes_now_and_raises_when_etcd_is_down():
    client = FakeEtcdClient()
    with EtcdMembership(client, '/group', 'm1', 'v1', 0.6) as member:
        assert member.update('v2') is True
        assert client.dump('/group') == {KEY: 'v2'}
        with client.outage():
            with pytest.raises(exceptions.EtcdUnavailable):
                member.update('v3')
        assert member.value == 'v3'
        # The keepalive writes it once etcd is back.
        wait_until(lambda: client.dump('/group') == {KEY: 'v3'},
                   timeout=10)


def test_a_collected_membership_removes_its_key():
    client = FakeEtcdClient()
    member = EtcdMembership(client, '/group', 'm1', 'v', 1)
    task = member._reg.task
    del member
    gc.collect()
    wait_until(lambda: client.dump('/group') == {}, timeout=10)
    assert task.join(10)


# -- the group watcher --------------------------------------------------------

class Group(EtcdGroupWatcher):
    def __init__(self, *args, **kwargs):
        self.reports = []
        self.fail_joins = 0
        super(Group, self).__init__(*args, **kwargs)

    def joined(self, member, value):
        if self.fail_joins:
            self.fail_joins -= 1
            raise RuntimeError('boom')
        self.reports.append(('joined', member, value))

    def updated(self, member, value):
        self.reports.append(('updated', member, value))

    def left(self, member):
        self.reports.append(('left', member))


def test_group_watcher_reports_joined_updated_left():
    client = FakeEtcdClient()
    client.write('/group/old', 'o')
    client.write('/group/sub/deep', 'not a member')
    with Group(client, 'g', '/group', heartbeat=1) as group:
        assert group.reports == [('joined', 'old', 'o')]
        client.write('/group/new', 'n')
        client.write('/group/new', 'n')          # same value: no report
        client.write('/group/new', 'n2')
        client.delete('/group/old')
        client.write('/group/sub/deep2', 'not a member either')
        wait_until(lambda: len(group.reports) == 4, timeout=10)
        time.sleep(0.2)
        assert group.reports == [('joined', 'old', 'o'),
                                 ('joined', 'new', 'n'),
                                 ('updated', 'new', 'n2'),
                                 ('left', 'old')]
        assert group.members == {'new': 'n2'}


def test_group_watcher_sees_a_member_come_and_go_and_no_keepalive():
    client = FakeEtcdClient()
    with Group(client, 'g', '/group', heartbeat=1) as group:
        member = EtcdMembership(client, '/group', 'm1', 'v', 0.6)
        wait_until(lambda: group.members == {'m1': 'v'}, timeout=10)
        time.sleep(1.0)                          # several refreshes
        assert group.reports == [('joined', 'm1', 'v')]
        member.close()
        wait_until(lambda: group.members == {}, timeout=10)
        assert group.reports == [('joined', 'm1', 'v'), ('left', 'm1')]


def test_an_expired_member_leaves_on_the_fake_clock():
    clock = FakeClock()
    client = FakeEtcdClient(clock=clock)
    client.write('/group/dead', 'd', ttl=3)
    with Group(client, 'g', '/group', heartbeat=1) as group:
        assert group.members == {'dead': 'd'}
        clock.advance(2.9)
        time.sleep(0.1)
        assert group.members == {'dead': 'd'}
        clock.advance(0.2)
        wait_until(lambda: group.members == {}, timeout=10)
        assert group.reports[-1] == ('left', 'dead')


def test_a_failing_callback_is_retried_and_members_follows_success():
    client = FakeEtcdClient()
    with Group(client, 'g', '/group', heartbeat=1) as group:
        group.CALLBACK_RETRY_MIN = 0.01
        group.fail_joins = 2
        client.write('/group/m', 'v')
        wait_until(lambda: group.members == {'m': 'v'}, timeout=10)
        assert group.reports == [('joined', 'm', 'v')]


def test_changes_missed_with_history_gone_are_reported_once():
    client = FakeEtcdClient(history_size=5)
    client.write('/group/a', '1')
    client.write('/group/b', '1')
    group = Group(client, 'g', '/group', heartbeat=1)
    for i in range(20):
        client.write('/filler', str(i))
    client.delete('/group/a')
    client.write('/group/b', '2')
    client.write('/group/c', '1')
    with group:
        wait_until(lambda: group.members == {'b': '2', 'c': '1'},
                   timeout=10)
        time.sleep(0.2)
    assert group.reports == [('joined', 'a', '1'), ('joined', 'b', '1'),
                             ('left', 'a'), ('updated', 'b', '2'),
                             ('joined', 'c', '1')]
    assert group.stats()['resyncs'] >= 1


def test_group_members_reads_direct_children_only():
    client = FakeEtcdClient()
    client.write('/group/a', '1')
    client.write('/group/sub/x', '2')
    assert group_members(client, '/group') == {'a': '1'}
    assert group_members(client, '/nothing') == {}
    with pytest.raises(ValueError, match='group_path'):
        group_members(client, 'group')


# -- eventlet -----------------------------------------------------------------

def test_membership_and_group_watcher_on_green_threads():
    code = '''
        import eventlet
        eventlet.monkey_patch()
        import time
        from etcdwatch.membership import EtcdGroupWatcher, EtcdMembership
        from etcdwatch.testing import FakeEtcdClient

        client = FakeEtcdClient()
        seen = []

        class G(EtcdGroupWatcher):
            def joined(self, m, v):
                seen.append(('joined', m, v))

            def left(self, m):
                seen.append(('left', m))

        def wait(predicate):
            deadline = time.monotonic() + 20
            while not predicate():
                assert time.monotonic() < deadline, seen
                eventlet.sleep(0.01)

        with G(client, 'g', '/group', heartbeat=0.5) as group:
            member = EtcdMembership(client, '/group', 'm', 'v', 0.6)
            assert member._handler.name == 'eventlet'
            wait(lambda: group.members == {'m': 'v'})
            eventlet.sleep(1.5)             # kept alive on a green thread
            assert client.dump('/group') == {'/group/m': 'v'}
            client.delete('/group/m')        # re-registered
            wait(lambda: len(seen) == 3)
            member.close()
            wait(lambda: group.members == {})
        print(seen, member.stats()['keys_lost'])
    '''
    out = subprocess.run([sys.executable, '-c', textwrap.dedent(code)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        "[('joined', 'm', 'v'), ('left', 'm'), ('joined', 'm', 'v'), "
        "('left', 'm')] 1")


def test_close_waits_for_a_round_in_flight():
    """close() never deletes between a round's create and its answer."""
    client = FakeEtcdClient()
    member = EtcdMembership(client, '/group', 'm1', 'v', 0.6)
    entered = threading.Event()
    release = threading.Event()
    real_refresh = member._reg.backend.refresh

    def slow_refresh(*args):
        entered.set()
        release.wait(10)
        return real_refresh(*args)
    member._reg.backend.refresh = slow_refresh
    assert entered.wait(10)
    closer = threading.Thread(target=member.close)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive()          # waiting for the round
    release.set()
    closer.join(10)
    assert not closer.is_alive()
    assert client.dump('/group') == {}
