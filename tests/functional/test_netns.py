"""Real etcd clusters in network namespaces (etcdwatch.testing.netns).

These need root, as CI has: without it they fail with NetnsUnavailable
rather than skip.  Every test checks that it leaves no namespace, bridge
or veth behind.
"""

import base64
import gc
import http.client
import json
import os
import subprocess
import time

import etcd
import pytest

from etcdwatch.testing import netns
from etcdwatch.testing.netns import NetemUnavailable
from etcdwatch.testing.netns import netns_available
from etcdwatch.testing.netns import NetnsCluster
from etcdwatch.testing.netns import NetnsUnavailable
from etcdwatch.testing.netns import reap_stale
from etcdwatch.testing.server import _http_get
from etcdwatch.testing.server import EtcdServer
from etcdwatch.testing.server import EtcdStartupError
from tests.helpers import wait_until

# Default etcd timing (1 s election timeout); a cut-off member notices
# within two of them, a loaded 2-core machine gets some slack.
LEADER_LOSS_BOUND = 10
SHORT = 1.0     # client timeout, for requests that are meant to fail


def _b64(text):
    return base64.b64encode(text.encode()).decode()


def v3_put(member, key, value, timeout=SHORT):
    return _http_get(member.host, member.port, '/v3/kv/put', timeout=timeout,
                     post={'key': _b64(key), 'value': _b64(value)})


def v3_get(member, key, serializable=False, timeout=SHORT):
    """The value of ``key`` read through ``member``, or None."""
    status, data = _http_get(member.host, member.port, '/v3/kv/range',
                             timeout=timeout,
                             post={'key': _b64(key),
                                   'serializable': serializable})
    assert status == 200, data
    kvs = data.get('kvs') or []
    return base64.b64decode(kvs[0]['value']).decode() if kvs else None


def v2_get(member, key, quorum=False, timeout=SHORT):
    client = member.client(read_timeout=timeout, allow_reconnect=False)
    try:
        return client.read(key, quorum=quorum).value
    except etcd.EtcdKeyNotFound:
        return None


def raw_request(member, method, path, body=None, timeout=SHORT):
    """(status, body) of one HTTP request: unlike python-etcd, no retries."""
    conn = http.client.HTTPConnection(member.host, member.port,
                                      timeout=timeout)
    try:
        if isinstance(body, dict):
            conn.request(method, path, body=json.dumps(body),
                         headers={'Content-Type': 'application/json'})
        else:
            conn.request(method, path, body=body, headers={
                'Content-Type': 'application/x-www-form-urlencoded'})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def refused(api, member, method):
    """Does a quorum 'write' or 'read' through ``member`` fail or time out?"""
    if api == 'v2':
        request = {'write': ('PUT', '/v2/keys/doomed', 'value=x'),
                   'read': ('GET', '/v2/keys/before?quorum=true', None)}
    else:
        request = {'write': ('POST', '/v3/kv/put', {'key': _b64('/doomed'),
                                                    'value': _b64('x')}),
                   'read': ('POST', '/v3/kv/range', {'key': _b64('/before')})}
    try:
        status, _ = raw_request(member, *request[method])
    except (OSError, http.client.HTTPException):
        return True
    return status >= 300


def put(api, member, key, value, timeout=SHORT):
    if api == 'v2':
        member.client(read_timeout=timeout,
                      allow_reconnect=False).write(key, value)
    else:
        status, data = v3_put(member, key, value, timeout)
        assert status == 200, data


def get(api, member, key, serializable=True):
    if api == 'v2':
        return v2_get(member, key, quorum=not serializable)
    return v3_get(member, key, serializable=serializable)


def leftovers(names):
    """Which of ``names`` (namespaces, links) still exist."""
    ns = subprocess.run(['ip', 'netns', 'list'], capture_output=True,
                        text=True, check=True).stdout
    links = subprocess.run(['ip', '-o', 'link', 'show'], capture_output=True,
                           text=True, check=True).stdout
    return [n for n in names if n in ns or (' %s:' % n) in links or
            (' %s@' % n) in links]


def cluster_names(cluster):
    return list(cluster.namespaces) + [cluster.bridge] + list(
        cluster._net.veths)


