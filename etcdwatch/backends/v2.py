"""The etcd v2 backend, over python-etcd.

This is the one module that knows etcd v2's event vocabulary and
python-etcd's exceptions.  It deliberately avoids python-etcd's
``eternal_watch`` (which loops forever on a cleared index) and never relies
on anything but the socket timeout to end a watch.
"""

import http.client
import math
import socket

import etcd
import urllib3.exceptions
import urllib3.util

from etcdwatch.backends import base
from etcdwatch import exceptions

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
    """

    def __init__(self, what, expected=()):
        self.what = what
        self.expected = expected

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, self.expected):
            return False
        if isinstance(exc, etcd.EtcdEventIndexCleared):
            raise exceptions.HistoryGone(
                str(exc), _payload_index(exc)) from exc
        if (isinstance(exc, (etcd.EtcdConnectionFailed,) + _NETWORK_ERRORS)
                or _lost_every_member(exc)):
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
    gives up after one socket timeout.
    """

    name = 'v2'

    def __init__(self, client):
        super(V2Backend, self).__init__(client)
        _bound_requests(client)

    def read_tree(self, path):
        try:
            with _Translate('read %s' % path, etcd.EtcdKeyNotFound):
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
            with _Translate('watch %s' % key, _QUIET):
                result = self.client.watch(key, index=from_index,
                                           timeout=timeout,
                                           recursive=recursive)
        except _QUIET:
            return None
        if result is None:
            return None
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
            with _Translate('read %s' % key, etcd.EtcdKeyNotFound):
                result = self.client.read(key)
        except etcd.EtcdKeyNotFound as e:
            return None, _payload_index(e)
        state = base.KeyState(result.value, result.createdIndex,
                              result.modifiedIndex)
        return state, result.etcd_index

    def create(self, key, value, ttl):
        try:
            with _Translate('create %s' % key, etcd.EtcdAlreadyExist):
                result = self.client.write(key, value, prevExist=False,
                                           ttl=_ttl(ttl))
        except etcd.EtcdAlreadyExist:
            return None
        return result.createdIndex

    def refresh(self, key, value, ttl):
        # refresh=True renews the TTL without a watch event, so followers
        # waiting on the key sleep on; prevValue makes it ours-only.
        try:
            with _Translate('refresh %s' % key, _NOT_OURS):
                self.client.write(key, None, ttl=_ttl(ttl), refresh=True,
                                  prevExist=True, prevValue=value)
        except _NOT_OURS:
            return False
        return True

    def delete_if(self, key, value):
        try:
            with _Translate('delete %s' % key, _NOT_OURS):
                self.client.delete(key, prevValue=value)
        except _NOT_OURS:
            return False
        return True
