"""Cluster faults under etcdwatch's tooz driver (network namespaces).

Three tooz coordinators run as a service runs one: a heart thread calling
``heartbeat()``, a loop calling ``run_watchers()``, a member of one group,
watching its joins and leaves and campaigning for its leadership.  Each
logs its terms (from its election's on_elected and on_lost) and the join
and leave events tooz gave it.  Then:

* the member the tooz leader talks to is cut off from the other two (a
  follower, or the raft leader), and healed;
* the cluster is restored from a snapshot taken before the last changes
  of membership.

Checked every time: no two terms overlap (from the logged times); a
leader is there again after the fault, and every coordinator's
``get_leader()`` names it; once healed, every coordinator's
``get_members()`` is the set of running coordinators, and the join/leave
events each one received, applied to what it saw when it began to watch,
give that set with no false report (a join of a present member, a leave
of an absent one).  Figures are printed with ``-s``.
"""

import threading
import time
import uuid

import pytest
from tooz import coordination

from etcdwatch.testing.netns import NetnsCluster
from etcdwatch import v3client
from tests.helpers import wait_until

pytestmark = pytest.mark.functional

#: The driver's ``timeout``: the TTL of member keys and leaders' keys.
TIMEOUT = 3
#: Bounds, wide: a loaded 2-core machine runs three etcd members here.
BOUND = 60


def _url(cluster, order):
    # request_timeout under the member keys' 2 s leases: a renewal sent to
    # a member just as the raft leader was cut hangs until it times out,
    # and only a retry once a new leader is elected renews in time (with
    # 5 s, every coordinator's key could lapse: a false leave and join).
    return 'etcdwatch+http://%s/?timeout=%d&request_timeout=1' % (
        ','.join('%s:%d' % cluster.hosts[i] for i in order), TIMEOUT)


class Node(object):
    """One coordinator, run as a service runs one; logs what it sees."""

    def __init__(self, label, url, group):
        self.label = label
        self.member_id = label.encode('ascii')
        self.group = group
        self.coord = coordination.get_coordinator(url, self.member_id)
        self.coord.start(start_heart=True)
        self._log = threading.Lock()
        #: [won, lost or None] per term, monotonic times.
        self.terms = []
        #: ('joined' or 'left', member id, monotonic time), from tooz.
        self.events = []
        #: When tooz's LeaderElected callback ran.
        self.announced = []
        #: get_members() when the watch began (nothing changed then).
        self.base = None
        self.rounds = 0
        self.errors = []
        self._stopping = threading.Event()
        self._thread = None

    # -- tooz callbacks ----------------------------------------------------

    def _won(self, term):
        with self._log:
            self.terms.append([time.monotonic(), None])

    def _lost(self, term):
        with self._log:
            self.terms[-1][1] = time.monotonic()

    def _joined(self, event):
        self.events.append(('joined', event.member_id, time.monotonic()))

    def _left(self, event):
        self.events.append(('left', event.member_id, time.monotonic()))

    # -- life --------------------------------------------------------------

    def join(self):
        self.coord.join_group(self.group).get()

    def watch_members(self):
        """Watch joins and leaves; call while no member changes."""
        self.coord.watch_join_group(self.group, self._joined)
        self.coord.watch_leave_group(self.group, self._left)
        self.coord.run_watchers()
        del self.events[:]
        self.base = set(self.coord.get_members(self.group).get())

    def campaign(self):
        """Campaign for the group's leadership, in a run_watchers loop."""
        # The driver's election for the group: its callbacks log terms.
        elector = self.coord._elector(self.group)
        elector.on_elected = self._won
        elector.on_lost = self._lost
        self.coord.watch_elected_as_leader(
            self.group, lambda event: self.announced.append(time.monotonic()))
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        while not self._stopping.is_set():
            try:
                self.coord.run_watchers()
            except Exception as e:      # counted; the loop goes on
                self.errors.append(e)
            self.rounds += 1
            # A service's pace between two rounds, not a synchronization.
            self._stopping.wait(0.05)

    def stop(self):
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(30)
        try:
            self.coord.stop()
        except Exception:
            pass

    # -- what it knows -----------------------------------------------------

    @property
    def leading(self):
        with self._log:
            return bool(self.terms) and self.terms[-1][1] is None

    def members(self):
        return set(self.coord.get_members(self.group).get())

    def folded(self):
        """The base with every join/leave applied; a false report fails."""
        members = set(self.base)
        for kind, member, _t in list(self.events):
            if kind == 'joined':
                assert member not in members, (self.label, self.events)
                members.add(member)
            else:
                assert member in members, (self.label, self.events)
                members.discard(member)
        return members

    def leader(self):
        return self.coord.get_leader(self.group).get()