@pytest.fixture(params=['v2', 'v3'])
def api(request):
    return request.param


@pytest.fixture
def cluster(api):
    with NetnsCluster(size=3, enable_v2=(api == 'v2')) as cluster:
        yield cluster
    assert leftovers(cluster_names(cluster)) == []


def test_available_here():
    # CI runs as root: a missing capability must fail, not skip.
    assert netns_available() == (True, '')


def test_without_root_it_says_so(monkeypatch):
    monkeypatch.setattr(os, 'geteuid', lambda: 1000)
    ok, reason = netns_available()
    assert not ok and 'root' in reason
    with pytest.raises(NetnsUnavailable, match='root'):
        NetnsCluster()


def test_members_live_in_their_namespaces(cluster, api):
    assert cluster.hosts == tuple((m.host, m.port) for m in cluster.members)
    assert cluster.client_urls == ['http://%s:2379' % m.host
                                   for m in cluster.members]
    for i, m in enumerate(cluster.members):
        assert m.host in (str(a) for a in cluster.network.hosts())
        where = subprocess.run(['ip', 'netns', 'identify', str(m.pid)],
                               capture_output=True, text=True).stdout
        assert where.strip() == cluster.namespaces[i]
        assert cluster.member_has_leader(i) is True
    assert cluster.wait_for_leader() == cluster.leader_index()
    put(api, cluster.members[0], '/hello', 'world')
    for m in cluster.members:       # each one straight from this process
        wait_until(lambda: get(api, m, '/hello') == 'world')
    if api == 'v2':
        assert cluster.client().read('/hello').value == 'world'


@pytest.mark.parametrize('victim', ['leader', 'follower'])
def test_partition_and_heal(cluster, api, victim):
    leader = cluster.wait_for_leader()
    cut = leader if victim == 'leader' else (leader + 1) % 3
    rest = [i for i in range(3) if i != cut]
    member = cluster.member(cut)
    put(api, cluster.member(leader), '/before', 'old')
    wait_until(lambda: get(api, member, '/before') == 'old')

    started = time.monotonic()
    cluster.partition(cut)
    assert cluster.partitioned == {cut}
    wait_until(lambda: cluster.member_has_leader(cut) is False,
               timeout=LEADER_LOSS_BOUND)
    lost_after = time.monotonic() - started
    new_leader = cluster.wait_for_leader(timeout=LEADER_LOSS_BOUND,
                                         among=rest)
    assert new_leader in rest
    assert cluster.leader_index() == new_leader
    put(api, cluster.member(new_leader), '/after', 'new', timeout=10)

    # Through the cut-off member: writes and quorum reads fail, a local
    # (serializable) read answers with what it had.  (A write that timed
    # out is not a write that failed: etcd holds a v2 proposal made
    # without a leader for its request timeout, about 7 s, and commits it
    # if a leader comes back by then.)
    assert refused(api, member, 'write')
    assert refused(api, member, 'read')
    assert get(api, member, '/before') == 'old'
    assert get(api, member, '/after') is None
    assert cluster.member_has_leader(cut) is False

    cluster.heal(cut)
    assert cluster.partitioned == frozenset()
    wait_until(lambda: cluster.member_has_leader(cut), timeout=10)
    wait_until(lambda: get(api, member, '/after') == 'new', timeout=10)
    assert get(api, member, '/after', serializable=False) == 'new'
    print('member %d (%s) lost its leader %.2fs after the cut'
          % (cut, victim, lost_after))


def test_netem_delays_what_a_member_sends_or_says_why_not():
    """Delay where the kernel has netem; else a clear NetemUnavailable.

    Not a skip: this machine's kernel (and CI's) lacks netem
    (CONFIG_NET_SCH_NETEM), so what runs here is the refusal, which must
    name what is missing and leave the member usable.
    """
    with NetnsCluster(size=1) as cluster:
        m = cluster.member(0)

        def round_trip():
            started = time.monotonic()
            status, _ = _http_get(m.host, m.port, '/version', timeout=5)
            assert status == 200
            return time.monotonic() - started

        assert min(round_trip() for _ in range(3)) < 0.1
        try:
            cluster.netem(0, delay_ms=200)
        except NetemUnavailable as exc:
            assert 'CONFIG_NET_SCH_NETEM' in str(exc)
            cluster.netem(0)            # removing none is fine
            assert min(round_trip() for _ in range(3)) < 0.1
            print('\nthis kernel has no netem: %s' % exc)
            return
        try:
            # A round trip waits for the delayed SYN-ACK and answer.
            assert min(round_trip() for _ in range(3)) >= 0.2
        finally:
            cluster.netem(0)
        assert min(round_trip() for _ in range(3)) < 0.1


