"""An in-memory etcd v2 for tests: :class:`FakeEtcdClient`.

``FakeEtcdClient()`` stands in for python-etcd's ``etcd.Client``: the same
method names and keyword arguments, the same ``etcd.EtcdResult`` objects and
the same exception classes with the same payloads, following etcd v2's store
(one global index, a bounded event history, TTLs, directories, hidden keys,
blocking watches).  ``tests/functional/test_conformance.py`` runs the same
operations against it and against a real etcd 3.5 and compares the outcomes,
so what passes on the fake behaves the same on etcd.

It mirrors both layers a real call crosses: python-etcd's encoding of the
arguments (``True`` becomes ``"true"``, ``prevValue=None`` is sent as the
string ``"None"``, ...) and etcd's parsing and store logic (error codes and
their order, which index each error reports, which watchers see an event).

Time: TTLs run on ``clock`` (default: the real monotonic clock).  With a
:class:`FakeClock` nothing expires until ``clock.advance()``, which expires
the keys that are due and wakes the watches they concern.  A watch's
``timeout`` is always real seconds, like python-etcd's socket timeout.

Test hooks (none of them counts as a call or is stopped by an outage):

``calls``
    ``collections.Counter`` of public method calls by name.  Methods
    delegate exactly as python-etcd's do, so ``watch()`` counts as
    ``'watch'`` and ``'read'``, ``get()`` as ``'get'`` and ``'read'``.
``fail_next(method, exc=None, times=1)``
    The next ``times`` calls of ``method`` raise ``exc`` (an exception
    instance or class; default: the ``etcd.EtcdConnectionFailed`` of an
    unreachable server) before doing anything.
``available`` / ``outage()``
    While ``available`` is False (or inside ``with fake.outage():``) every
    call raises ``etcd.EtcdConnectionFailed`` and blocked watches end with
    it.  The store carries on: TTLs still expire.
``clear_history()``
    Forget every past event: a watch from any index up to the current one
    raises ``etcd.EtcdEventIndexCleared``, later indexes still work.
``index``, ``waiting_watches``, ``wait_for_watches(count, timeout)``,
``dump(path)``
    The current etcd index, the number of watches blocked right now,
    waiting for that number to reach ``count``, and every key under
    ``path`` (hidden ones too) mapped to its value.

Differences from a real etcd that remain: keys are used as given (python-
etcd puts them in the URL unescaped, so a ``?``, ``#`` or ``%`` in a key
misbehaves there); unsorted listings come in insertion order where etcd's
is random; ``raft_index`` equals ``etcd_index``; TTL keys expire exactly on
time (etcd checks every 500 ms); streams, auth and cluster calls
(``machines``, ``members``, ``stats``) are not there.
"""

import collections
import contextlib
import datetime
import heapq
import itertools
import re
import threading
import time
import weakref

import etcd
import urllib3.exceptions

from etcdwatch import handlers

__all__ = ['FakeClock', 'FakeEtcdClient']

_GET = 'GET'
_PUT = 'PUT'
_POST = 'POST'
_DELETE = 'DELETE'

# python-etcd's parameter sets (etcd.Client class attributes).
_COMPARISON_CONDITIONS = frozenset(
    ('prevValue', 'prevIndex', 'prevExist', 'refresh'))
_READ_OPTIONS = frozenset(('recursive', 'wait', 'waitIndex', 'sorted',
                           'quorum'))
_DEL_CONDITIONS = ('prevValue', 'prevIndex')

# etcd v2 error messages and HTTP statuses (server/etcdserver/api/v2error).
_MESSAGES = {
    100: 'Key not found',
    101: 'Compare failed',
    102: 'Not a file',
    104: 'Not a directory',
    105: 'Key already exists',
    107: 'Root is read only',
    108: 'Directory not empty',
    201: 'PrevValue is Required in POST form',
    202: 'The given TTL in POST form is not a number',
    203: 'The given index in POST form is not a number',
    209: 'Invalid field',
    211: 'Value provided on refresh',
    212: 'A TTL must be provided on refresh',
    300: 'Raft Internal Error',
    401: 'The event in requested index is outdated and cleared',
}
_STATUS = {100: 404, 101: 412, 102: 403, 105: 412, 108: 403, 300: 500}

# Go's strconv.ParseBool.
_BOOLS = {'1': True, 't': True, 'T': True, 'TRUE': True, 'true': True,
          'True': True, '0': False, 'f': False, 'F': False, 'FALSE': False,
          'false': False, 'False': False}
_UINT = re.compile(r'[0-9]+\Z')

_NS = 10 ** 9

# Public methods that count as calls and can be made to fail.
_METHODS = frozenset((
    'read', 'write', 'delete', 'watch', 'get', 'set', 'refresh',
    'test_and_set', 'update', 'pop', 'eternal_watch', '__contains__'))


