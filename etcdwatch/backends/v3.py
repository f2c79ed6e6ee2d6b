"""The etcd v3 backend, over etcd3gw's client for etcd's HTTP/JSON gateway.

Only this module knows etcd v3's vocabulary.  It uses the etcd3gw client
for its address, its ``requests`` session (TLS settings included) and its
timeout, and sends its own requests to the gateway: so that every request
is bounded in time, text is encoded as UTF-8 (etcd3gw encodes str as
latin-1), and watches survive what etcd3gw's watch helper does not (see
:class:`V3Backend`).

Text: keys and values are bytes in etcd v3.  They are decoded as UTF-8
with ``errors='surrogateescape'``: valid UTF-8 arrives as the same str as
on v2, and any other byte becomes a lone surrogate, so nothing fails to
load and ``value.encode('utf-8', 'surrogateescape')`` gives the original
bytes back.  Str written through this backend is encoded the same way.

Needs etcd >= 3.4 (tested on 3.5); the v2 API may be disabled.
"""

import base64
import collections
import json
import math
import socket
import threading
import time

import etcd3gw.exceptions
import requests
import urllib3.exceptions

from oslo_log import log as logging

from etcdwatch.backends import base
from etcdwatch import exceptions

LOG = logging.getLogger(__name__)

#: Seconds a request (other than a watch) may take when the etcd3gw client
#: has no timeout of its own: a paused etcd must not hang a recipe forever.
DEFAULT_TIMEOUT = 10.0
#: Keys per request when reading a tree (all pages read at one revision).
PAGE_SIZE = 1000

#: Seconds without an answer to a new watch after which etcd is deemed
#: unavailable (a shorter wait proves nothing).
_MIN_SILENCE = 0.5

# gRPC status codes that mean "try again later" rather than "wrong".
_GRPC_UNAVAILABLE = frozenset([4, 14])      # DEADLINE_EXCEEDED, UNAVAILABLE
_HTTP_UNAVAILABLE = frozenset([408, 502, 503, 504])


def _b64(text):
    if not isinstance(text, bytes):
        text = str(text).encode('utf-8', 'surrogateescape')
    return base64.b64encode(text).decode('ascii')


def _text(b64):
    # etcd's JSON leaves out empty fields: a missing value is ''.
    return base64.b64decode(b64 or '').decode('utf-8', 'surrogateescape')


def _ttl(seconds):
    # Leases take whole seconds; round up so a lease is never shorter than
    # asked for.  etcd silently raises a TTL below its minimum (2 s with
    # default flags): longer than asked, which is the safe direction.
    return max(1, int(math.ceil(seconds)))


def _revision(result):
    header = result.get('header') or {}
    revision = header.get('revision')
    return None if revision is None else int(revision)


class _Translate(object):
    """Turns transport, gateway and etcd3gw errors into etcdwatch's.

    ``on_unavailable`` (if given) is called before an
    :class:`~etcdwatch.exceptions.EtcdUnavailable` leaves the block.
    """

    def __init__(self, what, on_unavailable=None):
        self.what = what
        self.on_unavailable = on_unavailable

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            return self._translate(exc)
        except exceptions.EtcdUnavailable:
            if self.on_unavailable is not None:
                self.on_unavailable()
            raise

    def _translate(self, exc):
        if isinstance(exc, exceptions.EtcdUnavailable):
            raise exc
        if exc is None or isinstance(exc, exceptions.EtcdWatchError):
            return False
        if isinstance(exc, requests.exceptions.RequestException):
            # Before OSError: every requests exception is one.
            unavailable = isinstance(exc, (
                requests.exceptions.ConnectionError,
                requests.exceptions.Timeout))
        elif isinstance(exc, etcd3gw.exceptions.Etcd3Exception):
            unavailable = isinstance(exc, (
                etcd3gw.exceptions.ConnectionFailedError,
                etcd3gw.exceptions.ConnectionTimeoutError))
        elif isinstance(exc, (urllib3.exceptions.HTTPError, OSError)):
            unavailable = True      # a stream's socket, read directly
        elif isinstance(exc, (ValueError, KeyError, TypeError)):
            # Not JSON, or JSON without the fields etcd always sends.
            raise exceptions.BackendError(
                '%s: unexpected answer from etcd: %r' % (self.what, exc)
            ) from exc
        else:
            return False
        if unavailable:
            raise exceptions.EtcdUnavailable(
                '%s: etcd unreachable: %s' % (self.what, exc)) from exc
        raise exceptions.BackendError('%s: %s' % (self.what, exc)) from exc


