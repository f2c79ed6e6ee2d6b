"""The sans-IO model of an etcd 3.5 member, answering the JSON gateway.

:class:`FakeEtcd3` takes a request (method, path, body bytes, headers)
and gives an :class:`Answer` (status, headers, body bytes) or, for
``/v3/watch``, a :class:`WatchStream` that yields gateway watch messages
as they happen.  It holds no socket and starts no thread: the transports
in :mod:`etcdwatch.testing.fake_v3.transport` carry its answers.

Time is a clock the test moves (``advance``): leases expire on it (each
expired lease deleting its keys in one revision of its own, as etcd's
revoke does), auth tokens time out on it, and watches that asked for
progress notifications get one every ``progress_interval`` seconds of it.
"""

import collections
import contextlib
import json
import threading

from etcdwatch.testing.fake import FakeClock
from etcdwatch.testing.fake_v3 import auth as auth_mod
from etcdwatch.testing.fake_v3 import codec
from etcdwatch.testing.fake_v3 import errors

ETCD_VERSION = '3.5.1'
CLUSTER_VERSION = '3.5.0'
MAX_TXN_OPS = 128
MAX_LEASE_TTL = 9000000000
# Revisions a catching-up watch is sent in one message, at most (etcd's
# watchBatchMaxRevs).
WATCH_BATCH_REVS = 1000

_SORT_ORDERS = ['NONE', 'ASCEND', 'DESCEND']
_SORT_TARGETS = ['KEY', 'VERSION', 'CREATE', 'MOD', 'VALUE']
_COMPARE_RESULTS = ['EQUAL', 'GREATER', 'LESS', 'NOT_EQUAL']
_COMPARE_TARGETS = ['VERSION', 'CREATE', 'MOD', 'VALUE', 'LEASE']
_FILTERS = ['NOPUT', 'NODELETE']

_JSON_HEADERS = (('Access-Control-Allow-Headers',
                  'accept, content-type, authorization'),
                 ('Access-Control-Allow-Methods',
                  'POST, GET, OPTIONS, PUT, DELETE'),
                 ('Access-Control-Allow-Origin', '*'),
                 ('Content-Type', 'application/json'))
_GRPC_HEADER = ('Grpc-Metadata-Content-Type', 'application/grpc')
#: The headers of a watch answer (streamed, chunked on the wire).
STREAM_HEADERS = list(_JSON_HEADERS) + [_GRPC_HEADER,
                                        ('Transfer-Encoding', 'chunked')]

PUT, DELETE = 'PUT', 'DELETE'


class KV(object):
    """One version of a key; ``version == 0`` marks its deletion."""

    __slots__ = ('key', 'value', 'create', 'mod', 'version', 'lease')

    def __init__(self, key, value, create, mod, version, lease):
        self.key = key
        self.value = value
        self.create = create
        self.mod = mod
        self.version = version
        self.lease = lease

    def json(self, keys_only=False):
        out = {'key': codec.b64(self.key)}
        codec.put_int(out, 'create_revision', self.create)
        codec.put_int(out, 'mod_revision', self.mod)
        codec.put_int(out, 'version', self.version)
        if self.value and not keys_only:
            out['value'] = codec.b64(self.value)
        codec.put_int(out, 'lease', self.lease)
        return out

    def __repr__(self):
        return '<KV %r=%r mod %d v%d>' % (self.key, self.value, self.mod,
                                          self.version)


class Answer(object):
    """A complete HTTP answer: ``status``, ``headers`` (list), ``body``."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    @classmethod
    def json(cls, obj, status=200, newline=False):
        headers = list(_JSON_HEADERS)
        if status == 200:
            headers.append(_GRPC_HEADER)
        body = _dumps(obj) + (b'\n' if newline else b'')
        return cls(status, headers, body)

    @classmethod
    def error(cls, exc):
        return cls.json(exc.body(), exc.http_status)

    def __repr__(self):
        return '<Answer %d %r>' % (self.status, self.body[:80])


def _dumps(obj):
    return json.dumps(obj, separators=(',', ':')).encode('utf-8')


class _Lease(object):
    __slots__ = ('id', 'ttl', 'expiry', 'keys')

    def __init__(self, ident, ttl, expiry):
        self.id = ident
        self.ttl = ttl
        self.expiry = expiry
        self.keys = set()


def _range_of(key, range_end):
    """A predicate for the keys of a request's key and range_end."""
    if not range_end:
        return lambda k: k == key
    if range_end == b'\x00':
        return lambda k: k >= key
    return lambda k: key <= k < range_end


class _Watcher(object):
    __slots__ = ('id', 'matches', 'prev_kv', 'drop', 'progress_notify',
                 'next_rev')

    def __init__(self, ident, matches, prev_kv, drop, progress_notify):
        self.id = ident
        self.matches = matches
        self.prev_kv = prev_kv
        self.drop = drop
        self.progress_notify = progress_notify
        self.next_rev = 0


