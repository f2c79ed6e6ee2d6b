"""etcdwatch's tooz driver on a real etcd (v2 off): its promises.

One leader at a time and one exclusive lock holder at a time, checked
from logged intervals (each worker logs the time just after it learnt it
holds and just before it gives up); shared locks: readers hold together
and a writer waits for every earlier holder; run_watchers() reports a
join made just before it, on its first call.
"""

import threading
import time
import uuid

import pytest
from tooz import coordination

from etcdwatch.testing.server import EtcdServer
from tests.helpers import wait_until

pytestmark = pytest.mark.functional


def _id():
    return uuid.uuid4().hex.encode('ascii')


@pytest.fixture(scope='module')
def url():
    with EtcdServer(name='tooz-driver', enable_v2=False) as etcd:
        yield 'etcdwatch+http://%s:%d/' % (etcd.host, etcd.port)


@pytest.fixture
def coords(url):
    made = []

    def make(**options):
        full = url + ('?' + '&'.join('%s=%s' % kv for kv in options.items())
                      if options else '')
        coord = coordination.get_coordinator(full, _id())
        coord.start()
        made.append(coord)
        return coord
    yield make
    for coord in made:
        try:
            coord.stop()
        except Exception:
            pass


def assert_no_overlap(intervals):
    intervals = sorted(intervals)
    for (start1, end1, who1), (start2, end2, who2) in zip(intervals,
                                                          intervals[1:]):
        assert end1 <= start2, ('%s held [%.3f, %.3f] while %s held from '
                                '%.3f' % (who1, start1, end1, who2, start2))


def test_one_exclusive_holder_at_a_time(coords):
    name = _id()
    intervals = []
    log = threading.Lock()
    errors = []

    def worker(number, coord):
        lock = coord.get_lock(name)
        try:
            for _ in range(5):
                assert lock.acquire(blocking=60)
                start = time.monotonic()
                time.sleep(0.02)
                assert lock.is_still_owner()
                end = time.monotonic()
                with log:
                    intervals.append((start, end, number))
                assert lock.release()
        except Exception as e:     # reported below
            errors.append(e)
    threads = [threading.Thread(target=worker, args=(n, coords()))
               for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert len(intervals) == 20
    assert_no_overlap(intervals)


def test_one_leader_at_a_time(coords):
    group = _id()
    intervals = []
    log = threading.Lock()
    errors = []
    stop = threading.Event()

    def worker(number, coord):
        terms = []
        coord.watch_elected_as_leader(group, lambda event: terms.append(
            time.monotonic()))
        try:
            while not stop.is_set() and len(terms) < 3:
                before = len(terms)
                coord.run_watchers()
                if len(terms) > before:
                    start = terms[-1]
                    time.sleep(0.02)
                    coord.heartbeat()
                    assert coord.get_leader(group).get() == coord._member_id
                    end = time.monotonic()
                    with log:
                        intervals.append((start, end, number))
                    assert coord.stand_down_group_leader(group)
        except Exception as e:     # reported below
            errors.append(e)
    first = coords()
    first.create_group(group).get()
    threads = [threading.Thread(target=worker,
                                args=(n, first if n == 0 else coords()))
               for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    stop.set()
    assert not errors, errors
    assert len(intervals) == 9
    assert_no_overlap(intervals)


def test_shared_lock_readers_together_writer_waits(coords):
    name = _id()
    reader1 = coords().get_lock(name)
    reader2 = coords().get_lock(name)
    writer = coords().get_lock(name)
    late_reader = coords().get_lock(name)
    assert reader1.acquire(shared=True, blocking=False)
    assert reader2.acquire(shared=True, blocking=False)
    assert not writer.acquire(blocking=False)
    got = {}

    def take(lock, label, shared):
        got[label] = (lock.acquire(blocking=30, shared=shared),
                      time.monotonic())
    writing = threading.Thread(target=take, args=(writer, 'writer', False))
    writing.start()
    # The writer queued behind both readers: a reader that comes later
    # waits behind the writer (FIFO), it does not join the readers.
    wait_until(lambda: len(writer._backend.read_queue(
        writer.prefix).entries) == 3, timeout=10)
    assert not late_reader.acquire(shared=True, blocking=False)
    assert reader1.release()
    time.sleep(0.3)
    assert 'writer' not in got, 'the writer held while a reader held'
    released = time.monotonic()
    assert reader2.release()
    writing.join(30)
    assert got['writer'][0] and got['writer'][1] >= released
    reading = threading.Thread(target=take,
                               args=(late_reader, 'late', True))
    reading.start()
    time.sleep(0.3)
    assert 'late' not in got, 'a reader held while the writer held'
    released = time.monotonic()
    assert writer.release()
    reading.join(30)
    assert got['late'][0] and got['late'][1] >= released
    assert late_reader.release()


def test_run_watchers_sees_a_join_made_just_before(coords):
    watcher, joiner = coords(), coords()
    group = _id()
    watcher.create_group(group).get()
    events = []
    watcher.watch_join_group(group, events.append)
    watcher.watch_leave_group(group, events.append)
    for _ in range(5):
        joiner.join_group(group).get()
        watcher.run_watchers()
        assert [type(e) for e in events] == [coordination.MemberJoinedGroup]
        joiner.leave_group(group).get()
        watcher.run_watchers()
        assert [type(e) for e in events] == [
            coordination.MemberJoinedGroup, coordination.MemberLeftGroup]
        del events[:]


def test_run_watchers_does_not_wait_out_a_change_made_after_its_read(coords):
    """A join just after run_watchers() read the group costs no wait.

    The watcher then never shows exactly what was read; it has applied
    everything up to the read's index, which is enough.
    """
    from etcdwatch import tooz_driver
    watcher, joiner = coords(), coords()
    group = _id()
    watcher.create_group(group).get()
    events = []
    watcher.watch_join_group(group, events.append)
    watcher.run_watchers()
    backend = watcher._backend
    read_tree = backend.read_tree

    group_watcher = watcher._watchers[group]

    def read_then_join(path):
        snapshot = read_tree(path)
        joiner.join_group(group).get()
        # The watcher has applied the join before the barrier looks.
        wait_until(lambda: tooz_driver._enc(joiner._member_id)
                   in group_watcher.members, timeout=10)
        return snapshot
    backend.read_tree = read_then_join
    try:
        start = time.monotonic()
        watcher.run_watchers()
        took = time.monotonic() - start
    finally:
        del backend.read_tree
    print('\nrun_watchers() took %.3f s' % took)
    assert took < tooz_driver.BARRIER_TIMEOUT / 5
    wait_until(lambda: watcher.run_watchers() or events, timeout=10)
    assert [e.member_id for e in events] == [joiner._member_id]
