"""The etcd v2 backend, over python-etcd.

This is the one module that knows etcd v2's event vocabulary and
python-etcd's exceptions.  It deliberately avoids python-etcd's
``eternal_watch`` (which loops forever on a cleared index) and never relies
on anything but the socket timeout to end a watch.

Faults of a cluster, as etcd v2 and python-etcd show them:

* A member without a raft leader still serves plain reads and watches from
  its own store; a write or a quorum read fails there after etcd's request
  timeout (7 s by default) with errorCode 300 "Raft Internal Error", cause
  "etcdserver: request timed out", HTTP 500 (etcd 3.5.1).  python-etcd
  passes such an answer through without trying another member, so this
  module moves a client that knows other members to the next one itself.
* A cluster wiped or restored on the same address keeps its cluster ID if
  it was rebuilt with the same name, peer URL and token: only its index,
  gone back, tells.  Another cluster has another ID, which python-etcd
  reports once, as ``EtcdClusterIdChanged``.
"""

import http.client
import math
import socket
import threading
import weakref

import etcd
import urllib3.exceptions
import urllib3.util

from oslo_log import log as logging

from etcdwatch.backends import base
from etcdwatch import exceptions

LOG = logging.getLogger(__name__)


# What check_current reads.  It is never written: a quorum read of a key
# that does not exist is cheap, whatever the size of the tree it would sit
# in, and its "not found" (or "not a directory", below a key) carries
# etcd's index.  It lives below the watched path, which whoever may read
# that path may read too (v2 auth grants by key prefix), and starts with
# '_', so even if someone wrote it no listing or recursive watch shows it.
_QUORUM_KEY = '_etcdwatch-quorum-check'

# etcd v2 actions that remove a node.  Everything else that a watch can
# report (set, create, update, compareAndSwap) leaves it with a value.
_REMOVALS = frozenset(['delete', 'expire', 'compareAndDelete'])

_NETWORK_ERRORS = (urllib3.exceptions.HTTPError, http.client.HTTPException,
                   socket.error)


def _payload_index(exc):
    payload = getattr(exc, 'payload', None)
    if isinstance(payload, dict):
        index = payload.get('index')
        if isinstance(index, int):
            return index
    return None


def _ttl(seconds):
    # etcd v2 takes whole seconds; round up so a lease is never shorter
    # than asked for.
    return max(1, int(math.ceil(seconds)))


class _Translate(object):
    """Turns python-etcd and transport errors into etcdwatch's.

    Exceptions listed in ``expected`` are answers the caller handles
    itself (a key not found, a compare that failed); they pass untouched.
    An :class:`~etcdwatch.exceptions.EtcdUnavailable` from the member the
    client stood at when the call began moves the client on
    (:func:`_move_on`).
    """

    def __init__(self, client, what, expected=()):
        self.client = client
        self.what = what
        self.expected = expected
        self.member = None

    def __enter__(self):
        self.member = getattr(self.client, '_base_uri', None)
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, self.expected):
            return False
        if isinstance(exc, etcd.EtcdClusterIdChanged):
            raise exceptions.ClusterRewound(
                '%s: another etcd cluster answers: %s'
                % (self.what, exc)) from exc
        if isinstance(exc, etcd.EtcdEventIndexCleared):
            raise exceptions.HistoryGone(
                str(exc), _payload_index(exc)) from exc
        if (isinstance(exc, (etcd.EtcdConnectionFailed,) + _NETWORK_ERRORS)
                or _lost_every_member(exc) or _no_quorum(exc)):
            _move_on(self.client, self.member, exc)
            raise exceptions.EtcdUnavailable(
                '%s: etcd unreachable: %s' % (self.what, exc)) from exc
        if isinstance(exc, etcd.EtcdException):
            raise exceptions.BackendError(
                '%s: %s' % (self.what, exc)) from exc
        return False


def _lost_every_member(exc):
    # A multi-host python-etcd client that cannot reach any member to
    # refresh its member list says so with a bare EtcdException.
    return (type(exc) is etcd.EtcdException and
            str(exc).startswith('Could not get the list of servers'))


def _no_quorum(exc):
    """Whether etcd answered that it could not go through raft in time.

    etcd's v2 API turns every error of its server layer (no leader,
    request timed out, stopped, too many requests: all "etcdserver: ...")
    into errorCode 300 "Raft Internal Error" with that error as the cause;
    301 is a leader election in progress.  A 300 from the store itself
    (etcd 3.5 refusing to update a directory: "nodePath ...") is a
    deterministic answer, not an outage.
    """
    payload = getattr(exc, 'payload', None)
    if not isinstance(payload, dict):
        return False
    code = payload.get('errorCode')
    cause = payload.get('cause')
    return code == 301 or (code == 300 and isinstance(cause, str) and
                           cause.startswith('etcdserver: '))


# Every member ever seen per python-etcd client, in the order the client
# is moved through them.  Rotations are rare, so one lock serves all.
_members: 'weakref.WeakKeyDictionary[object, list]' = (
    weakref.WeakKeyDictionary())