class WatchStream(object):
    """One ``/v3/watch`` stream: its watches and the messages for it.

    :meth:`next_message` gives each message (bytes, one JSON object and a
    newline) in order.  The stream ends (:meth:`next_message` returns
    b'') only when :meth:`close` is called: by the client going away, or
    by :meth:`FakeEtcd3.close_streams`.  Cancelling a watch leaves the
    stream open, as on etcd.  Thread-safe.
    """

    def __init__(self, server, token):
        self._server = server
        self.token = token
        self._messages = collections.deque()
        self._cond = threading.Condition()
        self._listeners = []
        self.closed = False
        self.watchers = {}
        self._next_id = 0

    def _push(self, result):
        with self._cond:
            if self.closed:
                return
            self._messages.append(_dumps({'result': result}) + b'\n')
            self._cond.notify_all()
            listeners = list(self._listeners)
        self._wake(listeners)

    @staticmethod
    def _wake(listeners):
        for listener in listeners:
            try:
                listener()
            except Exception:  # noqa: a reader gone (its loop closed)
                pass

    def add_listener(self, callback):
        """Call ``callback()`` (from any thread) when a message arrives.

        Also at the end of the stream.  An exception it raises is ignored:
        a reader that went away must not fail the write that woke it.
        """
        with self._cond:
            self._listeners.append(callback)

    def remove_listener(self, callback):
        with self._cond:
            if callback in self._listeners:
                self._listeners.remove(callback)

    def next_message(self, timeout=None):
        """The next message; None if ``timeout`` seconds pass; b'' at end.

        ``timeout`` is real time (None: wait for ever, 0: do not wait).
        """
        with self._cond:
            if not self._messages and not self.closed:
                if timeout == 0:
                    return None
                self._cond.wait_for(
                    lambda: self._messages or self.closed, timeout)
            if self._messages:
                return self._messages.popleft()
            if self.closed:
                return b''
            return None

    def pending(self):
        """How many messages wait to be read."""
        with self._cond:
            return len(self._messages)

    def send(self, body):
        """Handle more requests of the stream (bytes of JSON objects)."""
        self._server._stream_requests(self, body)

    def close(self):
        """End the stream: its watches are cancelled, readers see the end."""
        self._server._drop_stream(self)
        with self._cond:
            self.closed = True
            self._messages.clear()
            self._cond.notify_all()
            listeners = list(self._listeners)
        self._wake(listeners)

    def __repr__(self):
        return '<WatchStream %d watches%s>' % (
            len(self.watchers), ', closed' if self.closed else '')