class FakeClock(object):
    """A clock that only moves when told to.

    ``time()`` returns seconds (starting at ``start``); ``advance(seconds)``
    moves it forward, then makes every :class:`FakeEtcdClient` using it
    expire the keys now due and wake the watches that concern them, before
    returning.  Thread-safe.
    """

    def __init__(self, start=1000.0):
        self._now = float(start)
        self._lock = threading.Lock()
        self._listeners = []

    def time(self):
        """Current time in seconds."""
        return self._now

    def advance(self, seconds):
        """Move the clock ``seconds`` (>= 0) forward and run expiries."""
        if seconds < 0:
            raise ValueError('a clock cannot go back (%r)' % (seconds,))
        with self._lock:
            self._now += seconds
            listeners = [ref() for ref in self._listeners]
            self._listeners = [ref for ref, cb in zip(self._listeners,
                                                      listeners) if cb]
        for callback in listeners:
            if callback is not None:
                callback()

    def _subscribe(self, method):
        # Weakly, so a forgotten fake does not live as long as the clock.
        with self._lock:
            self._listeners.append(weakref.WeakMethod(method))

    def __repr__(self):
        return '<FakeClock %s>' % self._now


class _MonotonicClock(object):
    @staticmethod
    def time():
        return time.monotonic()


class _V2Error(Exception):
    """An etcd error response; ``payload`` is what python-etcd would parse.

    ``status`` is added here as python-etcd adds it from the HTTP status.
    """

    def __init__(self, code, cause, index):
        super(_V2Error, self).__init__(code, cause)
        self.code = code
        self.payload = {'errorCode': code, 'message': _MESSAGES[code]}
        if cause:
            # etcd omits an empty cause from the JSON.
            self.payload['cause'] = cause
        self.payload['index'] = index
        self.payload['status'] = _STATUS.get(code, 400)


class _Node(object):
    """A key or directory of the store (etcd's v2store node)."""

    __slots__ = ('path', 'value', 'children', 'created', 'modified',
                 'expire_at', 'expiration', 'parent', 'alive')

    def __init__(self, path, value, is_dir, index, parent):
        self.path = path
        self.value = value
        self.children = {} if is_dir else None
        self.created = self.modified = index
        self.expire_at = None        # clock time, None when permanent
        self.expiration = None       # the RFC 3339 string etcd shows
        self.parent = parent
        self.alive = True

    @property
    def is_dir(self):
        return self.children is not None

    @property
    def name(self):
        return self.path.rsplit('/', 1)[1]


class _Event(object):
    """One entry of the event history.

    ``node``/``prev`` are the JSON objects etcd sends, as dicts; ``path`` is
    the event key (never the root).  ``refresh`` events are kept in history
    but never returned by a watch.
    """

    __slots__ = ('action', 'path', 'node', 'prev', 'refresh')

    def __init__(self, action, path, node, prev=None):
        self.action = action
        self.path = path
        self.node = node
        self.prev = prev
        self.refresh = False

    @property
    def index(self):
        return self.node['modifiedIndex']


class _Watch(object):
    __slots__ = ('key', 'recursive', 'since', 'event', 'removed', 'cut')

    def __init__(self, key, recursive, since):
        self.key = key
        self.recursive = recursive
        self.since = since
        self.event = None
        self.removed = False
        self.cut = False        # by an outage


class _Request(object):
    """A parsed key request (etcd's v2http parseKeyRequest output)."""

    __slots__ = ('method', 'path', 'value', 'dir', 'prev_value',
                 'prev_index', 'prev_exist', 'wait', 'since', 'recursive',
                 'sorted', 'refresh', 'expire_at')


def _clean(path):
    """Go's path.Clean of ``'/' + path``: absolute, no '.', '..', '//'."""
    parts = []
    for part in path.split('/'):
        if part == '..':
            if parts:
                parts.pop()
        elif part and part != '.':
            parts.append(part)
    return '/' + '/'.join(parts)


def _join(parent, name):
    return parent + name if parent == '/' else parent + '/' + name


def _components(path):
    return [part for part in path.split('/') if part]


def _key(path):
    # etcd's store root is '/1' and responses trim that prefix, so the
    # root's own key comes out empty (and is then omitted from the JSON).
    return '' if path == '/' else path


def _is_hidden(watch_path, key_path):
    # etcd's isHidden: is the key hidden as seen from the watched path?
    if len(watch_path) > len(key_path):
        return False
    return '/_' in _clean('/' + key_path[len(watch_path):])


def _extern(key, value=None, is_dir=False, expiration=None, ttl=0,
            nodes=None, modified=0, created=0):
    """A NodeExtern as etcd's JSON has it: empty fields are omitted."""
    node = {}
    if key:
        node['key'] = key
    if value is not None:
        node['value'] = value
    if is_dir:
        node['dir'] = True
    if expiration is not None:
        node['expiration'] = expiration
    if ttl:
        node['ttl'] = ttl
    if nodes:
        node['nodes'] = nodes
    if modified:
        node['modifiedIndex'] = modified
    if created:
        node['createdIndex'] = created
    return node