_members_lock = threading.Lock()


def _remember(client):
    """The members ``client`` knows of, ever; called with the lock held."""
    current = getattr(client, '_base_uri', None)
    cache = getattr(client, '_machines_cache', None)
    if not isinstance(current, str) or not isinstance(cache, list):
        return []
    try:
        known = _members.setdefault(client, [])
    except TypeError:           # no weak references to it
        known = []
    for uri in [current] + cache:
        if isinstance(uri, str) and uri not in known:
            known.append(uri)
    return known


def _move_on(client, failed, cause):
    """Move ``client`` from member ``failed`` to the next member it knows.

    For python-etcd clients (``_base_uri``, ``_machines_cache``) that know
    of another member, and only if the client still stands at ``failed``:
    if python-etcd failed over during the call, or another thread already
    moved it, it is left alone.  Members go round in a fixed order (those
    the client knew when its first backend was made, then any it learnt of
    later), wrapping around, so a member cut off from the others is not
    kept for ever while they have a quorum.  Also refills python-etcd's
    list of the others, which its own failover empties, so that it can
    fail over again.
    """
    with _members_lock:
        if failed is None or getattr(client, '_base_uri', None) != failed:
            return
        known = _remember(client)
        if len(known) < 2:
            return
        following = known[(known.index(failed) + 1) % len(known)]
        client._base_uri = following
        client._machines_cache = [uri for uri in known if uri != following]
    LOG.warning('etcd member %s cannot serve (%s); using %s from now on',
                failed, cause, following)


# Answers to a conditional write or delete that mean "not ours".
_NOT_OURS = (etcd.EtcdCompareFailed, etcd.EtcdKeyNotFound)
# How python-etcd reports a watch that saw nothing in time.
_QUIET = (etcd.EtcdWatchTimedOut, urllib3.exceptions.ReadTimeoutError)


# Bound every request to one socket timeout.  urllib3 retries a GET or PUT
# whose headers do not arrive three times, so against a stalled (SIGSTOPped,
# overloaded) etcd a watch with a 60 s timeout would hang for 240 s.
# python-etcd does its own failover to other members (allow_reconnect), so
# urllib3's retries buy nothing; redirects are still followed.
_NO_RETRIES = urllib3.util.Retry(total=0, redirect=5,
                                 raise_on_redirect=False)


def _bound_requests(client):
    http = getattr(client, 'http', None)
    pool_kw = getattr(http, 'connection_pool_kw', None)
    if isinstance(pool_kw, dict) and pool_kw.get('retries') is None:
        pool_kw['retries'] = _NO_RETRIES
        http.clear()    # pools made before keep their own retries


def _leaf_values(result):
    """Every leaf key under a recursive read's result -> its value.

    Walks the parsed JSON nodes python-etcd keeps (``_children``) rather
    than ``result.leaves``, which builds an EtcdResult and a generator per
    node: half the time of a 100k-key load (docs/performance.rst).
    """
    children = getattr(result, '_children', None)
    if not isinstance(children, list):
        return {node.key: node.value
                for node in result.leaves if not node.dir}
    if not result.dir:
        return {result.key: result.value}
    items = {}
    stack = [children]
    while stack:
        for node in stack.pop():
            if node.get('dir'):
                stack.append(node.get('nodes', ()))
            else:
                items[node['key']] = node.get('value')
    return items