class FakeEtcd3(object):
    """An in-memory etcd 3.5 member behind its JSON gateway.

    :param clock: a :class:`etcdwatch.testing.FakeClock` (a new one by
        default); :meth:`advance` moves it.
    :param cluster_id, member_id, raft_term: what every header says.
    :param min_lease_ttl: a grant asking for less gets this (a one-member
        etcd with default timing gives 2 s).
    :param token_ttl: idle lifetime of auth tokens (``--auth-token-ttl``).
    :param progress_interval: seconds of the clock between progress
        notifications to watches that asked for them (etcd: 10 minutes).

    Revisions start at 1, as on a new etcd.  Thread-safe: one lock guards
    the store; watch messages are queued on their streams.
    """

    def __init__(self, clock=None, cluster_id=14841639068965178418,
                 member_id=10276657743932975437, raft_term=2,
                 min_lease_ttl=2, token_ttl=300, progress_interval=600,
                 seed=None):
        self.clock = clock if clock is not None else FakeClock()
        self.cluster_id = cluster_id
        self.member_id = member_id
        self.raft_term = raft_term
        self.min_lease_ttl = min_lease_ttl
        self.progress_interval = progress_interval
        self._lock = threading.RLock()
        self.revision = 1
        self.compact_revision = 0
        self._history = {}      # key -> [KV], oldest first
        self._live = {}         # key -> KV
        self._events = []       # (revision, [(type, kv, prev)]), ascending
        self._leases = {}
        self._next_lease = 0x694d7a9c00000000 | (member_id & 0xffff) << 16
        self._streams = []
        self.auth = auth_mod.AuthStore(self.clock, token_ttl, seed)
        self._last_progress = self.clock.time()
        self._available = True
        self.clock._subscribe(self._on_tick)

    # -- outages

    @property
    def available(self):
        """False while etcd is unreachable: see :meth:`outage`."""
        return self._available

    @available.setter
    def available(self, value):
        self._available = bool(value)
        if not value:
            self.close_streams()

    @contextlib.contextmanager
    def outage(self):
        """Make etcd unreachable for the ``with`` block.

        The transports refuse every request as a closed port would
        (``requests.exceptions.ConnectionError``, ``httpx.ConnectError``)
        and every open watch stream ends.  The store carries on: leases
        still expire when the clock moves.
        """
        self.available = False
        try:
            yield self
        finally:
            self.available = True

    # -- the clock

    def advance(self, seconds):
        """Move the clock; expire leases and tokens; send progress due."""
        self.clock.advance(seconds)

    def _on_tick(self):
        with self._lock:
            now = self.clock.time()
            due = sorted((lease.expiry, lease.id)
                         for lease in self._leases.values()
                         if lease.expiry <= now)
            for _, ident in due:
                self._revoke(ident)
            self.auth.expire_tokens()
            if (self.progress_interval and
                    now - self._last_progress >= self.progress_interval):
                self._last_progress = now
                self._progress(only_asked=True)

    # -- answers

    def header(self, revision=None):
        out = {}
        codec.put_int(out, 'cluster_id', self.cluster_id)
        codec.put_int(out, 'member_id', self.member_id)
        codec.put_int(out, 'revision',
                      self.revision if revision is None else revision)
        codec.put_int(out, 'raft_term', self.raft_term)
        return out

    def handle(self, method, path, body=b'', headers=None):
        """Answer one request; a :class:`WatchStream` for ``/v3/watch``."""
        headers = {k.lower(): v for k, v in (headers or {}).items()}
        token = headers.get('authorization') or headers.get('token')
        path = path.split('?', 1)[0]
        if path in ('/version', '/health'):
            if method not in ('GET', 'HEAD'):
                return _method_not_allowed()
            if path == '/version':
                return Answer.json({'etcdserver': ETCD_VERSION,
                                    'etcdcluster': CLUSTER_VERSION})
            return Answer.json({'health': 'true', 'reason': ''})
        route = _ROUTES.get(path)
        if route is None and path != '/v3/watch':
            return Answer(404, [('Content-Type',
                                 'text/plain; charset=utf-8')],
                          b'Not Found\n')
        if method != 'POST':
            return _method_not_allowed()
        if path == '/v3/watch':
            return self._open_watch(body, token)
        try:
            request = _loads(body, errors.INVALID_ARGUMENT)
            handler, newline = route
            with self._lock:
                result = handler(self, request, token)
        except errors.GatewayError as e:
            return Answer.error(e)
        return Answer.json(result, newline=newline)

    # -- reading

    def _check_rev(self, rev):
        if rev > self.revision:
            raise errors.FUTURE_REV()
        if rev and rev < self.compact_revision:
            raise errors.COMPACTED()

    def _kvs_at(self, matches, rev):
        """KVs (key order) of the matching keys at ``rev`` (0: now)."""
        out = []
        if not rev or rev == self.revision:
            for key in sorted(k for k in self._live if matches(k)):
                out.append(self._live[key])
            return out
        for key in sorted(k for k in self._history if matches(k)):
            found = None
            for kv in self._history[key]:
                if kv.mod > rev:
                    break
                found = kv
            if found is not None and found.version:
                out.append(found)
        return out

    def _range(self, req, rev_now):
        key = codec.get_bytes(req, 'key')
        range_end = codec.get_bytes(req, 'range_end')
        limit = codec.get_int(req, 'limit')
        rev = codec.get_int(req, 'revision')
        order = codec.get_enum(req, 'sort_order', _SORT_ORDERS,
                               'etcdserverpb.RangeRequest.SortOrder')
        target = codec.get_enum(req, 'sort_target', _SORT_TARGETS,
                                'etcdserverpb.RangeRequest.SortTarget')
        keys_only = codec.get_bool(req, 'keys_only')
        count_only = codec.get_bool(req, 'count_only')
        bounds = [codec.get_int(req, name) for name in (
            'min_mod_revision', 'max_mod_revision', 'min_create_revision',
            'max_create_revision')]
        self._check_rev(rev)
        kvs = self._kvs_at(_range_of(key, range_end), rev)
        count = len(kvs)
        fetch = limit
        if order or any(bounds):
            fetch = 0
        if fetch > 0:
            kvs = kvs[:fetch + 1]
        if count_only:
            kvs = []
        min_mod, max_mod, min_create, max_create = bounds
        kvs = [kv for kv in kvs
               if (not min_mod or kv.mod >= min_mod) and
               (not max_mod or kv.mod <= max_mod) and
               (not min_create or kv.create >= min_create) and
               (not max_create or kv.create <= max_create)]
        if target and not order:
            order = 1
        if order and not (order == 1 and target == 0):
            field = [lambda kv: kv.key, lambda kv: kv.version,
                     lambda kv: kv.create, lambda kv: kv.mod,
                     lambda kv: kv.value][target]
            kvs = sorted(kvs, key=field, reverse=(order == 2))
        out = {'header': self.header(rev_now)}
        more = False
        if limit > 0 and len(kvs) > limit:
            kvs = kvs[:limit]
            more = True
        if kvs:
            out['kvs'] = [kv.json(keys_only) for kv in kvs]
        if more:
            out['more'] = True
        codec.put_int(out, 'count', count)
        return out

    # -- writing (under the lock; a write batch is one revision)

    def _begin(self):
        return _Batch(self)

    def _put(self, batch, req):
        key = codec.get_bytes(req, 'key')
        value = codec.get_bytes(req, 'value')
        lease = codec.get_int(req, 'lease')
        prev_kv = codec.get_bool(req, 'prev_kv')
        ignore_value = codec.get_bool(req, 'ignore_value')
        ignore_lease = codec.get_bool(req, 'ignore_lease')
        prev = self._live.get(key)
        if ignore_value:
            value = prev.value
        if ignore_lease:
            lease = prev.lease
        rev = batch.put(key, value, lease, prev)
        out = {'header': {'revision': str(rev)}}
        if prev_kv and prev is not None:
            out['prev_kv'] = prev.json()
        return out

    def _check_put(self, req):
        key = codec.get_bytes(req, 'key')
        if not key:
            raise errors.EMPTY_KEY()
        if codec.get_bool(req, 'ignore_value') and req.get('value'):
            raise errors.VALUE_PROVIDED()
        if codec.get_bool(req, 'ignore_lease') and codec.get_int(
                req, 'lease'):
            raise errors.LEASE_PROVIDED()

    def _check_put_state(self, req):
        key = codec.get_bytes(req, 'key')
        lease = codec.get_int(req, 'lease')
        if (codec.get_bool(req, 'ignore_value') or
                codec.get_bool(req, 'ignore_lease')) and (
                    key not in self._live):
            raise errors.KEY_NOT_FOUND()
        if lease and lease not in self._leases:
            raise errors.LEASE_NOT_FOUND()

    def _delete(self, batch, req):
        key = codec.get_bytes(req, 'key')
        range_end = codec.get_bytes(req, 'range_end')
        prev_kv = codec.get_bool(req, 'prev_kv')
        matches = _range_of(key, range_end)
        gone = [self._live[k] for k in sorted(self._live) if matches(k)]
        for kv in gone:
            batch.delete(kv)
        out = {'header': {'revision': str(batch.view_revision())}}
        codec.put_int(out, 'deleted', len(gone))
        if prev_kv and gone:
            out['prev_kvs'] = [kv.json() for kv in gone]
        return out

    # -- handlers: each takes (request, token), runs under the lock

    def _user(self, token):
        return self.auth.user_of(token)

    def do_range(self, req, token):
        if not codec.get_bytes(req, 'key'):
            raise errors.EMPTY_KEY()
        user = self._user(token)
        self.auth.check(user, reads=[auth_mod.key_interval(
            codec.get_bytes(req, 'key'),
            codec.get_bytes(req, 'range_end') or None)])
        return self._range(req, None)

    def do_put(self, req, token):
        self._check_put(req)
        user = self._user(token)
        interval = auth_mod.key_interval(codec.get_bytes(req, 'key'), None)
        self.auth.check(user, writes=[interval], reads=(
            [interval] if codec.get_bool(req, 'prev_kv') else []))
        self._check_put_state(req)
        batch = self._begin()
        out = self._put(batch, req)
        batch.commit()
        out['header'] = self.header()
        return out

    def do_deleterange(self, req, token):
        if not codec.get_bytes(req, 'key'):
            raise errors.EMPTY_KEY()
        user = self._user(token)
        interval = auth_mod.key_interval(
            codec.get_bytes(req, 'key'),
            codec.get_bytes(req, 'range_end') or None)
        self.auth.check(user, writes=[interval], reads=(
            [interval] if codec.get_bool(req, 'prev_kv') else []))
        batch = self._begin()
        out = self._delete(batch, req)
        batch.commit()
        out['header'] = self.header()
        return out

    def do_txn(self, req, token):
        _check_txn(req)
        user = self._user(token)
        reads, writes = [], []
        _txn_intervals(req, reads, writes)
        self.auth.check(user, reads=reads, writes=writes)
        path = self._txn_path(req)
        self._check_txn_state(req, path)
        batch = self._begin()
        out = self._txn(batch, req, path)
        batch.commit()
        out['header'] = self.header()
        return out

    def _txn_path(self, req):
        """[succeeded, [path of nested txns]] taken by ``req`` now."""
        ok = all(self._compare(c) for c in codec.get_list(req, 'compare'))
        ops = codec.get_list(req, 'success' if ok else 'failure')
        nested = [self._txn_path(codec.get_dict(op, 'request_txn'))
                  for op in ops if 'request_txn' in op]
        return [ok, nested]

    def _check_txn_state(self, req, path):
        ok, nested = path
        nested = iter(nested)
        for op in codec.get_list(req, 'success' if ok else 'failure'):
            if 'request_put' in op:
                self._check_put_state(codec.get_dict(op, 'request_put'))
            elif 'request_txn' in op:
                self._check_txn_state(codec.get_dict(op, 'request_txn'),
                                      next(nested))

    def _compare(self, c):
        key = codec.get_bytes(c, 'key')
        range_end = codec.get_bytes(c, 'range_end')
        result = codec.get_enum(c, 'result', _COMPARE_RESULTS,
                                'etcdserverpb.Compare.CompareResult')
        target = codec.get_enum(c, 'target', _COMPARE_TARGETS,
                                'etcdserverpb.Compare.CompareTarget')
        matches = _range_of(key, range_end)
        kvs = [self._live[k] for k in sorted(self._live) if matches(k)]
        if not kvs:
            if target == 3:
                return False
            kvs = [KV(key, b'', 0, 0, 0, 0)]
        for kv in kvs:
            if target == 3:
                mine, theirs = kv.value, codec.get_bytes(c, 'value')
            else:
                field = ['version', 'create_revision', 'mod_revision', None,
                         'lease'][target]
                mine = [kv.version, kv.create, kv.mod, None,
                        kv.lease][target]
                theirs = codec.get_int(c, field)
            diff = (mine > theirs) - (mine < theirs)
            if not [diff == 0, diff > 0, diff < 0, diff != 0][result]:
                return False
        return True

    def _txn(self, batch, req, path):
        ok, nested = path
        nested = iter(nested)
        responses = []
        for op in codec.get_list(req, 'success' if ok else 'failure'):
            if 'request_range' in op:
                rr = self._range(codec.get_dict(op, 'request_range'),
                                 batch.view_revision())
                rr['header'] = {'revision': rr['header']['revision']}
                responses.append({'response_range': rr})
            elif 'request_put' in op:
                responses.append({'response_put': self._put(
                    batch, codec.get_dict(op, 'request_put'))})
            elif 'request_delete_range' in op:
                responses.append({'response_delete_range': self._delete(
                    batch, codec.get_dict(op, 'request_delete_range'))})
            elif 'request_txn' in op:
                inner = self._txn(batch, codec.get_dict(op, 'request_txn'),
                                  next(nested))
                inner['header'] = {}
                responses.append({'response_txn': inner})
        out = {'header': {}}
        if ok:
            out['succeeded'] = True
        if responses:
            out['responses'] = responses
        return out

    def do_compaction(self, req, token):
        rev = codec.get_int(req, 'revision')
        self._user(token)
        if rev <= self.compact_revision:
            raise errors.COMPACTED()
        if rev > self.revision:
            raise errors.FUTURE_REV()
        self.compact_revision = rev
        for key in list(self._history):
            versions = self._history[key]
            keep = 0
            for i, kv in enumerate(versions):
                if kv.mod <= rev:
                    keep = i
            versions = versions[keep:]
            if versions and versions[0].mod <= rev and not (
                    versions[0].version):
                versions = versions[1:]
            if versions:
                self._history[key] = versions
            else:
                del self._history[key]
        self._events = [e for e in self._events if e[0] >= rev]
        return {'header': self.header()}

    # -- leases

    def do_lease_grant(self, req, token):
        ttl = codec.get_int(req, 'TTL')
        ident = codec.get_int(req, 'ID')
        self._user(token)
        if ttl > MAX_LEASE_TTL:
            raise errors.LEASE_TTL_TOO_LARGE()
        if ident in self._leases:
            raise errors.LEASE_EXISTS()
        if not ident:
            ident = self._next_lease
            while ident in self._leases:
                ident += 1
            self._next_lease = ident + 1
        ttl = max(ttl, self.min_lease_ttl)
        self._leases[ident] = _Lease(ident, ttl, self.clock.time() + ttl)
        return {'header': self.header(), 'ID': str(ident), 'TTL': str(ttl)}

    def do_lease_revoke(self, req, token):
        ident = codec.get_int(req, 'ID')
        user = self._user(token)
        lease = self._leases.get(ident)
        if lease is None:
            raise errors.LEASE_NOT_FOUND()
        self.auth.check(user, writes=[auth_mod.key_interval(k, None)
                                      for k in lease.keys])
        self._revoke(ident)
        return {'header': self.header()}

    def _revoke(self, ident):
        lease = self._leases.pop(ident)
        batch = self._begin()
        for key in sorted(lease.keys):
            kv = self._live.get(key)
            if kv is not None:
                batch.delete(kv)
        batch.commit()

    def do_lease_keepalive(self, req, token):
        ident = codec.get_int(req, 'ID')
        out = {'header': self.header(), 'ID': str(ident)}
        lease = self._leases.get(ident)
        if lease is not None:
            lease.expiry = self.clock.time() + lease.ttl
            out['TTL'] = str(lease.ttl)
        return {'result': out}

    def do_lease_timetolive(self, req, token):
        ident = codec.get_int(req, 'ID')
        keys = codec.get_bool(req, 'keys')
        lease = self._leases.get(ident)
        out = {'header': self.header(), 'ID': str(ident)}
        if lease is None:
            out['TTL'] = '-1'
            return out
        remaining = int(max(0.0, lease.expiry - self.clock.time()))
        codec.put_int(out, 'TTL', remaining)
        out['grantedTTL'] = str(lease.ttl)
        if keys and lease.keys:
            out['keys'] = [codec.b64(k) for k in sorted(lease.keys)]
        return out

    def do_lease_leases(self, req, token):
        self._user(token)
        out = {'header': self.header()}
        if self._leases:
            out['leases'] = [{'ID': str(i)} for i in sorted(self._leases)]
        return out

    # -- cluster and maintenance

    def do_status(self, req, token):
        return {'header': self.header(), 'version': ETCD_VERSION,
                'dbSize': '20480', 'leader': str(self.member_id),
                'raftIndex': str(self.revision + 20),
                'raftTerm': str(self.raft_term),
                'raftAppliedIndex': str(self.revision + 20),
                'dbSizeInUse': '16384'}

    def do_member_list(self, req, token):
        return {'header': self.header(), 'members': [{
            'ID': str(self.member_id), 'name': 'fake',
            'peerURLs': ['http://127.0.0.1:2380'],
            'clientURLs': ['http://127.0.0.1:2379']}]}

    # -- auth

    def _admin(self, token):
        self.auth.check_admin(self._user(token))

    def do_auth_enable(self, req, token):
        self.auth.enable()
        return {'header': self.header()}

    def do_auth_disable(self, req, token):
        self._admin(token)
        self.auth.disable()
        return {'header': self.header()}

    def do_auth_status(self, req, token):
        out = {'header': self.header()}
        if self.auth.enabled:
            out['enabled'] = True
        codec.put_int(out, 'authRevision', self.auth.revision)
        return out

    def do_authenticate(self, req, token):
        name = req.get('name') or ''
        password = req.get('password') or ''
        token = self.auth.authenticate(name, password)
        return {'header': self.header(), 'token': token}

    def _admin_call(self, token, call, *args):
        self._admin(token)
        call(*args)
        return {'header': self.header()}

    def do_user_add(self, req, token):
        return self._admin_call(token, self.auth.user_add,
                                req.get('name') or '',
                                req.get('password') or '')

    def do_user_delete(self, req, token):
        return self._admin_call(token, self.auth.user_delete,
                                req.get('name') or '')

    def do_user_changepw(self, req, token):
        return self._admin_call(token, self.auth.user_change_password,
                                req.get('name') or '',
                                req.get('password') or '')

    def do_user_grant(self, req, token):
        return self._admin_call(token, self.auth.user_grant_role,
                                req.get('user') or '', req.get('role') or '')

    def do_user_revoke(self, req, token):
        return self._admin_call(token, self.auth.user_revoke_role,
                                req.get('name') or '', req.get('role') or '')

    def do_user_get(self, req, token):
        self._admin(token)
        roles = self.auth.user_get(req.get('name') or '')
        out = {'header': self.header()}
        if roles:
            out['roles'] = roles
        return out

    def do_user_list(self, req, token):
        self._admin(token)
        out = {'header': self.header()}
        if self.auth.user_list():
            out['users'] = self.auth.user_list()
        return out

    def do_role_add(self, req, token):
        return self._admin_call(token, self.auth.role_add,
                                req.get('name') or '')

    def do_role_delete(self, req, token):
        return self._admin_call(token, self.auth.role_delete,
                                req.get('role') or '')

    def do_role_grant(self, req, token):
        perm = codec.get_dict(req, 'perm')
        perm_type = codec.get_enum(perm, 'permType', auth_mod.PERM_TYPES,
                                   'authpb.Permission.Type')
        return self._admin_call(token, self.auth.role_grant,
                                req.get('name') or '', perm_type,
                                codec.get_bytes(perm, 'key'),
                                codec.get_bytes(perm, 'range_end'))

    def do_role_revoke(self, req, token):
        return self._admin_call(token, self.auth.role_revoke,
                                req.get('role') or '',
                                codec.get_bytes(req, 'key'),
                                codec.get_bytes(req, 'range_end'))

    def do_role_get(self, req, token):
        self._admin(token)
        out = {'header': self.header()}
        perms = []
        for perm_type, key, range_end in self.auth.role_get(
                req.get('role') or ''):
            entry = {}
            if perm_type:
                entry['permType'] = auth_mod.PERM_TYPES[perm_type]
            entry['key'] = codec.b64(key)
            if range_end:
                entry['range_end'] = codec.b64(range_end)
            perms.append(entry)
        if perms:
            out['perm'] = perms
        return out

    def do_role_list(self, req, token):
        self._admin(token)
        out = {'header': self.header()}
        if self.auth.role_list():
            out['roles'] = self.auth.role_list()
        return out

    # -- watches

    def _open_watch(self, body, token):
        try:
            _loads(body, errors.UNKNOWN, first_only=True)
        except errors.GatewayError as e:
            return Answer.error(e)
        stream = WatchStream(self, token)
        with self._lock:
            self._streams.append(stream)
        self._stream_requests(stream, body)
        return stream

    def _stream_requests(self, stream, body):
        decoder = json.JSONDecoder()
        text = body.decode('utf-8') if isinstance(body, bytes) else body
        pos = 0
        while True:
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos >= len(text):
                return
            try:
                request, pos = decoder.raw_decode(text, pos)
            except ValueError:
                return
            if isinstance(request, dict):
                with self._lock:
                    self._watch_request(stream, request)

    def _watch_request(self, stream, request):
        if stream.closed:
            return
        try:
            if 'create_request' in request:
                self._watch_create(stream,
                                   codec.get_dict(request, 'create_request'))
            elif 'cancel_request' in request:
                cancel = codec.get_dict(request, 'cancel_request')
                ident = codec.get_int(cancel, 'watch_id')
                if stream.watchers.pop(ident, None) is not None:
                    result = {'header': self.header()}
                    codec.put_int(result, 'watch_id', ident)
                    result['canceled'] = True
                    stream._push(result)
            elif 'progress_request' in request:
                stream._push({'header': self.header(), 'watch_id': '-1'})
        except errors.GatewayError:
            # A malformed request inside a stream: etcd ends nothing.
            return

    def _watch_create(self, stream, req):
        key = codec.get_bytes(req, 'key') or b'\x00'
        range_end = codec.get_bytes(req, 'range_end')
        start = codec.get_int(req, 'start_revision')
        ident = codec.get_int(req, 'watch_id')
        prev_kv = codec.get_bool(req, 'prev_kv')
        progress = codec.get_bool(req, 'progress_notify')
        drop = set()
        for item in codec.get_list(req, 'filters'):
            index = (item if isinstance(item, int)
                     else _FILTERS.index(item) if item in _FILTERS else -1)
            if index in (0, 1):
                drop.add([PUT, DELETE][index])
        try:
            user = self.auth.user_of(stream.token)
            self.auth.check(user, reads=[auth_mod.key_interval(
                key, range_end or None)])
        except errors.GatewayError:
            result = {'header': self.header()}
            codec.put_int(result, 'watch_id', ident)
            result.update(created=True, canceled=True,
                          cancel_reason='rpc error: code = PermissionDenied '
                          'desc = etcdserver: permission denied')
            stream._push(result)
            return
        if ident and ident in stream.watchers:
            result = {'header': self.header(), 'watch_id': '-1',
                      'created': True, 'canceled': True,
                      'cancel_reason': 'mvcc: duplicate watch ID provided '
                      'on the WatchStream'}
            stream._push(result)
            return
        if not ident:
            while stream._next_id in stream.watchers:
                stream._next_id += 1
            ident = stream._next_id
        watcher = _Watcher(ident, _range_of(key, range_end), prev_kv, drop,
                           progress)
        stream.watchers[ident] = watcher
        result = {'header': self.header()}
        codec.put_int(result, 'watch_id', ident)
        result['created'] = True
        stream._push(result)
        if start and start < self.compact_revision:
            del stream.watchers[ident]
            result = {'header': self.header(0)}
            codec.put_int(result, 'watch_id', ident)
            result['canceled'] = True
            codec.put_int(result, 'compact_revision', self.compact_revision)
            stream._push(result)
            return
        if not start or start > self.revision:
            watcher.next_rev = start or self.revision + 1
            return
        # Catching up: up to WATCH_BATCH_REVS revisions per message.
        batch, revs = [], 0
        for rev, events in self._events:
            if rev < start:
                continue
            mine = self._events_for(watcher, events)
            if not mine:
                continue
            batch.extend(mine)
            revs += 1
            if revs == WATCH_BATCH_REVS:
                self._send_events(stream, watcher, batch, self.revision)
                batch, revs = [], 0
        if batch:
            self._send_events(stream, watcher, batch, self.revision)
        watcher.next_rev = self.revision + 1

    def _events_for(self, watcher, events):
        out = []
        for kind, kv, prev in events:
            if kind in watcher.drop or not watcher.matches(kv.key):
                continue
            event = {}
            if kind == DELETE:
                event['type'] = DELETE
            event['kv'] = kv.json()
            if watcher.prev_kv and prev is not None:
                event['prev_kv'] = prev.json()
            out.append(event)
        return out

    def _send_events(self, stream, watcher, events, revision):
        result = {'header': self.header(revision)}
        codec.put_int(result, 'watch_id', watcher.id)
        result['events'] = events
        stream._push(result)

    def _publish(self, revision, events):
        self._events.append((revision, events))
        for stream in list(self._streams):
            for watcher in list(stream.watchers.values()):
                if watcher.next_rev > revision:
                    continue
                mine = self._events_for(watcher, events)
                if mine:
                    self._send_events(stream, watcher, mine, revision)

    def _progress(self, only_asked):
        for stream in list(self._streams):
            for watcher in list(stream.watchers.values()):
                if only_asked and not watcher.progress_notify:
                    continue
                result = {'header': self.header()}
                codec.put_int(result, 'watch_id', watcher.id)
                stream._push(result)

    def notify_progress(self):
        """Send a progress notification to every watch that asked now."""
        with self._lock:
            self._last_progress = self.clock.time()
            self._progress(only_asked=True)

    def _drop_stream(self, stream):
        with self._lock:
            if stream in self._streams:
                self._streams.remove(stream)
            stream.watchers.clear()

    def close_streams(self):
        """End every open watch stream (as a restart of etcd would)."""
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            stream.close()

    @property
    def watch_count(self):
        """How many watches are open, over all streams."""
        with self._lock:
            return sum(len(s.watchers) for s in self._streams)

    # -- direct access for tests

    def get(self, key):
        """The live :class:`KV` of ``key`` (bytes or str), or None."""
        if isinstance(key, str):
            key = key.encode('utf-8')
        with self._lock:
            return self._live.get(key)

    @property
    def leases(self):
        """``{lease id: (granted ttl, seconds left, sorted keys)}``."""
        with self._lock:
            now = self.clock.time()
            return {i: (lease.ttl, lease.expiry - now, sorted(lease.keys))
                    for i, lease in self._leases.items()}

    def __repr__(self):
        return '<FakeEtcd3 revision %d, %d keys, %d leases>' % (
            self.revision, len(self._live), len(self._leases))