def _raise_for(what, status, body, current_index=None):
    """Raise the etcdwatch error for a gateway error answer."""
    if isinstance(body, dict) and isinstance(body.get('error'), dict):
        # Errors inside a stream: {"error": {"grpc_code": ..., ...}}.
        body = dict(body['error'], code=body['error'].get('grpc_code'))
    if not isinstance(body, dict):
        body = {}
    message = body.get('message') or body.get('error') or 'no detail'
    code = body.get('code')
    if 'required revision has been compacted' in str(message):
        raise exceptions.HistoryGone('%s: %s' % (what, message),
                                     current_index)
    if status in _HTTP_UNAVAILABLE or code in _GRPC_UNAVAILABLE:
        raise exceptions.EtcdUnavailable('%s: etcd unavailable (%s): %s'
                                         % (what, status, message))
    raise exceptions.BackendError('%s: etcd answered %s: %s'
                                  % (what, status, message))


def _socket_of(raw):
    """The socket under a urllib3 response, or None if it cannot be found.

    Needed to bound each read of a long-lived stream by the caller's own
    deadline, and to interrupt a read blocked in another thread.
    """
    for conn in (getattr(raw, 'connection', None),
                 getattr(raw, '_connection', None)):
        sock = getattr(conn, 'sock', None)
        if sock is not None:
            return sock
    try:
        return raw._fp.fp.raw._sock
    except AttributeError:
        return None


class _Stream(object):
    """One open ``/watch`` response: JSON messages, one per line."""

    def __init__(self, response, timeout):
        self.response = response
        #: The timeout of the last watch call that used it (for reaping).
        self.timeout = timeout
        self.last_used = time.monotonic()
        self.aborted = False
        self._buffer = b''
        self._sock = _socket_of(response.raw)
        raw = response.raw
        if raw.chunked and raw.supports_chunked_reads():
            # Chunk by chunk as the gateway flushes them; read(n) would
            # wait for n bytes.
            self._chunks = raw.read_chunked(None, decode_content=True)
        else:
            read = getattr(raw, 'read1', None) or (lambda n: raw.read(1))
            self._chunks = iter(lambda: read(65536), b'')

    def next_message(self, deadline):
        """The next message, or None if ``deadline`` passes first.

        A timeout of the socket leaves the stream unusable (the caller
        closes it); running out of time between two reads does not.
        Raises StopIteration at the end of the stream and transport
        errors as they come.
        """
        while True:
            line, newline, rest = self._buffer.partition(b'\n')
            if newline:
                self._buffer = rest
                if line.strip():
                    return json.loads(line.decode('utf-8'))
                continue
            if deadline is None:
                remaining = None
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
            if self._sock is not None:
                self._sock.settimeout(remaining)
            # else each read is bounded by the read timeout the stream was
            # opened with (the timeout of the call that opened it).
            self._buffer += next(self._chunks)

    def abort(self):
        """Wake a read blocked in another thread; the reader closes."""
        self.aborted = True
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        # Never returned to the pool half read: closing the response
        # closes its connection.
        try:
            self.response.close()
        except Exception:  # noqa: broad; closing must not fail the caller
            pass


class _Cursor(object):
    """Where one watched key or prefix stands, across watch calls.

    ``floor``: the caller has every event below it.  ``received``: every
    event up to it has arrived (a new stream starts after it).  ``events``:
    arrived, not yet returned.  ``returned``: the index of the event just
    returned, while the next call may continue with the other events of
    that same index.
    """

    def __init__(self, key, range_end, start):
        self.lock = threading.Lock()
        self.key = key
        self.range_end = range_end
        self.stream = None
        self.reset(start)

    def reset(self, start):
        self.close_stream()
        self.floor = start
        self.received = start - 1
        self.returned = None
        self.events = collections.deque()

    def position(self, from_index):
        if from_index < self.floor:
            # Asked again for events already given: replay from etcd.
            self.reset(from_index)
        elif from_index == self.floor and self.returned == from_index - 1:
            # index + 1 right after an event: keep the rest of its index.
            pass
        else:
            while self.events and self.events[0].index < from_index:
                self.events.popleft()
            self.floor = from_index
            self.returned = None

    def pop(self):
        if not self.events:
            return None
        event = self.events.popleft()
        self.returned = event.index
        self.floor = event.index + 1
        return event

    def start_revision(self):
        return max(self.floor, self.received + 1)

    def close_stream(self):
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.close()