def _status(cluster, index=0):
    header = cluster.member_status(index)['header']
    return header['cluster_id'], int(header['revision'])


def _write(cluster, member, key):
    """Write ``key`` through both APIs (the v2 store and v3 key space)."""
    put('v2', cluster.member(member), key, 'x', timeout=10)
    assert v3_put(cluster.member(member), key, 'x', timeout=10)[0] == 200


def _read(cluster, member, key):
    """(v2 value, v3 value) of ``key``, read with a quorum."""
    return (get('v2', cluster.member(member), key, serializable=False),
            get('v3', cluster.member(member), key, serializable=False))


# The rewinds run on a v2-enabled cluster, checking both APIs in one go.
@pytest.mark.parametrize('api', ['v2'])
def test_snapshot_and_restore(cluster):
    _write(cluster, 0, '/early')
    cluster_id, revision = _status(cluster)
    path = cluster.snapshot()
    assert os.path.isfile(path)
    _write(cluster, 0, '/late')
    assert _status(cluster)[1] > revision

    cluster.restore(path)
    assert all(m.is_running for m in cluster.members)
    for i in range(3):
        assert _status(cluster, i) == (cluster_id, revision)
        # etcd 3.5's v3 snapshots do not hold the v2 store: it is empty.
        assert _read(cluster, i, '/early') == (None, 'x')
        assert _read(cluster, i, '/late') == (None, None)
    put('v2', cluster.member(0), '/again', 'y', timeout=10)   # v2 is on
    assert v2_get(cluster.member(1), '/again', quorum=True) == 'y'


@pytest.mark.parametrize('api', ['v2'])
def test_backup_and_restore_data(cluster):
    _write(cluster, 0, '/early')
    cluster_id, revision = _status(cluster)
    v2_index = cluster.client().read('/early').etcd_index
    copies = cluster.backup_data()
    assert cluster.wait_for_leader() is not None
    _write(cluster, 1, '/late')
    cluster.restore_data(copies)
    for i in range(3):
        assert _status(cluster, i) == (cluster_id, revision)
        assert _read(cluster, i, '/early') == ('x', 'x')
        assert _read(cluster, i, '/late') == (None, None)
    # The v2 index went back too (restarts add a few entries of their own).
    assert cluster.client().read('/early').etcd_index < v2_index + 10


@pytest.mark.parametrize('api', ['v2'])
def test_wipe(cluster):
    _write(cluster, 0, '/k')
    cluster_id, revision = _status(cluster)
    assert revision > 1
    cluster.wipe()
    for i in range(3):
        assert _status(cluster, i) == (cluster_id, 1)
        assert _read(cluster, i, '/k') == (None, None)
    assert cluster.client().write('/k', 'y').modifiedIndex < 10
    cluster.wipe(new_token=True)        # another cluster, same addresses
    assert _status(cluster)[0] != cluster_id
    assert _status(cluster, 2) == (_status(cluster)[0], 1)