class _Batch(object):
    """The changes of one write request: at most one new revision."""

    def __init__(self, server):
        self.server = server
        self.base = server.revision
        self.events = []
        # Each key touched, as it was before the batch: a watch's prev_kv
        # is the key at the revision before the event's, as etcd reads it.
        self._before = {}

    def view_revision(self):
        return self.base + 1 if self.events else self.base

    def _record(self, kv):
        history = self.server._history.setdefault(kv.key, [])
        if history and history[-1].mod == kv.mod:
            history[-1] = kv
        else:
            history.append(kv)

    def _detach(self, kv):
        if kv is not None and kv.lease:
            lease = self.server._leases.get(kv.lease)
            if lease is not None:
                lease.keys.discard(kv.key)

    def put(self, key, value, lease, prev):
        rev = self.base + 1
        if prev is None:
            kv = KV(key, value, rev, rev, 1, lease)
        else:
            kv = KV(key, value, prev.create, rev, prev.version + 1, lease)
        self._detach(prev)
        if lease:
            self.server._leases[lease].keys.add(key)
        self.server._live[key] = kv
        self._record(kv)
        self.events.append((PUT, kv, self._before.setdefault(key, prev)))
        return rev

    def delete(self, prev):
        rev = self.base + 1
        self._detach(prev)
        del self.server._live[prev.key]
        tomb = KV(prev.key, b'', 0, rev, 0, 0)
        self._record(tomb)
        self.events.append((DELETE, tomb,
                            self._before.setdefault(prev.key, prev)))

    def commit(self):
        if not self.events:
            return
        self.server.revision = self.base + 1
        self.server._publish(self.server.revision, self.events)


