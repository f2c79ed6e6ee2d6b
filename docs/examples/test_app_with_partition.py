"""An application's tests of a network partition (docs/testing.rst).

``NetnsCluster`` puts each etcd member in a network namespace of its own;
it needs root (CI runs as root) and raises ``NetnsUnavailable`` without it.
"""

import time

import etcd
import pytest

from etcdwatch.testing import NetnsCluster


@pytest.fixture
def cluster():
    with NetnsCluster(size=3) as cluster:   # cleaned up, whatever happens
        yield cluster


def wait_for(predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, 'timed out'
        time.sleep(0.01)


def local_read(member, key):
    """What ``member`` alone holds for ``key`` (no quorum asked)."""
    client = member.client(read_timeout=2, allow_reconnect=False)
    try:
        return client.read(key).value
    except etcd.EtcdKeyNotFound:
        return None


def test_the_majority_carries_on_without_the_cut_off_leader(cluster):
    cut = cluster.wait_for_leader()
    cluster.partition(cut)                  # both ways; we still reach it
    wait_for(lambda: cluster.member_has_leader(cut) is False)
    cluster.wait_for_leader(among=[i for i in range(3) if i != cut])

    cluster.client().write('/ports/p1', 'up')   # the cut-off one comes last
    assert local_read(cluster.member(cut), '/ports/p1') is None   # stale

    cluster.heal(cut)
    wait_for(lambda: local_read(cluster.member(cut), '/ports/p1') == 'up')


def test_a_rewound_cluster_forgets_later_writes(cluster):
    cluster.client().write('/ports/p1', 'up')
    copies = cluster.backup_data()          # v2 and v3 data, members stopped
    cluster.client().write('/ports/p2', 'up')
    cluster.restore_data(copies)
    keys = [n.key for n in cluster.client().read('/ports').leaves]
    assert keys == ['/ports/p1']