def _rfc3339(wall):
    """Go's RFC3339Nano in UTC (trailing zeros of the fraction dropped)."""
    nanos = int(round(wall * _NS))
    seconds, frac = divmod(nanos, _NS)
    text = datetime.datetime.fromtimestamp(
        seconds, datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S')
    if frac:
        text += ('.%09d' % frac).rstrip('0')
    return text + 'Z'


def _form_value(value):
    # urlencode()'s conversion, as the server then sees it.
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode('utf-8', 'replace')
    return str(value)


def _copy(obj):
    if isinstance(obj, dict):
        return {k: _copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_copy(v) for v in obj]
    return obj


class FakeEtcdClient(object):
    """In-memory etcd v2 behind python-etcd's ``etcd.Client`` interface.

    ``clock`` (an object whose ``time()`` gives monotonic seconds, e.g. a
    :class:`FakeClock`) drives TTLs; ``history_size`` is how many events a
    watch can look back on (etcd's is 1000); ``handler`` (an etcdwatch
    handler or its name, default :func:`etcdwatch.handlers.
    default_handler`) supplies the lock and condition, so blocked watches
    work with threads and eventlet green threads alike; ``read_timeout`` is
    python-etcd's default watch timeout; ``etcd_version`` picks the few
    behaviours in which etcd releases differ (3.5 refuses to update a
    directory with a 300 "Raft Internal Error"; 3.4 updates it).

    The store starts empty at index 0.  Every method is thread-safe.
    """

    def __init__(self, clock=None, history_size=1000, handler=None,
                 read_timeout=60, etcd_version='3.5.1'):
        if int(history_size) < 1:
            raise ValueError('history_size must be at least 1')
        self._clock = clock if clock is not None else _MonotonicClock()
        self._handler = handlers.get_handler(handler)
        self._lock = self._handler.lock()
        self._cond = self._handler.condition(self._lock)
        self._read_timeout = read_timeout
        try:
            release = tuple(int(p) for p in etcd_version.split('.')[:2])
        except (AttributeError, ValueError):
            raise ValueError('etcd_version must look like "3.5.1", not %r'
                             % (etcd_version,))
        self._dir_update_fails = release >= (3, 5)
        self.base_uri = 'http://fake-etcd:2379'
        # Expiration strings are wall-clock times; TTLs run on the clock.
        self._wall0 = time.time()
        self._clock0 = self._clock.time()

        self._root = _Node('/', None, True, 0, None)
        self._index = 0
        self._history = collections.deque(maxlen=int(history_size))
        self._hist_start = 0
        self._hist_last = 0
        self._watchers = {}
        self._waiting = 0
        self._ttl_heap = []
        self._ttl_seq = itertools.count()

        self._available = True
        self._failures = {}
        self.calls = collections.Counter()

        subscribe = getattr(self._clock, '_subscribe', None)
        if subscribe is not None:
            subscribe(self._clock_advanced)

    # ----------------------------------------------------------- hooks

    @property
    def read_timeout(self):
        """Seconds a watch waits when given no timeout (python-etcd's)."""
        return self._read_timeout

    @property
    def available(self):
        """False while the fake plays an unreachable etcd."""
        return self._available

    @available.setter
    def available(self, value):
        with self._lock:
            if not value:
                # Every open watch is cut at once: it must not get an
                # event written after etcd comes back.
                for watches in self._watchers.values():
                    for watch in watches:
                        watch.cut = watch.removed = True
                self._watchers.clear()
            self._available = bool(value)
            self._cond.notify_all()

    @contextlib.contextmanager
    def outage(self):
        """Make etcd unreachable for the ``with`` block."""
        self.available = False
        try:
            yield self
        finally:
            self.available = True

    def fail_next(self, method, exc=None, times=1):
        """Make the next ``times`` calls of ``method`` raise ``exc``."""
        if method not in _METHODS:
            raise ValueError('no such method: %r' % (method,))
        if times < 1:
            raise ValueError('times must be at least 1')
        with self._lock:
            self._failures.setdefault(method, []).extend([exc] * times)

    def clear_history(self):
        """Forget all past events, as if etcd had moved 1000 events on."""
        with self._lock:
            self._history.clear()
            self._hist_start = self._index + 1
            self._hist_last = self._index

    @property
    def index(self):
        """The current etcd index (after expiring what is due)."""
        with self._lock:
            self._expire_due()
            return self._index

    @property
    def waiting_watches(self):
        """How many watch calls are blocked waiting for an event."""
        return self._waiting

    def wait_for_watches(self, count=1, timeout=10.0):
        """Wait until ``count`` watches are blocked; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._waiting < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def dump(self, path='/'):
        """{key: value} of every key under ``path``, hidden ones included."""
        out = {}
        with self._lock:
            self._expire_due()
            try:
                node = self._internal_get(_clean(path))
            except _V2Error:
                return out
            stack = [node]
            while stack:
                node = stack.pop()
                if node.is_dir:
                    stack.extend(node.children.values())
                else:
                    out[node.path] = node.value
        return out

    # -------------------------------------------------- python-etcd API
    # Argument handling copied from python-etcd 0.4.5's etcd.Client.

    def __contains__(self, key):
        self._enter('__contains__')
        try:
            self.get(key)
            return True
        except etcd.EtcdKeyNotFound:
            return False

    def write(self, key, value, ttl=None, dir=False, append=False,
              **kwdargs):
        """python-etcd's ``write``: set, create, update or compare-and-swap.

        ``prevExist``, ``prevValue``, ``prevIndex`` and ``refresh`` as in
        python-etcd; ``append=True`` POSTs an in-order key.
        """
        self._enter('write')
        key = self._sanitize_key(key)
        params = {}
        if value is not None:
            params['value'] = value
        if ttl is not None:
            params['ttl'] = ttl
        if dir:
            if value:
                raise etcd.EtcdException(
                    'Cannot create a directory with a value')
            params['dir'] = 'true'
        for (k, v) in kwdargs.items():
            if k in _COMPARISON_CONDITIONS:
                if type(v) is bool:
                    params[k] = v and 'true' or 'false'
                else:
                    params[k] = v
        method = append and _POST or _PUT
        return self._api_execute(key, method, params)

    def refresh(self, key, ttl, **kwdargs):
        """Renew ``key``'s TTL without notifying watchers."""
        self._enter('refresh')
        kwdargs['prevExist'] = True
        return self.write(key=key, value=None, ttl=ttl, refresh=True,
                          **kwdargs)

    def update(self, obj):
        """Write back a changed ``EtcdResult`` (prevIndex-guarded)."""
        self._enter('update')
        kwdargs = {'dir': obj.dir, 'ttl': obj.ttl, 'prevExist': True}
        if not obj.dir:
            kwdargs['prevIndex'] = obj.modifiedIndex
        return self.write(obj.key, obj.value, **kwdargs)

    def read(self, key, **kwdargs):
        """python-etcd's ``read``: get, or watch with ``wait=True``.

        Options: ``recursive``, ``sorted``, ``quorum``, ``wait``,
        ``waitIndex``, ``timeout`` (watch only: None means
        ``read_timeout``, 0 means forever).
        """
        self._enter('read')
        key = self._sanitize_key(key)
        params = {}
        for (k, v) in kwdargs.items():
            if k in _READ_OPTIONS:
                if type(v) is bool:
                    params[k] = v and 'true' or 'false'
                elif v is not None:
                    params[k] = v
        timeout = kwdargs.get('timeout', None)
        return self._api_execute(key, _GET, params, timeout=timeout)

    def delete(self, key, recursive=None, dir=None, **kwdargs):
        """python-etcd's ``delete``.

        With ``prevValue`` or ``prevIndex`` it is a compare-and-delete.
        """
        self._enter('delete')
        key = self._sanitize_key(key)
        kwds = {}
        if recursive is not None:
            kwds['recursive'] = recursive and 'true' or 'false'
        if dir is not None:
            kwds['dir'] = dir and 'true' or 'false'
        for k in _DEL_CONDITIONS:
            if k in kwdargs:
                kwds[k] = kwdargs[k]
        return self._api_execute(key, _DELETE, kwds)

    def pop(self, key, recursive=None, dir=None, **kwdargs):
        """Delete ``key`` and return what it held."""
        self._enter('pop')
        return self.delete(key=key, recursive=recursive, dir=dir,
                           **kwdargs)._prev_node

    def test_and_set(self, key, value, prev_value, ttl=None):
        self._enter('test_and_set')
        return self.write(key, value, prevValue=prev_value, ttl=ttl)

    def set(self, key, value, ttl=None):
        self._enter('set')
        return self.write(key, value, ttl=ttl)

    def get(self, key):
        self._enter('get')
        return self.read(key)

    def watch(self, key, index=None, timeout=None, recursive=None):
        """Block until an event on ``key`` at ``index`` or later.

        Returns at once if the history has one; raises
        ``etcd.EtcdWatchTimedOut`` after ``timeout`` seconds and
        ``etcd.EtcdEventIndexCleared`` if ``index`` is older than the
        history.
        """
        self._enter('watch')
        if index:
            return self.read(key, wait=True, waitIndex=index,
                             timeout=timeout, recursive=recursive)
        else:
            return self.read(key, wait=True, timeout=timeout,
                             recursive=recursive)

    def eternal_watch(self, key, index=None, recursive=None):
        """Generator of every event on ``key`` from ``index`` on."""
        self._enter('eternal_watch')
        local_index = index
        while True:
            response = self.watch(key, index=local_index, timeout=0,
                                  recursive=recursive)
            local_index = response.modifiedIndex + 1
            yield response

    @staticmethod
    def _sanitize_key(key):
        if not key.startswith('/'):
            key = '/{}'.format(key)
        return key

    # ------------------------------------------------------- transport

    def _enter(self, method):
        with self._lock:
            self.calls[method] += 1
            queued = self._failures.get(method)
            exc = queued.pop(0) if queued else False
            available = self._available
        if not available or exc is None:
            self._raise_unreachable('')
        if exc is not False:
            raise exc() if isinstance(exc, type) else exc

    def _raise_unreachable(self, path, broken=False):
        if broken:
            cause = urllib3.exceptions.ProtocolError(
                'Connection broken: the fake etcd went away')
        else:
            cause = urllib3.exceptions.MaxRetryError(
                None, self.base_uri + '/v2/keys' + path,
                urllib3.exceptions.NewConnectionError(
                    None, 'Failed to establish a new connection: '
                    '[Errno 111] Connection refused'))
        # Raised while handling the transport error, as python-etcd does,
        # so __context__ is that error.
        try:
            raise cause
        except urllib3.exceptions.HTTPError as e:
            raise etcd.EtcdConnectionFailed(
                'Connection to etcd failed due to %r' % e, cause=e)

    def _api_execute(self, key, method, params, timeout=None):
        # python-etcd's _wrap_request: None means the client's read
        # timeout, 0 means none at all.
        if timeout is None:
            timeout = self._read_timeout
        if timeout == 0:
            timeout = None
        form = {k: _form_value(v) for k, v in params.items()}
        with self._lock:
            if not self._available:
                self._raise_unreachable(key)
            try:
                request = self._parse(method, key, form)
                self._expire_due()
                return self._dispatch(request, timeout)
            except _V2Error as e:
                payload = e.payload
        etcd.EtcdError.handle(payload)

    def _result(self, event, etcd_index, created=False):
        # What python-etcd's _result_from_response builds from etcd's JSON.
        res = {'action': event.action, 'node': _copy(event.node)}
        if event.prev is not None:
            res['prevNode'] = _copy(event.prev)
        result = etcd.EtcdResult(**res)
        if created:
            result.newKey = True
        result.etcd_index = etcd_index
        result.raft_index = etcd_index
        return result

    # ------------------------------------------------- etcd's HTTP layer

    def _parse(self, method, key, form):
        """etcd's parseKeyRequest: same checks, same order, same errors."""
        def uint(name):
            if name not in form:
                return 0
            text = form[name]
            if not _UINT.match(text) or int(text) >= 2 ** 64:
                raise _V2Error(203, 'invalid value for "%s"' % name, 0)
            return int(text)

        def boolean(name, cause=None):
            if name not in form:
                return False
            try:
                return _BOOLS[form[name]]
            except KeyError:
                raise _V2Error(209, cause or 'invalid value for "%s"'
                               % name, 0)

        req = _Request()
        req.method = method
        req.path = _clean(key)
        req.prev_index = uint('prevIndex')
        req.since = uint('waitIndex')
        req.recursive = boolean('recursive')
        req.sorted = boolean('sorted')
        req.wait = boolean('wait')
        req.dir = boolean('dir')
        boolean('quorum')
        boolean('stream')
        if req.wait and method != _GET:
            raise _V2Error(209, '"wait" can only be used with GET requests',
                           0)
        req.prev_value = form.get('prevValue', '')
        if 'prevValue' in form and req.prev_value == '':
            raise _V2Error(201, '"prevValue" cannot be empty', 0)
        boolean('noValueOnSuccess')
        ttl = None
        if form.get('ttl'):
            text = form['ttl']
            if not _UINT.match(text) or int(text) >= 2 ** 64:
                raise _V2Error(202, 'invalid value for "ttl"', 0)
            ttl = int(text)
        req.prev_exist = None
        if 'prevExist' in form:
            req.prev_exist = boolean('prevExist',
                                     'invalid value for prevExist')
        req.refresh = False
        if 'refresh' in form:
            req.refresh = boolean('refresh', 'invalid value for refresh')
            if req.refresh:
                if form.get('value'):
                    raise _V2Error(211, 'A value was provided on a refresh',
                                   0)
                if ttl is None:
                    raise _V2Error(212, 'No TTL value set', 0)
        req.value = form.get('value', '')
        req.expire_at = None if ttl is None else self._clock.time() + ttl
        return req

    def _dispatch(self, req, timeout):
        """etcd's RequestV2.Handle and applierV2store: pick the store op."""
        if req.method == _GET:
            if req.wait:
                return self._watch(req.path, req.recursive, req.since,
                                   timeout)
            return self._get(req.path, req.recursive, req.sorted)
        if req.method == _POST:
            return self._create(req.path, req.dir, req.value, True,
                                req.expire_at)
        if req.method == _DELETE:
            if req.prev_index > 0 or req.prev_value != '':
                return self._compare_and_delete(req.path, req.prev_value,
                                                req.prev_index)
            return self._delete(req.path, req.dir, req.recursive)
        if req.prev_exist is not None:
            if req.prev_exist:
                if req.prev_index == 0 and req.prev_value == '':
                    return self._update(req.path, req.value, req.expire_at,
                                        req.refresh)
                return self._compare_and_swap(
                    req.path, req.prev_value, req.prev_index, req.value,
                    req.expire_at, req.refresh)
            return self._create(req.path, req.dir, req.value, False,
                                req.expire_at)
        if req.prev_index > 0 or req.prev_value != '':
            return self._compare_and_swap(
                req.path, req.prev_value, req.prev_index, req.value,
                req.expire_at, req.refresh)
        return self._set(req.path, req.dir, req.value, req.expire_at,
                         req.refresh)

    # ---------------------------------------------------- etcd's store
    # Each method follows the function of the same name in etcd 3.5's
    # server/etcdserver/api/v2store/store.go; called with the lock held.

    def _error(self, code, cause, index=None):
        return _V2Error(code, cause, self._index if index is None else index)

    def _ttl(self, node, now=None):
        """(expiration, ttl) as etcd shows them.

        ttl is the ceiling of the seconds left (truncated towards zero once
        past), 0 (omitted) for a permanent node.
        """
        if node.expire_at is None:
            return None, 0
        if now is None:
            now = self._clock.time()
        left = int(round((node.expire_at - now) * _NS))
        ttl = abs(left) // _NS * (1 if left >= 0 else -1)
        if left > 0 and left % _NS:
            ttl += 1
        return node.expiration, ttl

    def _repr(self, node, recursive, sorted_, now=None):
        """etcd's node.Repr.

        A directory lists its children only when recursive; hidden children
        are never listed.
        """
        expiration, ttl = self._ttl(node, now)
        if not node.is_dir:
            return _extern(_key(node.path), value=node.value,
                           expiration=expiration, ttl=ttl,
                           modified=node.modified, created=node.created)
        nodes = None
        if recursive:
            nodes = self._list(node, recursive, sorted_)
        return _extern(_key(node.path), is_dir=True, expiration=expiration,
                       ttl=ttl, nodes=nodes, modified=node.modified,
                       created=node.created)

    def _list(self, node, recursive, sorted_):
        nodes = [self._repr(child, recursive, sorted_)
                 for child in node.children.values()
                 if not child.name.startswith('_')]
        if sorted_:
            nodes.sort(key=lambda n: n['key'])
        return nodes

    def _internal_get(self, path):
        node = self._root
        for name in _components(path):
            if not node.is_dir:
                raise self._error(104, _key(node.path))
            child = node.children.get(name)
            if child is None:
                raise self._error(100, _join(node.path, name))
            node = child
        return node

    def _get(self, path, recursive, sorted_):
        node = self._internal_get(path)
        expiration, ttl = self._ttl(node)
        if node.is_dir:
            # A read of a directory lists its children, recursive or not.
            ext = _extern(_key(path), is_dir=True, expiration=expiration,
                          ttl=ttl, nodes=self._list(node, recursive,
                                                    sorted_),
                          modified=node.modified, created=node.created)
        else:
            ext = _extern(_key(path), value=node.value,
                          expiration=expiration, ttl=ttl,
                          modified=node.modified, created=node.created)
        return self._result(_Event('get', path, ext), self._index)

    def _set_ttl(self, node, expire_at):
        node.expire_at = expire_at
        if expire_at is None:
            node.expiration = None
            return
        node.expiration = _rfc3339(self._wall0 + expire_at - self._clock0)
        heapq.heappush(self._ttl_heap,
                       (expire_at, next(self._ttl_seq), node))

    def _internal_create(self, path, is_dir, value, unique, replace,
                         expire_at, action):
        cur_index = self._index
        next_index = cur_index + 1
        if unique:
            path = _clean(path + '/' + '%020d' % next_index)
        if path == '/':
            raise self._error(107, '/')
        parent_path, name = path.rsplit('/', 1)
        parent = self._root
        for part in _components(parent_path):
            child = parent.children.get(part)
            if child is None:
                # Missing parents are made on the way (etcd's checkDir),
                # created at the index of the write that makes them.
                child = _Node(_join(parent.path, part), None, True,
                              next_index, parent)
                parent.children[part] = child
            elif not child.is_dir:
                raise self._error(104, child.path)
            parent = child
        prev = None
        node = parent.children.get(name)
        if node is not None:
            if not replace:
                raise self._error(105, path)
            if node.is_dir:
                raise self._error(102, path)
            prev = self._repr(node, False, False)
            self._remove(node, False, False, None)
        node = _Node(path, None if is_dir else value, is_dir, next_index,
                     parent)
        parent.children[name] = node
        self._set_ttl(node, expire_at)
        expiration, ttl = self._ttl(node)
        ext = _extern(path, value=node.value, is_dir=is_dir,
                      expiration=expiration, ttl=ttl, modified=next_index,
                      created=next_index)
        self._index = next_index
        event = _Event(action, path, ext)
        # Set puts its own prevNode in (see _set); this is the replaced one.
        return event, prev

    def _create(self, path, is_dir, value, unique, expire_at):
        event, _ = self._internal_create(path, is_dir, value, unique, False,
                                         expire_at, 'create')
        self._notify(event)
        return self._result(event, self._index, created=True)

    def _set(self, path, is_dir, value, expire_at, refresh):
        try:
            old = self._internal_get(path)
        except _V2Error as e:
            if e.code != 100 or refresh:
                raise
            old = None
        if refresh:
            value = old.value or ''
        prev = None
        if old is not None and not old.is_dir:
            prev = self._repr(old, False, False)
        event, _ = self._internal_create(path, is_dir, value, False, True,
                                         expire_at, 'set')
        event.prev = prev
        self._publish(event, refresh)
        return self._result(event, self._index, created=prev is None)

    def _compare(self, node, prev_value, prev_index):
        index_match = prev_index == 0 or node.modified == prev_index
        value_match = prev_value == '' or node.value == prev_value
        if index_match and value_match:
            return None
        if index_match:
            return '[%s != %s]' % (prev_value, node.value)
        if value_match:
            return '[%s != %s]' % (prev_index, node.modified)
        return '[%s != %s] [%s != %s]' % (prev_value, node.value,
                                          prev_index, node.modified)

    def _compare_and_swap(self, path, prev_value, prev_index, value,
                          expire_at, refresh):
        if path == '/':
            raise self._error(107, '/')
        node = self._internal_get(path)
        if node.is_dir:
            raise self._error(102, _key(path))
        cause = self._compare(node, prev_value, prev_index)
        if cause is not None:
            raise self._error(101, cause)
        if refresh:
            value = node.value
        self._index += 1
        prev = self._repr(node, False, False)
        node.value = value
        node.modified = self._index
        self._set_ttl(node, expire_at)
        expiration, ttl = self._ttl(node)
        event = _Event('compareAndSwap', path, _extern(
            path, value=value, expiration=expiration, ttl=ttl,
            modified=self._index, created=node.created), prev)
        self._publish(event, refresh)
        return self._result(event, self._index)

    def _publish(self, event, refresh):
        if refresh:
            # Refreshes bump the index and take a place in the history,
            # but no watch ever sees them.
            event.refresh = True
            self._add_history(event)
        else:
            self._notify(event)

    def _update(self, path, value, expire_at, refresh):
        if path == '/':
            raise self._error(107, '/')
        node = self._internal_get(path)
        if node.is_dir and value:
            raise self._error(102, path)
        if node.is_dir and self._dir_update_fails:
            # etcd 3.5 fails any update of a directory here (node.Write
            # refuses a directory and Update wraps that in a plain error,
            # which the HTTP layer turns into a 300 with the untrimmed
            # store path), without touching the index.
            raise _V2Error(300, 'nodePath /1%s : Not a file ()' % path, 0)
        if refresh or node.is_dir:
            value = node.value
        next_index = self._index + 1
        prev = self._repr(node, False, False)
        if not node.is_dir:
            # etcd 3.4 updates a directory's TTL only: its value stays
            # empty and its modifiedIndex where it was.
            node.value = value
            node.modified = next_index
        self._set_ttl(node, expire_at)
        expiration, ttl = self._ttl(node)
        event = _Event('update', path, _extern(
            path, value=value, is_dir=node.is_dir, expiration=expiration,
            ttl=ttl, modified=next_index, created=node.created), prev)
        self._index = next_index
        self._publish(event, refresh)
        return self._result(event, self._index)

    def _delete(self, path, is_dir, recursive):
        if path == '/':
            raise self._error(107, '/')
        if recursive:
            is_dir = True
        node = self._internal_get(path)
        next_index = self._index + 1
        event = _Event('delete', path, _extern(
            path, is_dir=node.is_dir, modified=next_index,
            created=node.created), self._repr(node, False, False))
        self._remove(node, is_dir, recursive, self._deleted_callback(event))
        self._index = next_index
        self._notify(event)
        return self._result(event, self._index)

    def _compare_and_delete(self, path, prev_value, prev_index):
        node = self._internal_get(path)
        if node.is_dir:
            raise self._error(102, _key(path))
        cause = self._compare(node, prev_value, prev_index)
        if cause is not None:
            raise self._error(101, cause)
        self._index += 1
        event = _Event('compareAndDelete', path, _extern(
            path, modified=self._index, created=node.created),
            self._repr(node, False, False))
        self._remove(node, False, False, self._deleted_callback(event))
        self._notify(event)
        return self._result(event, self._index)

    def _remove(self, node, is_dir, recursive, callback):
        """etcd's node.Remove.

        Checks first, then removes the subtree, calling ``callback(path)``
        for every node removed.
        """
        if node.is_dir:
            if not is_dir:
                raise self._error(102, _key(node.path))
            if node.children and not recursive:
                raise self._error(108, _key(node.path))
            for child in list(node.children.values()):
                self._remove(child, True, True, callback)
        parent = node.parent
        if parent is not None and parent.children.get(node.name) is node:
            del parent.children[node.name]
            node.alive = False
            if callback is not None:
                callback(node.path)

    def _expire_due(self):
        """etcd's DeleteExpiredKeys: one 'expire' event per expired node."""
        now = self._clock.time()
        heap = self._ttl_heap
        while heap:
            expire_at, _, node = heap[0]
            if not node.alive or node.expire_at != expire_at:
                heapq.heappop(heap)     # superseded or removed
                continue
            if expire_at > now:
                break
            heapq.heappop(heap)
            self._index += 1
            # etcd shows the expired node as it was when it expired (its
            # sync runs within 500 ms, so the ttl left rounds to 0).
            prev = self._repr(node, False, False, now=expire_at)
            event = _Event('expire', node.path, _extern(
                node.path, is_dir=node.is_dir, modified=self._index,
                created=node.created), prev)
            self._remove(node, True, True, self._deleted_callback(event))
            self._notify(event)

    def _next_expiry(self):
        for expire_at, _, node in self._ttl_heap:
            # Stale entries only make a watch wake early and look again.
            return expire_at
        return None

    def _clock_advanced(self):
        with self._lock:
            self._expire_due()

    # ---------------------------------------------- history and watchers
    # etcd's event_history.go and watcher_hub.go.

    def _add_history(self, event):
        self._history.append(event)
        self._hist_last = event.index
        self._hist_start = self._history[0].index

    def _scan(self, key, recursive, index):
        if index < self._hist_start:
            raise self._error(401, 'the requested history has been cleared'
                              ' [%d/%d]' % (self._hist_start, index))
        if index > self._hist_last:
            return None
        prefix = key if key.endswith('/') else key + '/'
        for event in itertools.islice(self._history,
                                      index - self._hist_start, None):
            if event.refresh:
                continue
            ok = event.path == key
            if recursive:
                ok = ok or event.path.startswith(prefix)
            if (event.action in ('delete', 'expire') and
                    event.prev is not None and event.prev.get('dir')):
                # A plain string prefix, as etcd has it: deleting /a/b is
                # found by a watch on /a/bc too (live watches differ).
                ok = ok or key.startswith(event.path)
            if ok:
                return event
        return None

    def _notify(self, event):
        """Record ``event`` and hand it to the watches waiting for it."""
        self._add_history(event)
        path = '/'
        self._notify_watchers(event, path, False)
        for part in _components(event.path):
            path = _join(path, part)
            self._notify_watchers(event, path, False)

    def _deleted_callback(self, event):
        def callback(path):
            # A removed node's own watchers hear of it, recursive or not.
            self._notify_watchers(event, path, True)
        return callback

    def _notify_watchers(self, event, path, deleted):
        watches = self._watchers.get(path)
        if not watches:
            return
        for watch in list(watches):
            original = event.path == path
            if not (original or not _is_hidden(path, event.path)):
                continue
            if ((watch.recursive or original or deleted) and
                    event.index >= watch.since):
                watch.event = event
                watch.removed = True
                watches.remove(watch)
        if not watches:
            del self._watchers[path]
        self._cond.notify_all()

    def _watch(self, key, recursive, since, timeout):
        start_index = self._index
        if since == 0:
            since = start_index + 1
        event = self._scan(key, recursive, since)
        if event is not None:
            # etcd answers with its index when the watch began (the
            # X-Etcd-Index header), not the index of the event.
            return self._result(event, start_index)
        watch = _Watch(key, recursive, since)
        self._watchers.setdefault(key, []).append(watch)
        self._waiting += 1
        self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while watch.event is None:
                if watch.cut:
                    self._raise_unreachable(key, broken=True)
                wait = None
                if deadline is not None:
                    wait = deadline - time.monotonic()
                    if wait <= 0:
                        self._raise_timed_out(key, timeout)
                expiry = self._next_expiry()
                if expiry is not None:
                    # Nobody else expires keys on a real clock: wake up
                    # when the next one is due.
                    due = max(0.0, expiry - self._clock.time())
                    wait = due if wait is None else min(wait, due)
                self._cond.wait(wait)
                self._expire_due()
        finally:
            self._waiting -= 1
            if not watch.removed:
                watches = self._watchers.get(key, [])
                watches.remove(watch)
                if not watches:
                    self._watchers.pop(key, None)
        return self._result(watch.event, start_index)

    def _raise_timed_out(self, key, timeout):
        cause = urllib3.exceptions.ReadTimeoutError(
            None, self.base_uri + '/v2/keys' + key,
            'Read timed out. (read timeout=%s)' % (timeout,))
        try:
            raise cause
        except urllib3.exceptions.ReadTimeoutError as e:
            raise etcd.EtcdWatchTimedOut('Watch timed out: %r' % e, cause=e)

    def __repr__(self):
        return '<FakeEtcdClient index=%d>' % self._index