def _loads(body, code, first_only=False):
    if isinstance(body, bytes):
        body = body.decode('utf-8', 'replace')
    text = body.strip()
    if not text:
        return {}
    try:
        if first_only:
            value, _ = json.JSONDecoder().raw_decode(text)
        else:
            value = json.loads(text)
    except ValueError:
        char = text[:1]
        raise errors.GatewayError(
            code, "invalid character '%s' looking for beginning of value"
            % char)
    if not isinstance(value, dict):
        raise errors.GatewayError(
            code, 'json: cannot unmarshal %s into Go value of type request'
            % type(value).__name__)
    return value


def _method_not_allowed():
    return Answer(405, list(_JSON_HEADERS[:3]) + [
        ('Content-Type', 'text/plain; charset=utf-8')],
        b'Method Not Allowed\n')


def _txn_ops(req):
    for branch in ('success', 'failure'):
        for op in codec.get_list(req, branch):
            if not isinstance(op, dict):
                raise errors.invalid_argument(
                    'json: cannot unmarshal into Go value of type RequestOp')
            yield branch, op


def _check_txn(req):
    """etcd's checks of a txn before it runs: sizes, keys, overlaps."""
    for c in codec.get_list(req, 'compare'):
        if not codec.get_bytes(c, 'key'):
            raise errors.EMPTY_KEY()
    for branch in ('success', 'failure'):
        ops = codec.get_list(req, branch)
        if len(ops) > MAX_TXN_OPS:
            raise errors.TOO_MANY_OPS()
        for op in ops:
            for name in ('request_range', 'request_delete_range'):
                if name in op and not codec.get_bytes(
                        codec.get_dict(op, name), 'key'):
                    raise errors.EMPTY_KEY()
            if 'request_put' in op:
                put = codec.get_dict(op, 'request_put')
                if not codec.get_bytes(put, 'key'):
                    raise errors.EMPTY_KEY()
            if 'request_txn' in op:
                _check_txn(codec.get_dict(op, 'request_txn'))
        _check_overlaps(ops)