def assert_terms_never_overlap(nodes):
    end_of_test = time.monotonic()
    spans = sorted((won, end_of_test if lost is None else lost, n.label)
                   for n in nodes for won, lost in list(n.terms))
    for (s1, e1, who1), (s2, _e2, who2) in zip(spans, spans[1:]):
        assert e1 <= s2, ('%s led [%.3f, %.3f] while %s began at %.3f'
                          % (who1, s1, e1, who2, s2))


def one_leader(nodes):
    """The node that leads, once exactly one does and all agree on it."""
    leading = [n for n in nodes if n.leading]
    if len(leading) != 1:
        return None
    try:
        named = {n.leader() for n in nodes}
    except Exception:
        return None
    return leading[0] if named == {leading[0].member_id} else None


def members_right(nodes, expected):
    """Every node's get_members() and folded events are ``expected``."""
    for n in nodes:
        try:
            if n.members() != expected:
                return False
        except Exception:
            return False
        if n.folded() != expected:
            return False
    return True


@pytest.fixture
def cluster():
    with NetnsCluster(size=3, enable_v2=False) as netns:
        netns.wait_for_leader()
        yield netns


@pytest.fixture
def nodes():
    made = []
    yield made
    for n in made:
        n.stop()


def _revision(cluster):
    client = v3client.client(['%s:%d' % host for host in cluster.hosts])
    return int(client.status()['header']['revision'])


def _group(cluster):
    group = ('g-' + uuid.uuid4().hex[:8]).encode('ascii')
    admin = coordination.get_coordinator(_url(cluster, [0, 1, 2]),
                                         b'admin')
    admin.start()
    try:
        admin.create_group(group).get()
    finally:
        admin.stop()
    return group


@pytest.mark.parametrize('which', ['follower', 'raft-leader'])
def test_partition_of_the_tooz_leaders_member(cluster, nodes, which):
    """Each coordinator knows only its own member; the leader's is cut."""
    raft = cluster.wait_for_leader()
    cut = raft if which == 'raft-leader' else (raft + 1) % 3
    rest = [i for i in range(3) if i != cut]
    group = _group(cluster)
    for i in [cut] + rest:
        nodes.append(Node('c%d' % i, _url(cluster, [i]), group))
    first, others = nodes[0], nodes[1:]
    for n in nodes:
        n.join()
    everyone = {n.member_id for n in nodes}
    for n in nodes:
        n.watch_members()
        assert n.base == everyone
    first.campaign()
    wait_until(lambda: first.leading and first.announced, timeout=BOUND)
    for n in others:
        n.campaign()
    wait_until(lambda: all(n.rounds >= 3 for n in others), timeout=BOUND)
    assert one_leader(nodes) is first

    cluster.partition(cut)
    cut_at = time.monotonic()
    # The old leader knows it lost before anyone else leads (checked from
    # the terms below), and another leads.
    wait_until(lambda: not first.leading, timeout=BOUND)
    wait_until(lambda: one_leader(others), timeout=BOUND, interval=0.02)
    new = one_leader(others)
    new_won = new.terms[-1][0]
    wait_until(lambda: new.announced and new.announced[-1] >= new_won,
               timeout=BOUND)
    # The majority's view: the cut-off coordinator's key expired.
    wait_until(lambda: members_right(others, everyone - {first.member_id}),
               timeout=BOUND)
    gone_at = time.monotonic()

    cluster.heal(cut)
    healed = time.monotonic()
    wait_until(lambda: members_right(nodes, everyone), timeout=BOUND,
               interval=0.05)
    back_at = time.monotonic()
    wait_until(lambda: one_leader(nodes), timeout=BOUND)
    assert_terms_never_overlap(nodes)
    for n in others:
        assert [(kind, member) for kind, member, _t in n.events] == [
            ('left', first.member_id), ('joined', first.member_id)], n.events
    lost = first.terms[0][1]
    print('\ncut %s (member %d): the old leader lost its term %.2f s after '
          'the partition, %.2f s before %s won (%.2f s after the '
          'partition; tooz announced it %.2f s later); its key gone from '
          'the majority\'s view %.1f s after the partition; all three '
          'members back everywhere %.1f s after the heal; loop errors %s'
          % (which, cut, lost - cut_at, new_won - lost, new.label,
             new_won - cut_at, new.announced[-1] - new_won,
             gone_at - cut_at, back_at - healed,
             [len(n.errors) for n in nodes]))
    assert lost < new_won