def test_server_snapshot_restore_backup_wipe():
    with EtcdServer(name='rewind') as server:
        client = server.client()
        for i in range(3):
            client.write('/early%d' % i, 'x')
            v3_put(server, 'v3early%d' % i, 'x', timeout=10)
        header = _http_get(server.host, server.port,
                           '/v3/maintenance/status', post={})[1]['header']
        cluster_id, revision = header['cluster_id'], header['revision']
        v2_index = client.read('/early2').modifiedIndex
        path = server.snapshot()
        copy = server.backup_data()
        assert server.is_running
        client.write('/late', 'x')
        v3_put(server, 'v3late', 'x', timeout=10)

        def state():
            header = _http_get(server.host, server.port,
                               '/v3/maintenance/status',
                               post={})[1]['header']
            v2 = {n.key: n.value for n in server.client().read(
                '/', recursive=True).leaves if n.key}
            return (header['cluster_id'], header['revision'],
                    v3_get(server, 'v3early0'), v3_get(server, 'v3late'), v2)

        # A copy of the stopped member's data rewinds both APIs.
        server.restore_data(copy)
        assert state() == (cluster_id, revision, 'x', None,
                           {'/early%d' % i: 'x' for i in range(3)})
        assert server.client().write('/next', 'y').modifiedIndex <= (
            v2_index + 2)
        assert os.path.isdir(copy)      # copied, not moved: reusable

        # A v3 snapshot rewinds v3 and empties v2, which stays enabled.
        server.restore(path)
        assert state() == (cluster_id, revision, 'x', None, {})
        assert server.client().write('/again', 'y').modifiedIndex < v2_index

        server.wipe()
        assert state() == (cluster_id, '1', None, None, {})
        server.wipe(new_token=True)
        assert state()[0] != cluster_id


def test_cleanup_leaves_nothing_and_is_idempotent():
    cluster = NetnsCluster(size=1)
    names = cluster_names(cluster)
    cluster.start()
    assert len(leftovers(names)) == len(names)
    cluster.cleanup()
    cluster.cleanup()
    assert leftovers(names) == []
    assert not cluster.member(0).is_running
    # Started again, it builds a new network.
    with cluster:
        cluster.start()
        assert cluster.member(0).client().read('/').dir
    assert leftovers(names) == []


def test_garbage_collection_leaves_nothing():
    cluster = NetnsCluster(size=1).start()
    names = cluster_names(cluster)
    pid = cluster.member(0).pid
    del cluster
    gc.collect()
    assert leftovers(names) == []
    assert not os.path.exists('/proc/%d' % pid)     # killed and reaped


def test_failed_start_leaves_nothing():
    cluster = NetnsCluster(size=3, extra_args=['--no-such-flag'],
                           startup_timeout=20)
    with pytest.raises(EtcdStartupError):
        cluster.start()
    assert leftovers(cluster_names(cluster)) == []
    assert not any(m.is_running for m in cluster.members)


def test_failed_network_setup_leaves_nothing(monkeypatch):
    made = []

    def fail_on_second(ifname):
        made.append(ifname)
        if len(made) == 3:      # the bridge, one veth, then this
            raise OSError('injected failure')
    monkeypatch.setattr(netns, '_disable_ipv6', fail_on_second)
    cluster = NetnsCluster(size=3)
    with pytest.raises(OSError, match='injected'):
        with cluster:
            pass
    assert leftovers(cluster_names(cluster)) == []


def _leave_stale_network():
    """A namespace and a bridge as a harness of a dead process leaves."""
    dead = subprocess.Popen(['true'])
    dead.wait()
    tag = os.urandom(3).hex()
    ns = 'etcdwatch-%d-%s-0' % (dead.pid, tag)
    bridge = 'ewb' + tag
    subprocess.run(['ip', 'netns', 'add', ns], check=True)
    subprocess.run(['ip', 'link', 'add', bridge, 'type', 'bridge'],
                   check=True)
    subprocess.run(['ip', 'link', 'set', bridge, 'alias',
                    'etcdwatch-%d-%s' % (dead.pid, tag)], check=True)
    return [ns, bridge]


def test_reap_stale_removes_what_dead_processes_left():
    stale = []
    try:
        with NetnsCluster(size=1) as alive:
            stale = _leave_stale_network()
            assert set(stale) <= set(reap_stale())   # others may be stale too
            assert leftovers(stale) == []
            # A live harness's network is left alone.
            assert len(leftovers(cluster_names(alive))) == 3
            assert alive.member(0).client().read('/').dir
        # Every start reaps first.
        stale = _leave_stale_network()
        with NetnsCluster(size=1):
            assert leftovers(stale) == []
    finally:
        for name in stale:
            subprocess.run(['ip', 'netns', 'del', name], capture_output=True)
            subprocess.run(['ip', 'link', 'del', name], capture_output=True)