def _branch_writes(ops, puts, deletes):
    for op in ops:
        if 'request_put' in op:
            key = codec.get_bytes(codec.get_dict(op, 'request_put'), 'key')
            if key in puts:
                raise errors.DUPLICATE_KEY()
            puts.add(key)
        elif 'request_delete_range' in op:
            d = codec.get_dict(op, 'request_delete_range')
            range_end = codec.get_bytes(d, 'range_end')
            # As etcd 3.5.1 answers: a put clashes with a delete of its key
            # (one key or a bounded range) in the same branch, but not with
            # an open range "from key on".
            if range_end != b'\x00':
                deletes.append(_range_of(codec.get_bytes(d, 'key'),
                                         range_end))
        elif 'request_txn' in op:
            txn = codec.get_dict(op, 'request_txn')
            # Either branch of a nested txn may run: each must not clash
            # with this level's writes.
            for branch in ('success', 'failure'):
                _branch_writes(codec.get_list(txn, branch), set(puts),
                               list(deletes))


def _check_overlaps(ops):
    puts, deletes = set(), []
    _branch_writes(ops, puts, deletes)
    for key in puts:
        if any(matches(key) for matches in deletes):
            raise errors.DUPLICATE_KEY()


def _txn_intervals(req, reads, writes):
    for c in codec.get_list(req, 'compare'):
        reads.append(auth_mod.key_interval(
            codec.get_bytes(c, 'key'),
            codec.get_bytes(c, 'range_end') or None))
    for _, op in _txn_ops(req):
        if 'request_range' in op:
            r = codec.get_dict(op, 'request_range')
            reads.append(auth_mod.key_interval(
                codec.get_bytes(r, 'key'),
                codec.get_bytes(r, 'range_end') or None))
        elif 'request_put' in op:
            p = codec.get_dict(op, 'request_put')
            interval = auth_mod.key_interval(codec.get_bytes(p, 'key'), None)
            writes.append(interval)
            if codec.get_bool(p, 'prev_kv'):
                reads.append(interval)
        elif 'request_delete_range' in op:
            d = codec.get_dict(op, 'request_delete_range')
            interval = auth_mod.key_interval(
                codec.get_bytes(d, 'key'),
                codec.get_bytes(d, 'range_end') or None)
            writes.append(interval)
            if codec.get_bool(d, 'prev_kv'):
                reads.append(interval)
        elif 'request_txn' in op:
            _txn_intervals(codec.get_dict(op, 'request_txn'), reads, writes)