class V2Backend(base.Backend):
    """Backend for python-etcd's ``etcd.Client`` (and FakeEtcdClient).

    It turns off urllib3's own retries on the client it is given (unless
    the application set some), so that each request, a watch included,
    gives up after one socket timeout.  A python-etcd client that knows
    several members is moved to the next one when the member it uses
    cannot serve a request and python-etcd did not move it already (see
    :func:`_move_on`).
    """

    name = 'v2'

    def __init__(self, client):
        super(V2Backend, self).__init__(client)
        _bound_requests(client)
        with _members_lock:
            _remember(client)

    def _translate(self, what, expected=()):
        return _Translate(self.client, what, expected)

    def read_tree(self, path):
        try:
            with self._translate('read %s' % path, etcd.EtcdKeyNotFound):
                result = self.client.read(path, recursive=True)
        except etcd.EtcdKeyNotFound as e:
            index = _payload_index(e)
            if index is None:
                raise exceptions.BackendError(
                    'read %s: not found, at no index' % path) from e
            return base.Snapshot(index, {})
        return base.Snapshot(result.etcd_index, _leaf_values(result))

    def watch_tree(self, path, from_index, timeout):
        return self._watch(path, from_index, timeout, recursive=True)

    def watch_key(self, key, from_index, timeout):
        return self._watch(key, from_index, timeout, recursive=False)

    def _watch(self, key, from_index, timeout, recursive):
        try:
            with self._translate('watch %s' % key, _QUIET):
                result = self.client.watch(key, index=from_index,
                                           timeout=timeout,
                                           recursive=recursive)
        except _QUIET:
            return None
        if result is None:
            return None
        # etcd reports its index when the watch began (an event found in
        # history comes with the newest index), so on an etcd that has
        # reached from_index - 1, as every etcd we took from_index from
        # has, it is at least that.  Below it, etcd went back: wiped, or
        # restored from an older backup.  (A member that lags that far
        # behind the one we took from_index from looks the same; a full
        # re-read is right for it too.)
        if from_index and result.etcd_index < from_index - 1:
            raise exceptions.ClusterRewound(
                'watch %s from %d: etcd is back at index %d'
                % (key, from_index, result.etcd_index), result.etcd_index)
        return self._event(result)

    @staticmethod
    def _event(result):
        removal = result.action in _REMOVALS
        return base.Event(
            kind=base.DELETE if removal else base.PUT,
            key=result.key,
            value=None if (removal or result.dir) else result.value,
            index=result.modifiedIndex,
            is_dir=bool(result.dir),
            current_index=getattr(result, 'etcd_index', None))

    def read_key(self, key):
        try:
            with self._translate('read %s' % key, etcd.EtcdKeyNotFound):
                result = self.client.read(key)
        except etcd.EtcdKeyNotFound as e:
            return None, _payload_index(e)
        state = base.KeyState(result.value, result.createdIndex,
                              result.modifiedIndex)
        return state, result.etcd_index

    def check_current(self, path, index):
        """See :meth:`etcdwatch.backends.base.Backend.check_current`.

        Reads a key below ``path`` that is never written
        (``<path>/_etcdwatch-quorum-check``) with ``quorum=true``, so it
        goes through raft: its "not found" carries etcd's index, and it
        costs the same for any size of tree.  Bounded by the client's read
        timeout or :data:`~etcdwatch.backends.base.CHECK_TIMEOUT`,
        whichever is shorter (on a read
        timeout, a python-etcd client with ``allow_reconnect`` tries its
        other members by itself).
        """
        key = path.rstrip('/') + '/' + _QUORUM_KEY
        read_timeout = getattr(self.client, 'read_timeout', None)
        timeout = (min(read_timeout, base.CHECK_TIMEOUT) if read_timeout
                   else base.CHECK_TIMEOUT)
        try:
            with self._translate('quorum read %s' % key, etcd.EtcdKeyError):
                result = self.client.read(key, quorum=True, timeout=timeout)
            current = result.etcd_index
        except etcd.EtcdKeyError as e:
            # Not found, or not a directory below a key: both are answers.
            current = _payload_index(e)
            if current is None:
                raise exceptions.BackendError(
                    'quorum read %s: %s, at no index' % (key, e)) from e
        if current < index:
            raise exceptions.ClusterRewound(
                'etcd is back at index %d, below %d' % (current, index),
                current)
        return current

    def create(self, key, value, ttl):
        try:
            with self._translate('create %s' % key, etcd.EtcdAlreadyExist):
                result = self.client.write(key, value, prevExist=False,
                                           ttl=_ttl(ttl))
        except etcd.EtcdAlreadyExist:
            return None
        return result.createdIndex

    def create_unique(self, prefix, value, ttl):
        """An in-order key below ``prefix`` (a POST), with a TTL."""
        with self._translate('create below %s' % prefix):
            result = self.client.write(prefix, value, append=True,
                                       ttl=_ttl(ttl))
        return result.key, result.createdIndex

    def read_queue(self, prefix):
        """The keys directly below ``prefix``, by creation index."""
        try:
            with self._translate('read %s' % prefix, etcd.EtcdKeyNotFound):
                result = self.client.read(prefix, sorted=True)
        except etcd.EtcdKeyNotFound as e:
            index = _payload_index(e)
            if index is None:
                raise exceptions.BackendError(
                    'read %s: not found, at no index' % prefix) from e
            return base.Queue(index, [])
        children = getattr(result, '_children', None)
        if not result.dir or not isinstance(children, list):
            raise exceptions.BackendError(
                'read %s: a key, not a directory' % prefix)
        entries = [base.QueueEntry(node['key'], node.get('value'),
                                   node['createdIndex'])
                   for node in children if not node.get('dir')]
        entries.sort(key=lambda entry: entry.created_index)
        return base.Queue(result.etcd_index, entries)

    def refresh(self, key, value, ttl):
        # refresh=True renews the TTL without a watch event, so followers
        # waiting on the key sleep on; prevValue makes it ours-only.
        try:
            with self._translate('refresh %s' % key, _NOT_OURS):
                self.client.write(key, None, ttl=_ttl(ttl), refresh=True,
                                  prevExist=True, prevValue=value)
        except _NOT_OURS:
            return False
        return True

    def replace(self, key, old, new, ttl):
        try:
            with self._translate('replace %s' % key, _NOT_OURS):
                self.client.write(key, new, ttl=_ttl(ttl), prevExist=True,
                                  prevValue=old)
        except _NOT_OURS:
            return False
        return True

    def delete_if(self, key, value):
        try:
            with self._translate('delete %s' % key, _NOT_OURS):
                self.client.delete(key, prevValue=value)
        except _NOT_OURS:
            return False
        return True
