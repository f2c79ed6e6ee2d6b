"""An etcd cluster whose members live in network namespaces: partitions.

Each member of a :class:`NetnsCluster` runs in a Linux network namespace of
its own, plugged into a private bridge; the test process (in the root
namespace) reaches every member at the member's own address, so a test can
cut one member off from the others while still talking to it::

    with NetnsCluster(size=3) as cluster:
        cluster.partition(0)                # blackhole routes, both ways
        wait_for(lambda: cluster.member_has_leader(0) is False)
        cluster.wait_for_leader(among=[1, 2])
        cluster.heal(0)

Needs Linux, root and the ``ip`` command (iproute2); ``tc`` and a kernel
with the netem queueing discipline for :meth:`NetnsCluster.netem`.  Without
them :class:`NetnsUnavailable` (:class:`NetemUnavailable`) is raised:
nothing here skips a test.  :func:`netns_available` tells beforehand.

Network layout: a random free ``10.234.X.0/24`` (one no route or address
of the machine overlaps), the bridge holding ``.1`` in the root namespace,
member ``i`` at ``.(10 + i)`` with etcd on ports 2379 (clients) and 2380
(peers).  The namespaces have no default route: traffic only goes between
the test process and the members.  Names carry the creating process's pid
and a random tag (bridge ``ewb<tag>``, veths ``ewv<tag><i>``, namespaces
``etcdwatch-<pid>-<tag>-<i>``), so parallel test processes never collide.

Everything is removed by :meth:`NetnsCluster.cleanup`, by a failed first
start, and by a finalizer on garbage collection or interpreter exit; what
a killed test process left behind is removed by :func:`reap_stale`, which
every :meth:`NetnsCluster.start` runs first.
"""

import collections
import fcntl
import http.client
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
import weakref

from etcdwatch.testing.server import _POLL_INTERVAL
from etcdwatch.testing.server import EtcdCluster
from etcdwatch.testing.server import EtcdServer
from etcdwatch.testing.server import find_etcd_binary

__all__ = ['NetnsCluster', 'NetnsUnavailable', 'NetemUnavailable',
           'netns_available', 'reap_stale']

CLIENT_PORT = 2379
PEER_PORT = 2380
_NETWORK = '10.234.%d.0/24'
_FIRST_HOST = 10
_NS_RE = re.compile(r'^etcdwatch-(\d+)-([0-9a-f]{6})-\d+$')
_ALIAS_RE = re.compile(r'^etcdwatch-(\d+)-([0-9a-f]{6})$')
_LOCK = '/run/etcdwatch-netns.lock'


class NetnsUnavailable(RuntimeError):
    """This process cannot create network namespaces (see the message)."""


class NetemUnavailable(RuntimeError):
    """``tc netem`` failed: the kernel lacks it (CONFIG_NET_SCH_NETEM)."""


def netns_available():
    """``(True, '')`` if :class:`NetnsCluster` can run here, else why not.

    Returns ``(False, reason)`` without Linux, root or ``ip`` (iproute2).
    """
    if not sys.platform.startswith('linux'):
        return False, 'network namespaces need Linux'
    if os.geteuid() != 0:
        return False, ('network namespaces need root; this process runs '
                       'as uid %d' % os.geteuid())
    if shutil.which('ip') is None:
        return False, 'the ip command (iproute2) is not installed'
    if not os.path.exists('/proc/self/ns/net'):
        return False, 'the kernel has no network namespaces'
    return True, ''


def _run(argv, check=True):
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError('%s failed: %s' % (' '.join(argv),
                                              proc.stderr.strip()))
    return proc


def _ip(*args, check=True):
    return _run(['ip'] + list(args), check=check)


def _ip_json(*args):
    out = _ip('-j', *args).stdout.strip()
    return json.loads(out) if out else []


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces():
    """Names of every network namespace ``ip netns`` knows."""
    return [line.split()[0] for line in _ip('netns', 'list').stdout.split(
        '\n') if line.strip()]


def _delete_namespace(name):
    """Kill what still runs in namespace ``name``, then delete it."""
    pids = _ip('netns', 'pids', name, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ValueError, OSError):
            pass
    _ip('netns', 'del', name, check=False)