def test_restore_from_snapshot(cluster, nodes):
    """etcd goes back to a snapshot taken before the last join and leave.

    The snapshot holds a (by then stopped) coordinator's key and lacks a
    later one's: the stopped one's restored key expires, the later one
    joins again on its heartbeat; one leader.
    """
    group = _group(cluster)
    for i in range(3):
        nodes.append(Node('c%d' % i, _url(cluster, [i, (i + 1) % 3,
                                                    (i + 2) % 3]), group))
    for n in nodes:
        n.join()
    for n in nodes:
        n.watch_members()
    nodes[0].campaign()
    wait_until(lambda: nodes[0].leading, timeout=BOUND)
    for n in nodes[1:]:
        n.campaign()
    wait_until(lambda: all(n.rounds >= 3 for n in nodes), timeout=BOUND)
    saved = cluster.snapshot()

    # After the snapshot: c2 stops (leaves), c3 joins.
    stopped = nodes[2]
    stopped.stop()
    late = Node('c3', _url(cluster, [2, 0, 1]), group)
    nodes.append(late)
    live = [nodes[0], nodes[1], late]
    expected = {n.member_id for n in live}
    late.join()
    wait_until(lambda: members_right(live[:2], expected), timeout=BOUND)
    late.watch_members()
    late.campaign()
    wait_until(lambda: late.rounds >= 3, timeout=BOUND)
    assert one_leader(live) is nodes[0]
    late_member = late.coord._memberships[group]
    assert late_member.stats()['registrations'] == 1
    revision = _revision(cluster)

    cluster.restore(saved)
    back = time.monotonic()
    # etcd went back in time.
    assert _revision(cluster) < revision
    # Right after the restore etcd holds c0, c1, c2: c2's key lives until
    # its restored lease runs out; c3 is back on its next heartbeat.
    wait_until(lambda: members_right(live, expected), timeout=BOUND,
               interval=0.05)
    right_at = time.monotonic()
    wait_until(lambda: one_leader(live), timeout=BOUND)
    leader = one_leader(live)
    led_at = time.monotonic()
    assert_terms_never_overlap(nodes)
    # c3 joined again: its key is not in the snapshot.
    assert late_member.stats()['registrations'] >= 2
    for n in live:
        kinds = [(kind, member) for kind, member, _t in n.events]
        print('%s saw %s' % (n.label, kinds))
    print('\nrestored: the right members everywhere %.1f s after etcd was '
          'back, one leader (%s) agreed on by all %.1f s after; terms %s; '
          'loop errors %s'
          % (right_at - back, leader.label, led_at - back,
             {n.label: len(n.terms) for n in nodes},
             [len(n.errors) for n in live]))