_ROUTES = {
    '/v3/kv/range': (FakeEtcd3.do_range, False),
    '/v3/kv/put': (FakeEtcd3.do_put, False),
    '/v3/kv/deleterange': (FakeEtcd3.do_deleterange, False),
    '/v3/kv/txn': (FakeEtcd3.do_txn, False),
    '/v3/kv/compaction': (FakeEtcd3.do_compaction, False),
    '/v3/lease/grant': (FakeEtcd3.do_lease_grant, False),
    '/v3/lease/revoke': (FakeEtcd3.do_lease_revoke, False),
    '/v3/kv/lease/revoke': (FakeEtcd3.do_lease_revoke, False),
    '/v3/lease/keepalive': (FakeEtcd3.do_lease_keepalive, True),
    '/v3/lease/timetolive': (FakeEtcd3.do_lease_timetolive, False),
    '/v3/kv/lease/timetolive': (FakeEtcd3.do_lease_timetolive, False),
    '/v3/lease/leases': (FakeEtcd3.do_lease_leases, False),
    '/v3/kv/lease/leases': (FakeEtcd3.do_lease_leases, False),
    '/v3/maintenance/status': (FakeEtcd3.do_status, False),
    '/v3/cluster/member/list': (FakeEtcd3.do_member_list, False),
    '/v3/auth/enable': (FakeEtcd3.do_auth_enable, False),
    '/v3/auth/disable': (FakeEtcd3.do_auth_disable, False),
    '/v3/auth/status': (FakeEtcd3.do_auth_status, False),
    '/v3/auth/authenticate': (FakeEtcd3.do_authenticate, False),
    '/v3/auth/user/add': (FakeEtcd3.do_user_add, False),
    '/v3/auth/user/delete': (FakeEtcd3.do_user_delete, False),
    '/v3/auth/user/changepw': (FakeEtcd3.do_user_changepw, False),
    '/v3/auth/user/grant': (FakeEtcd3.do_user_grant, False),
    '/v3/auth/user/revoke': (FakeEtcd3.do_user_revoke, False),
    '/v3/auth/user/get': (FakeEtcd3.do_user_get, False),
    '/v3/auth/user/list': (FakeEtcd3.do_user_list, False),
    '/v3/auth/role/add': (FakeEtcd3.do_role_add, False),
    '/v3/auth/role/delete': (FakeEtcd3.do_role_delete, False),
    '/v3/auth/role/grant': (FakeEtcd3.do_role_grant, False),
    '/v3/auth/role/revoke': (FakeEtcd3.do_role_revoke, False),
    '/v3/auth/role/get': (FakeEtcd3.do_role_get, False),
    '/v3/auth/role/list': (FakeEtcd3.do_role_list, False),
}