def reap_stale():
    """Delete the namespaces and bridges of harnesses whose process died.

    They are recognised by name (namespaces ``etcdwatch-<pid>-<tag>-<i>``)
    and by alias (bridges ``etcdwatch-<pid>-<tag>``); only those whose pid
    no longer exists are touched, processes still inside them are killed.
    Returns the names removed.  A no-op without root.
    """
    if not netns_available()[0]:
        return []
    removed = []
    for link in _ip_json('link', 'show', 'type', 'bridge'):
        match = _ALIAS_RE.match(link.get('ifalias') or '')
        if match and not _pid_alive(int(match.group(1))):
            _ip('link', 'del', link['ifname'], check=False)
            removed.append(link['ifname'])
    for name in _namespaces():
        match = _NS_RE.match(name)
        if match and not _pid_alive(int(match.group(1))):
            _delete_namespace(name)
            removed.append(name)
    return removed


def _used_networks():
    """IPv4 networks of the root namespace's addresses and routes."""
    nets = []
    for route in _ip_json('-4', 'route', 'show', 'table', 'all'):
        dst = route.get('dst')
        if dst and dst != 'default':
            nets.append(ipaddress.ip_network(dst, strict=False))
    for link in _ip_json('-4', 'addr'):
        for info in link.get('addr_info', ()):
            nets.append(ipaddress.ip_network(
                '%s/%s' % (info['local'], info['prefixlen']), strict=False))
    return nets


def _disable_ipv6(ifname):
    # No IPv6 link-local chatter on our links; the namespaces' own side
    # stays on the bridge whatever it sends.
    path = '/proc/sys/net/ipv6/conf/%s/disable_ipv6' % ifname
    try:
        with open(path, 'w') as f:
            f.write('1')
    except OSError:
        pass


class _Network(object):
    """The bridge, veths and namespaces of one cluster.

    Kept apart from the cluster so its finalizer holds no reference to it;
    it also holds the members' resources, to kill their processes before
    their namespaces go.
    """

    def __init__(self, size):
        self.tag = uuid.uuid4().hex[:6]
        self.pid = os.getpid()
        self.bridge = 'ewb' + self.tag
        self.veths = ['ewv%s%d' % (self.tag, i) for i in range(size)]
        self.namespaces = ['etcdwatch-%d-%s-%d' % (self.pid, self.tag, i)
                           for i in range(size)]
        self.network = None
        self.active = False
        self.member_resources = []

    def address(self, index):
        return str(self.network[_FIRST_HOST + index])

    def create(self):
        """Create everything; on failure the caller runs destroy()."""
        self.active = True
        for name in self.namespaces:
            _ip('netns', 'add', name)
            _ip('-n', name, 'link', 'set', 'lo', 'up')
        self._create_bridge()
        _ip('link', 'set', self.bridge, 'up')
        for index, (veth, name) in enumerate(zip(self.veths,
                                                 self.namespaces)):
            _ip('link', 'add', veth, 'type', 'veth',
                'peer', 'name', 'eth0', 'netns', name)
            _disable_ipv6(veth)
            _ip('link', 'set', veth, 'master', self.bridge, 'up')
            _ip('-n', name, 'addr', 'add', '%s/%d' % (
                self.address(index), self.network.prefixlen), 'dev', 'eth0')
            _ip('-n', name, 'link', 'set', 'eth0', 'up')

    def _create_bridge(self):
        # Under a lock shared by every process: choosing a free network and
        # giving the bridge an address in it must be one step.
        os.makedirs(os.path.dirname(_LOCK), exist_ok=True)
        with open(_LOCK, 'a') as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            used = _used_networks()
            candidates = list(range(256))
            random.shuffle(candidates)
            for third in candidates:
                network = ipaddress.ip_network(_NETWORK % third)
                if not any(network.overlaps(n) for n in used):
                    break
            else:
                raise NetnsUnavailable('no free network 10.234.X.0/24')
            self.network = network
            _ip('link', 'add', self.bridge, 'type', 'bridge')
            _ip('link', 'set', self.bridge, 'alias',
                'etcdwatch-%d-%s' % (self.pid, self.tag))
            _disable_ipv6(self.bridge)
            _ip('addr', 'add', '%s/%d' % (network[1], network.prefixlen),
                'dev', self.bridge)

    def destroy(self):
        """Kill the members, delete bridge and namespaces; idempotent."""
        if os.getpid() != self.pid:
            return      # a forked child's copy: not ours to remove
        for res in self.member_resources:
            res.release()
        if not self.active:
            return
        self.active = False
        # Veths go explicitly: the kernel removes those of a deleted
        # namespace only later, asynchronously.  -force: past what is gone.
        commands = ['link del %s' % veth for veth in self.veths]
        commands.append('link del %s' % self.bridge)
        commands.extend('netns del %s' % name for name in self.namespaces)
        subprocess.run(['ip', '-force', '-batch', '-'],
                       input='\n'.join(commands) + '\n', text=True,
                       capture_output=True, timeout=30)