class V3Backend(base.Backend):
    """Backend for etcd3gw's ``Etcd3Client`` (etcd's v3 API).

    Election keys are bound to a lease: :meth:`create` grants one of the
    TTL and creates the key in a transaction on ``create_revision == 0``;
    :meth:`refresh` sends a lease keepalive, which renews the lease without
    touching the key, so no watcher of the key wakes up.  The index of an
    event is the revision etcd made it at; several events can share one (a
    transaction, a prefix delete): see :meth:`watch_tree`.

    Watches: v3 watches are streams.  A watch call reads the stream it
    left open last time if the caller continues where that one stopped
    (and has not re-read the tree since), else opens one at ``from_index``.
    Each read waits at most until the call's own deadline; when that passes
    with nothing read the call returns None, and if the socket timed out
    the stream is closed (the next call opens a new one from where it
    stood, so a silent stream never lives longer than one call's timeout).
    A ``compact_revision`` answer closes the stream and raises
    :class:`~etcdwatch.exceptions.HistoryGone`; any other cancellation
    raises :class:`~etcdwatch.exceptions.BackendError`.  No thread is ever
    started.  :meth:`close` closes every stream; a stream left idle for
    twice its last call's timeout (plus a second) is closed by the next
    call on this backend.

    Thread-safe.  Requests other than watches wait at most the etcd3gw
    client's ``timeout``, or :data:`DEFAULT_TIMEOUT` if it has none.
    """

    name = 'v3'
    # A stream delivers missed events in batches (about 0.015 ms each on
    # loopback), while a re-read costs about as much as walking a tree's
    # worth of events, and restarts the stream at a past revision, which
    # etcd answers only at its next 100 ms round for late watchers: under
    # steady writes a small threshold would re-read every round.  So only
    # re-read past the tree's size, and never for under 1000 events.
    catchup_min_lag = 1000
    catchup_tree_fraction = 1

    def __init__(self, client):
        super(V3Backend, self).__init__(client)
        self.timeout = client.timeout or DEFAULT_TIMEOUT
        self._api_path = None
        self._lock = threading.Lock()
        self._cursors = {}
        # (key, value) -> the lease we bound the key to, to save a read on
        # each refresh.  Always checked against the key itself.
        self._leases = {}

    # -- plumbing -----------------------------------------------------------

    @property
    def _session(self):
        return self.client.session

    def _url(self, path):
        # The member in use can change (FailoverEtcd3Client): the API path
        # is the cluster's, the base URL the member's.
        if self._api_path is None:
            api_path = getattr(self.client, '_api_path', None)
            if api_path is None:
                api_path = self._discover_api_path()
            self._api_path = api_path.strip('/')
        return '%s/%s/%s' % (self.client.base_url, self._api_path, path)

    def _translate(self, what, stream=None):
        """A :class:`_Translate` that moves off a member it finds down.

        Only for a client that knows other members (``failover()``, as
        :class:`~etcdwatch.v3client.FailoverEtcd3Client` has), and not for
        a stream that :meth:`close` cut on purpose.
        """
        url = self.client.base_url

        def unavailable():
            if stream is None or not stream.aborted:
                self._member_unavailable(url)
        return _Translate(what, unavailable)

    def _member_unavailable(self, url):
        failover = getattr(self.client, 'failover', None)
        if callable(failover):
            now = failover(url)
            if now != url:
                LOG.warning('etcd member %s unavailable; moving to %s',
                            url, now)

    def _discover_api_path(self):
        # As etcd3gw does, but within our timeout.
        with self._translate('etcd version'):
            resp = self._session.get(self.client.base_url + '/version',
                                     timeout=self.timeout)
            if resp.status_code != 200:
                _raise_for('etcd version', resp.status_code, None)
            version = resp.json()['etcdserver']
            major_minor = tuple(int(p) for p in version.split('.')[:2])
        if major_minor >= (3, 4):
            return '/v3/'
        if major_minor >= (3, 3):
            return '/v3beta/'
        return '/v3alpha/'

    def _call(self, path, payload, what):
        """POST one request; return the answer's JSON."""
        self._reap_idle()
        with self._translate(what):
            resp = self._session.post(self._url(path), json=payload,
                                      timeout=self.timeout)
            try:
                body = resp.json()
            except ValueError:
                body = None
            if resp.status_code != 200:
                _raise_for(what, resp.status_code, body)
            if 'result' in body and 'header' not in body:
                # Stream endpoints (keepalive) wrap their one answer.
                body = body['result']
            return body

    def _range(self, key, what, **extra):
        payload = dict(key=_b64(key), **extra)
        return self._call('kv/range', payload, what)

    def _get(self, key):
        """(kv dict or None, header revision) of one key."""
        result = self._range(key, 'read %s' % key)
        kvs = result.get('kvs') or ()
        return (kvs[0] if kvs else None), _revision(result)

    def _txn(self, compare, success, what):
        return self._call('kv/txn', {'compare': compare, 'success': success,
                                     'failure': []}, what)

    def _grant(self, ttl, what):
        result = self._call('lease/grant', {'TTL': _ttl(ttl), 'ID': 0},
                            what)
        return int(result['ID'])

    def _revoke(self, lease, what):
        # Best effort: a lease we could not revoke expires on its own.
        try:
            self._call('lease/revoke', {'ID': lease}, what)
        except exceptions.BackendError:
            pass

    def _keepalive(self, lease, what):
        """The lease's TTL after renewing it, or None if it has expired."""
        result = self._call('lease/keepalive', {'ID': lease}, what)
        ttl = int(result.get('TTL', -1))
        return ttl if ttl > 0 else None

    # -- reads ------------------------------------------------------------

    def read_tree(self, path):
        """Every key below ``path + '/'`` at one revision.

        A key named ``path`` itself is not part of the tree.  Big trees are
        read in pages of :data:`PAGE_SIZE` keys, all at the first page's
        revision; if etcd compacts that revision meanwhile, the read starts
        over (three times at most).
        """
        prefix = path + '/'
        # The watch of this tree must not continue a half-returned index
        # that this snapshot already covers.
        self._forget_cursor((prefix, path + '0'))
        for attempt in range(3):
            try:
                return self._read_pages(path, prefix)
            except exceptions.HistoryGone:
                if attempt == 2:
                    raise

    def _read_pages(self, path, prefix):
        items = {}
        start, revision = prefix, None
        while True:
            extra = {'range_end': _b64(path + '0'), 'limit': PAGE_SIZE}
            if revision is not None:
                extra['revision'] = revision
            result = self._range(start, 'read %s' % path, **extra)
            if revision is None:
                revision = _revision(result)
            kvs = result.get('kvs') or ()
            for kv in kvs:
                items[_text(kv['key'])] = _text(kv.get('value'))
            if not result.get('more') or not kvs:
                return base.Snapshot(revision, items)
            # The next page starts just after the last key (as bytes).
            start = base64.b64decode(kvs[-1]['key']) + b'\0'

    def read_key(self, key):
        kv, revision = self._get(key)
        if kv is None:
            return None, revision
        return (base.KeyState(_text(kv.get('value')),
                              int(kv['create_revision']),
                              int(kv['mod_revision'])),
                revision)

    # -- watches ----------------------------------------------------------

    def watch_tree(self, path, from_index, timeout):
        """The first event below ``path + '/'`` at ``from_index`` or later.

        Events that share an index (a transaction, a prefix delete: one
        DELETE per key) come one per call: asking again from ``index + 1``
        right after one of them continues with the next.  Returns None
        after ``timeout`` seconds (``None``: no limit) without an event,
        plus the time to open a connection if one is needed.
        """
        return self._watch(path, path + '/', path + '0', from_index, timeout)

    def watch_key(self, key, from_index, timeout):
        return self._watch(key, key, None, from_index, timeout)

    def _watch(self, path, key, range_end, from_index, timeout):
        deadline = None if timeout is None else time.monotonic() + timeout
        cursor = self._cursor(key, range_end, from_index)
        if not cursor.lock.acquire(
                timeout=-1 if timeout is None else max(0, timeout)):
            return None
        try:
            cursor.position(from_index)
            while True:
                event = cursor.pop()
                if event is not None:
                    return event
                if cursor.stream is None:
                    cursor.stream = self._open(path, cursor, deadline,
                                               timeout)
                    if cursor.stream is None:
                        return None
                message = self._next_message(path, cursor, deadline)
                if message is None:
                    return None
                self._take(path, cursor, message)
        finally:
            if cursor.stream is not None:
                cursor.stream.last_used = time.monotonic()
                cursor.stream.timeout = timeout
            cursor.lock.release()

    def _open(self, path, cursor, deadline, timeout):
        """A new stream from where the cursor stands; None if out of time."""
        remaining = None if deadline is None else (
            deadline - time.monotonic())
        if remaining is not None and remaining <= 0:
            return None
        request = {'key': _b64(cursor.key),
                   'start_revision': cursor.start_revision()}
        if cursor.range_end is not None:
            request['range_end'] = _b64(cursor.range_end)
        what = 'watch %s' % path
        connect = self.timeout if remaining is None else min(remaining,
                                                             self.timeout)
        with self._translate(what):
            try:
                resp = self._session.post(
                    self._url('watch'), json={'create_request': request},
                    stream=True, timeout=(connect, remaining))
            except requests.exceptions.ReadTimeout:
                if remaining is not None and remaining < _MIN_SILENCE:
                    # Too short a wait to blame etcd for.
                    return None
                # etcd accepted the connection but did not even answer
                # the request (paused, or overloaded).  As on v2: an
                # error, so the caller backs off and says so; a stream
                # etcd answered and then kept quiet on is no error.
                raise exceptions.EtcdUnavailable(
                    '%s: etcd did not answer within %.1fs'
                    % (what, remaining))
            if resp.status_code != 200:
                try:
                    try:
                        body = json.loads(resp.raw.read(65536))
                    except ValueError:
                        body = None
                    _raise_for(what, resp.status_code, body)
                finally:
                    resp.close()
            return _Stream(resp, timeout)

    def _next_message(self, path, cursor, deadline):
        stream = cursor.stream
        try:
            with self._translate('watch %s' % path, stream):
                try:
                    message = stream.next_message(deadline)
                except (urllib3.exceptions.ReadTimeoutError,
                        socket.timeout):
                    if stream.aborted:
                        raise
                    # The socket is unusable after a timeout; etcd keeps
                    # the events for the next stream.
                    cursor.close_stream()
                    return None
                except StopIteration:
                    raise exceptions.EtcdUnavailable(
                        'watch %s: etcd ended the stream' % path)
        except exceptions.BackendError:
            cursor.close_stream()
            if stream.aborted:
                return None
            raise
        if stream.aborted:
            cursor.close_stream()
            return None
        return message

    def _take(self, path, cursor, message):
        """Fold one stream message into the cursor."""
        what = 'watch %s' % path
        result = message.get('result') if isinstance(message, dict) else None
        if not isinstance(result, dict):
            cursor.close_stream()
            _raise_for(what, None, message)
        current = _revision(result)
        compacted = int(result.get('compact_revision', 0))
        if compacted:
            start = cursor.start_revision()
            cursor.close_stream()
            raise exceptions.HistoryGone(
                '%s: etcd compacted its history up to revision %d; this '
                'watch needed it from %d' % (what, compacted, start),
                current)
        if result.get('canceled'):
            cursor.close_stream()
            raise exceptions.BackendError(
                '%s: etcd canceled the watch: %s'
                % (what, result.get('cancel_reason') or 'no reason given'))
        events = []
        try:
            with _Translate(what):
                for event in result.get('events') or ():
                    kv = event['kv']
                    removal = event.get('type') == 'DELETE'
                    events.append(base.Event(
                        kind=base.DELETE if removal else base.PUT,
                        key=_text(kv['key']),
                        value=None if removal else _text(kv.get('value')),
                        index=int(kv['mod_revision']), is_dir=False,
                        current_index=current))
        except exceptions.BackendError:
            # Take all of a message or none of it: the next stream starts
            # after the last revision taken.
            cursor.close_stream()
            raise
        for event in events:
            cursor.received = max(cursor.received, event.index)
            if event.index >= cursor.floor:
                cursor.events.append(event)

    def _cursor(self, key, range_end, from_index):
        ident = (key, range_end)
        self._reap_idle(keep=ident)
        with self._lock:
            cursor = self._cursors.get(ident)
            if cursor is None:
                cursor = self._cursors[ident] = _Cursor(key, range_end,
                                                        from_index)
            return cursor

    def _forget_cursor(self, ident):
        with self._lock:
            cursor = self._cursors.pop(ident, None)
        if cursor is not None:
            self._close_cursor_stream(cursor)

    @staticmethod
    def _close_cursor_stream(cursor):
        if cursor.lock.acquire(blocking=False):
            try:
                cursor.close_stream()
            finally:
                cursor.lock.release()
        else:
            stream = cursor.stream
            if stream is not None:
                stream.abort()

    def _reap_idle(self, keep=None):
        # A stream nobody reads (say, a follower's that won and now leads)
        # would hold a connection and a watch on etcd for nothing.
        now = time.monotonic()
        with self._lock:
            cursors = [c for ident, c in self._cursors.items()
                       if ident != keep]
        for cursor in cursors:
            stream = cursor.stream
            if (stream is None or stream.timeout is None or
                    now - stream.last_used <= 2 * stream.timeout + 1):
                continue
            if cursor.lock.acquire(blocking=False):
                try:
                    if cursor.stream is stream:
                        cursor.close_stream()
                finally:
                    cursor.lock.release()

    def close(self):
        """Close every watch stream now; never raises.

        A watch blocked in another thread returns None at once.  Events
        already received are kept, so a later watch continues exactly; the
        backend stays usable.
        """
        with self._lock:
            cursors = list(self._cursors.values())
        for cursor in cursors:
            self._close_cursor_stream(cursor)

    def open_streams(self):
        """How many watch streams are open (for tests and stats)."""
        with self._lock:
            return sum(1 for c in self._cursors.values()
                       if c.stream is not None)

    # -- election ---------------------------------------------------------

    def create(self, key, value, ttl):
        """Create ``key`` bound to a new lease of ``ttl`` if it is absent.

        Returns the key's create revision (the fencing token), or None if
        the key exists (the lease granted for it is revoked).
        """
        result = self._put_on_new_lease(
            key, value, ttl,
            [{'key': _b64(key), 'target': 'CREATE', 'result': 'EQUAL',
              'create_revision': 0}], 'create %s' % key)
        return None if result is None else _revision(result)

    def refresh(self, key, value, ttl):
        """Renew the lease of ``key`` if the key still holds ``value``.

        A keepalive: the key is not written, so its watchers sleep on.  The
        key is read after the keepalive, so True means it held ``value`` on
        that lease after the renewal.  A lease's TTL is fixed when granted:
        a ``ttl`` up to it keeps the lease (the key may then outlive
        ``ttl``, the safe way); a longer ``ttl`` moves the key to a new
        lease of that TTL, which rewrites the key once with the same value
        (its watchers wake once).
        """
        what = 'refresh %s' % key
        lease = self._leases.get((key, value))
        if lease is None:
            kv, _rev = self._get(key)
            if kv is None or _text(kv.get('value')) != value:
                return False
            lease = int(kv.get('lease', 0))
            if not lease:
                return self._rebind(key, value, ttl, lease, what)
        granted = self._keepalive(lease, what)
        kv, _rev = self._get(key)
        if (granted is None or kv is None or
                _text(kv.get('value')) != value or
                int(kv.get('lease', 0)) != lease):
            self._leases.pop((key, value), None)
            return False
        self._leases[(key, value)] = lease
        if _ttl(ttl) > granted:
            return self._rebind(key, value, ttl, lease, what)
        return True

    def _rebind(self, key, value, ttl, old_lease, what):
        """Move our key to a new lease of ``ttl``; True if still ours."""
        result = self._put_on_new_lease(
            key, value, ttl,
            [{'key': _b64(key), 'target': 'VALUE', 'result': 'EQUAL',
              'value': _b64(value)},
             {'key': _b64(key), 'target': 'LEASE', 'result': 'EQUAL',
              'lease': old_lease}], what)
        if result is None:
            self._leases.pop((key, value), None)
            return False
        if old_lease:
            self._revoke(old_lease, what)
        return True

    def _put_on_new_lease(self, key, value, ttl, compares, what):
        """Put ``key`` on a new lease of ``ttl`` if ``compares`` hold.

        Returns the transaction's answer, or None (the new lease revoked)
        if a compare failed.
        """
        lease = self._grant(ttl, what)
        try:
            result = self._txn(
                compares,
                [{'request_put': {'key': _b64(key), 'value': _b64(value),
                                  'lease': lease}}], what)
        except exceptions.BackendError:
            self._revoke(lease, what)
            raise
        if not result.get('succeeded'):
            self._revoke(lease, what)
            return None
        self._leases[(key, value)] = lease
        return result

    def delete_if(self, key, value):
        """Delete ``key`` if it holds ``value``, and revoke its lease."""
        what = 'delete %s' % key
        self._leases.pop((key, value), None)
        result = self._txn(
            [{'key': _b64(key), 'target': 'VALUE', 'result': 'EQUAL',
              'value': _b64(value)}],
            [{'request_delete_range': {'key': _b64(key), 'prev_kv': True}}],
            what)
        if not result.get('succeeded'):
            return False
        with _Translate(what):
            deleted = result['responses'][0]['response_delete_range']
            for kv in deleted.get('prev_kvs') or ():
                lease = int(kv.get('lease', 0))
                if lease:
                    self._revoke(lease, what)
        return True