class NetnsCluster(EtcdCluster):
    """A static etcd cluster, each member in a network namespace of its own.

    Members are :class:`~etcdwatch.testing.server.EtcdServer` objects
    (``kill()``, ``stop()``, ``pause()``, ``restart()``... work as usual)
    whose ``host`` is their address on the bridge and ``port`` 2379; the
    test process reaches them directly, so ``member.client()`` and
    :meth:`client` work.  The network exists from :meth:`start` to
    :meth:`cleanup`; a :meth:`start` after :meth:`cleanup` builds a new one
    (possibly another subnet).

    Raises :class:`NetnsUnavailable` when :func:`netns_available` says no.
    """

    def __init__(self, size=3, binary=None, enable_v2=True, extra_args=(),
                 startup_timeout=60, name_prefix='etcd'):
        ok, reason = netns_available()
        if not ok:
            raise NetnsUnavailable(reason)
        if not 1 <= size <= 200:
            raise ValueError('size must be between 1 and 200')
        binary = binary or find_etcd_binary()
        self.startup_timeout = startup_timeout
        self._token = 'etcdwatch-' + uuid.uuid4().hex
        self._net = _Network(size)
        self._members = tuple(
            EtcdServer(binary=binary, name='%s%d' % (name_prefix, i),
                       enable_v2=enable_v2, extra_args=extra_args,
                       host=None, startup_timeout=startup_timeout,
                       ports=(CLIENT_PORT, PEER_PORT),
                       command_prefix=('ip', 'netns', 'exec', name))
            for i, name in enumerate(self._net.namespaces))
        self._net.member_resources = [m._res for m in self._members]
        self._isolated = set()
        self._blackholes = set()       # (from index, to index) pairs
        self._finalizer = weakref.finalize(self, self._net.destroy)

    # -- the network -------------------------------------------------------

    @property
    def namespaces(self):
        """The namespaces' names, member by member."""
        return tuple(self._net.namespaces)

    @property
    def bridge(self):
        """The bridge's name in the root namespace."""
        return self._net.bridge

    @property
    def network(self):
        """The ``ipaddress.IPv4Network`` in use; None when not started."""
        return self._net.network if self._net.active else None

    @property
    def partitioned(self):
        """Indexes of the members cut off by :meth:`partition`."""
        return frozenset(self._isolated)

    def partition(self, index):
        """Cut member ``index`` off from every other member, both ways.

        Blackhole routes in the namespaces (member ``index`` to each other
        member's address, and back) drop every packet between them at
        once, on connections already open too; the test process still
        reaches every member.  Idempotent; several members may be cut off
        at once (each from all others).
        """
        self._member_index(index)
        self._isolated.add(index)
        self._apply_routes()

    def heal(self, index):
        """Undo :meth:`partition` of member ``index`` (a no-op if none)."""
        self._isolated.discard(index)
        self._apply_routes()

    def _apply_routes(self):
        size = len(self._members)
        wanted = {(a, b) for a in range(size) for b in range(size)
                  if a != b and (a in self._isolated or b in self._isolated)}
        for a, b in sorted(wanted - self._blackholes):
            _ip('-n', self._net.namespaces[a], 'route', 'replace',
                'blackhole', self._net.address(b) + '/32')
            self._blackholes.add((a, b))
        for a, b in sorted(self._blackholes - wanted):
            _ip('-n', self._net.namespaces[a], 'route', 'del',
                'blackhole', self._net.address(b) + '/32', check=False)
            self._blackholes.discard((a, b))

    def netem(self, index, delay_ms=0, loss_pct=0):
        """Delay and/or drop what member ``index`` sends (``tc netem``).

        Applies to every packet leaving the member's interface, to peers
        and to the test process alike, until changed; ``netem(index)``
        with zeros removes it.  Raises :class:`NetemUnavailable` if the
        kernel has no netem.
        """
        name = self._net.namespaces[self._member_index(index)]
        if not delay_ms and not loss_pct:
            _run(['tc', '-n', name, 'qdisc', 'del', 'dev', 'eth0', 'root'],
                 check=False)
            return
        proc = _run(['tc', '-n', name, 'qdisc', 'replace', 'dev', 'eth0',
                     'root', 'netem', 'delay', '%gms' % delay_ms,
                     'loss', '%g%%' % loss_pct], check=False)
        if proc.returncode != 0:
            raise NetemUnavailable(
                'tc netem failed (the kernel needs CONFIG_NET_SCH_NETEM, '
                'module sch_netem): %s' % proc.stderr.strip())

    def _member_index(self, index):
        if not 0 <= index < len(self._members):
            raise IndexError('no member %r' % (index,))
        if not self._net.active:
            raise RuntimeError('%r is not started' % (self,))
        return index

    # -- raft state ----------------------------------------------------------

    def member_status(self, index):
        """Member ``index``'s v3 ``maintenance/status`` as a dict.

        Answered by the member alone (no quorum needed); raises OSError
        or ``http.client.HTTPException`` if it does not answer.
        """
        status, data = self._members[index]._get('/v3/maintenance/status',
                                                 post={})
        if status != 200 or not isinstance(data, dict):
            raise OSError('status %s from %s' % (
                status, self._members[index].name))
        return data

    def member_has_leader(self, index):
        """Does member ``index`` know a raft leader right now?

        True/False from its v3 status (a follower cut off from the leader
        says False once its election timeout runs out: with pre-vote it is
        a pre-candidate then); None when it is not running, is paused or
        does not answer.
        """
        m = self._members[index]
        if not m.is_running or m.is_paused:
            return None
        try:
            leader = self.member_status(index).get('leader')
        except (OSError, http.client.HTTPException):
            return None
        return leader not in (None, '0', 0)

    def leader_index(self, among=None):
        """Index of the leader a quorum of the cluster agrees on, or None.

        Asks the running, unpaused members in ``among`` (default: all) for
        their v3 status; a member is the leader when it says so itself and
        at least ``size // 2 + 1`` of the answers name it.  So a member cut
        off while leading, which may believe it leads for an election
        timeout, is not taken for the leader of the majority.
        """
        indexes = range(len(self._members)) if among is None else among
        answers = {}
        for i in indexes:
            m = self._members[i]
            if not m.is_running or m.is_paused:
                continue
            try:
                data = self.member_status(i)
            except (OSError, http.client.HTTPException):
                continue
            member_id = (data.get('header') or {}).get('member_id')
            answers[member_id] = (i, data.get('leader'))
        votes = collections.Counter(leader for _, leader in answers.values()
                                    if leader not in (None, '0', 0))
        for leader, count in votes.items():
            if (count >= len(self._members) // 2 + 1 and leader in answers
                    and answers[leader][1] == leader):
                return answers[leader][0]
        return None

    def wait_for_leader(self, timeout=30, among=None):
        """Poll :meth:`leader_index` (with ``among``) until it names one.

        Returns the index; raises ``TimeoutError`` after ``timeout``
        seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            index = self.leader_index(among=among)
            if index is not None:
                return index
            if time.monotonic() >= deadline:
                raise TimeoutError('no etcd leader among %s after %ss'
                                   % (among, timeout))
            time.sleep(_POLL_INTERVAL)

    def client(self, **kwargs):
        """A multi-host ``etcd.Client`` (``allow_reconnect=True``).

        Running members come first, members cut off by :meth:`partition`
        last.
        """
        order = sorted(range(len(self._members)), key=lambda i: (
            not self._members[i].is_running or self._members[i].is_paused,
            i in self._isolated))
        kwargs.setdefault('host', tuple((self._members[i].host,
                                         self._members[i].port)
                                        for i in order))
        return super(NetnsCluster, self).client(**kwargs)

    # -- life cycle ----------------------------------------------------------

    def start(self):
        """Build the network if needed, start every member, wait healthy.

        The first start (and the first after :meth:`cleanup`) runs
        :func:`reap_stale`, builds the namespaces and starts every member;
        if anything fails, everything is removed again before the error
        propagates.  Later starts bring back members that are not running
        (they are killed again if the cluster does not become ready).
        Bounded by ``startup_timeout``; raises
        :class:`~etcdwatch.testing.server.EtcdStartupError`.
        """
        if self._net.active:
            spawned = [m for m in self._members if not m.is_running]
            try:
                for m in spawned:
                    m._spawn()
                self._wait_all()
            except BaseException:
                for m in spawned:
                    m.kill()
                raise
            return self
        try:
            reap_stale()
            self._net.create()
            for i, m in enumerate(self._members):
                m._host = self._net.address(i)
            self._introduce_members()
            for m in self._members:
                m._spawn()
            self._wait_all()
        except BaseException:
            self.cleanup()
            raise
        return self

    def snapshot(self, path=None):
        """``etcdctl snapshot save`` from a member that has a leader.

        Members cut off by :meth:`partition` are asked last.  Returns the
        file's path (default: in that member's working directory, deleted
        by :meth:`cleanup`).  See
        :meth:`~etcdwatch.testing.server.EtcdServer.snapshot`.
        """
        for i in sorted(range(len(self._members)),
                        key=lambda i: i in self._isolated):
            if self.member_has_leader(i):
                return self._members[i].snapshot(path)
        raise RuntimeError('no member of %r has a leader' % (self,))

    def restore(self, path):
        """Rewind the whole cluster to the snapshot at ``path``.

        Kills every member, rebuilds each data directory with ``etcdutl
        snapshot restore`` (same name, peer URL, initial cluster and token:
        same member and cluster IDs), starts them and waits until healthy.
        The v3 key space and revision are the snapshot's; the v2 store is
        empty (etcd 3.5 does not put it in v3 snapshots: use
        :meth:`backup_data` for v2).  Partitions and netem stay as they
        are.  Returns self.
        """
        for m in self._members:
            m.kill()
        for m in self._members:
            m._restore_snapshot(path)
        return self.start()

    def wipe(self, new_token=False):
        """Kill every member, delete its data, start an empty cluster.

        Same names, URLs and token, so etcd derives the same member and
        cluster IDs; the v2 index and v3 revision start again from the
        beginning.  With ``new_token`` the token changes, and with it both
        IDs: another cluster answers at the same addresses.  Returns self
        once healthy.
        """
        if new_token:
            self._token = 'etcdwatch-' + uuid.uuid4().hex
        for m in self._members:
            m.kill()
            m._replace_data(None)
            m._cluster_token = self._token
        return self.start()

    def backup_data(self):
        """Copy every member's data directory, all members stopped.

        Stops every member gracefully, copies each data directory (v2 store
        and v3 key space alike), starts the cluster again and waits until
        it is healthy.  Returns the copies' paths, member by member (in the
        members' working directories), for :meth:`restore_data`.
        """
        for m in self._members:
            m.stop()
        copies = [m.backup_data() for m in self._members]
        self.start()
        return copies

    def restore_data(self, copies):
        """Kill every member, put back :meth:`backup_data`'s copies, start.

        Both APIs go back to the copies: v2 keys and index, v3 keys and
        revision, same cluster ID.  The copies stay, to be used again.
        Returns self once healthy.
        """
        if len(copies) != len(self._members):
            raise ValueError('one copy per member, please')
        for m, copy in zip(self._members, copies):
            m.kill()
            m._replace_data(copy)
        return self.start()

    def cleanup(self):
        """Kill every member, delete directories, namespaces and bridge.

        Idempotent; also run on garbage collection and at interpreter exit.
        """
        for m in self._members:
            m.cleanup()
        self._net.destroy()
        self._isolated.clear()
        self._blackholes.clear()

    close = cleanup

    def __repr__(self):
        return '<NetnsCluster %s %s>' % (self._net.tag, ', '.join(
            repr(m) for m in self._members))
