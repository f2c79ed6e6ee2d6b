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
import selectors
import socket
import ssl
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
# RESOURCE_EXHAUSTED: before etcd 3.4.17 the gateway refuses any message
# over 4 MiB, on every retry alike.
_GRPC_TOO_LARGE = 8

#: Sent with every watch: etcd then cancels the watch ("etcdserver: no
#: leader") when the member loses its raft leader, instead of keeping it
#: open and silent on a member cut off from its cluster (etcd #10819).
_WATCH_HEADERS = {'Grpc-Metadata-hasleader': 'true',
                  # Lines must arrive as etcd flushes them.
                  'Accept-Encoding': 'identity'}


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


class _TooLarge(exceptions.BackendError):
    """The gateway refused a message over its size limit (gRPC code 8)."""


def _gateway_error(body):
    """``(gRPC code or None, message)`` of a gateway error body.

    Unary answers: ``{"error": text, "code": N, "message": text}``.  Errors
    inside a stream: ``{"error": {"grpc_code": N, "http_code": ...,
    "message": ...}}`` up to etcd 3.5 (grpc-gateway v1), ``{"error":
    {"code": N, "message": ...}}`` from 3.6 (grpc-gateway v2).
    """
    if not isinstance(body, dict):
        return None, 'no detail'
    if isinstance(body.get('error'), dict):
        body = body['error']
        code = body.get('grpc_code', body.get('code'))
    else:
        code = body.get('code')
    message = body.get('message') or body.get('error') or 'no detail'
    try:
        code = None if code is None else int(code)
    except (TypeError, ValueError):
        code = None
    return code, str(message)


def _raise_for(what, status, body, current_index=None, stream=False):
    """Raise the etcdwatch error for a gateway error answer.

    ``stream``: the error came inside a watch stream, where a message too
    large for the gateway means the watch cannot go on (HistoryGone: the
    caller re-reads) rather than a request to make smaller.
    """
    code, message = _gateway_error(body)
    if 'required revision has been compacted' in message:
        raise exceptions.HistoryGone('%s: %s' % (what, message),
                                     current_index)
    if code == _GRPC_TOO_LARGE:
        if stream:
            raise exceptions.HistoryGone(
                '%s: a watch message was too large for etcd\'s gateway '
                '(RESOURCE_EXHAUSTED; etcd before 3.4.17 refuses messages '
                'over 4 MiB), so the events cannot be walked: %s'
                % (what, message), current_index)
        raise _TooLarge('%s: answer too large for etcd\'s gateway: %s'
                        % (what, message))
    if (status in _HTTP_UNAVAILABLE or code in _GRPC_UNAVAILABLE or
            'no leader' in message):
        raise exceptions.EtcdUnavailable('%s: etcd unavailable (%s): %s'
                                         % (what, status or code, message))
    raise exceptions.BackendError('%s: etcd answered %s: %s'
                                  % (what, status or code, message))


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


class _ChunkedDecoder(object):
    """Decodes an HTTP/1.1 chunked body fed in pieces of any size.

    :meth:`feed` returns the body bytes the piece completes (possibly
    none); ``done`` turns True after the last chunk and its trailers.
    Chunk extensions and trailers are skipped.  Malformed framing raises
    ValueError.
    """

    _MAX_LINE = 4096

    def __init__(self):
        self._pending = b''
        self._state = 'size'        # size, data, crlf, trailer, done
        self._left = 0
        self.done = False

    def feed(self, data):
        self._pending += data
        out = []
        while self._state != 'done':
            if self._state == 'data':
                if not self._pending:
                    break
                piece = self._pending[:self._left]
                self._pending = self._pending[len(piece):]
                self._left -= len(piece)
                out.append(piece)
                if not self._left:
                    self._state = 'crlf'
                continue
            line, newline, rest = self._pending.partition(b'\n')
            if not newline:
                if len(self._pending) > self._MAX_LINE:
                    raise ValueError('chunked body: framing line too long')
                break
            self._pending = rest
            line = line.rstrip(b'\r')
            if self._state == 'size':
                size = line.split(b';', 1)[0].strip()
                if not size or size.strip(b'0123456789abcdefABCDEF'):
                    raise ValueError('chunked body: bad size %r' % line)
                self._left = int(size, 16)
                self._state = 'data' if self._left else 'trailer'
            elif self._state == 'crlf':
                if line:
                    raise ValueError('chunked body: chunk overruns its size')
                self._state = 'size'
            elif not line:          # the blank line after the trailers
                self._state = 'done'
                self.done = True
        return b''.join(out)


def _no_decoder(data):
    return data


class _Stream(object):
    """One open ``/watch`` response: JSON messages, one per line.

    Reads only what has arrived: the socket is made non-blocking, and a
    read that finds nothing waits for readability with a selector (green
    under eventlet's monkey patching) until the caller's deadline.  So a
    deadline passing never harms the stream: the next call continues it.
    Every wait follows a read that found nothing, so bytes TLS has already
    decrypted (``sock.pending()``) are never waited for.  The HTTP body is
    decoded here, chunked or not.
    """

    def __init__(self, response, timeout, url=None):
        self.response = response
        #: The timeout of the last watch call that used it (for reaping).
        self.timeout = timeout
        self.last_used = time.monotonic()
        #: The member's base URL, for moving off it when it fails.
        self.url = url
        self.aborted = False
        self._ended = False
        self._selector = None
        self._text = b''
        raw = response.raw
        self._sock = _socket_of(raw)
        reader = getattr(getattr(raw, '_fp', None), 'fp', None)
        if self._sock is None or reader is None:
            raise exceptions.BackendError(
                'watch: cannot reach the socket of this transport')
        encoding = response.headers.get('Content-Encoding', 'identity')
        if encoding.lower() != 'identity':
            raise exceptions.BackendError(
                'watch: unexpected Content-Encoding %r' % encoding)
        if raw.chunked:
            self._decoder = _ChunkedDecoder()
            self._decode = self._decoder.feed
        else:
            self._decoder, self._decode = None, _no_decoder
        self._sock.setblocking(False)
        # What the HTTP reader buffered past the headers; from now on
        # the socket is read directly.
        try:
            first = reader.read1(1 << 20)
        except (BlockingIOError, ssl.SSLWantReadError,
                ssl.SSLWantWriteError):
            first = b''
        self._add(first)

    def _add(self, data):
        self._text += self._decode(data)
        if self._decoder is not None and self._decoder.done:
            self._ended = True

    def next_message(self, deadline):
        """The next message, or None if ``deadline`` passes first.

        ``deadline`` is a ``time.monotonic()`` value, or None to wait for
        ever.  Returning None leaves the stream usable.  Raises
        StopIteration at the end of the stream (or after :meth:`abort`),
        and transport errors as they come.
        """
        while True:
            line, newline, rest = self._text.partition(b'\n')
            if newline:
                self._text = rest
                if line.strip():
                    return json.loads(line.decode('utf-8'))
                continue
            if self._ended:
                # The gateway ends a stream error without a newline.
                line, self._text = self._text, b''
                if line.strip():
                    return json.loads(line.decode('utf-8'))
                raise StopIteration
            if not self._fill(deadline):
                return None
            if deadline is not None and time.monotonic() >= deadline and (
                    b'\n' not in self._text):
                return None

    def _fill(self, deadline):
        """Read what has arrived; False if ``deadline`` passed first."""
        while True:
            try:
                data = self._sock.recv(65536)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError,
                    ssl.SSLWantWriteError):
                data = None
            if data is not None:
                if not data:
                    self._ended = True
                self._add(data)
                return True
            remaining = None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
            if self._selector is None:
                self._selector = selectors.DefaultSelector()
                self._selector.register(self._sock, selectors.EVENT_READ)
            self._selector.select(remaining)

    def abort(self):
        """Wake a read blocked in another thread; the reader closes."""
        self.aborted = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass

    def close(self):
        # Never returned to the pool half read: closing the response
        # closes its connection.
        try:
            if self._selector is not None:
                self._selector.close()
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
    A call whose deadline passes with nothing read returns None and leaves
    the stream open: the next call goes on reading it, so a quiet prefix
    on a busy etcd keeps one stream (no replay of the whole keyspace's
    history, no "compacted" answer to a reopening).  Streams ask for
    progress notifications: one tells that every event up to its revision
    has arrived, so a stream opened later starts there.  Streams carry
    ``Grpc-Metadata-hasleader: true``: a member that loses its raft leader
    cancels them ("no leader"), which raises
    :class:`~etcdwatch.exceptions.EtcdUnavailable` and moves a client that
    knows other members to the next one.  A ``compact_revision`` answer,
    or a message too large for the gateway, closes the stream and raises
    :class:`~etcdwatch.exceptions.HistoryGone`; any other cancellation
    raises :class:`~etcdwatch.exceptions.BackendError`.  No thread is ever
    started.  :meth:`close` closes every stream; a stream left idle for
    twice its last call's timeout (plus a second) is closed by the next
    call on this backend.

    A rewound or replaced etcd: every answer's header is checked.  A watch
    message whose revision is below the index the watch stands at (the
    data was wiped or restored), or a cluster ID other than the one seen
    before (the client reaches another cluster), raises
    :class:`~etcdwatch.exceptions.ClusterRewound`; for a new cluster ID,
    once for each watched key or prefix whose position was learnt before
    the change (and in :meth:`check_current`), then the new ID is the one
    expected.

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
        # The cluster ID etcd's answers carry, and how many times it has
        # changed (the epoch); per watched (key, range_end), the epoch in
        # which its caller learnt its position.
        self._cluster_id = None
        self._epoch = 0
        self._epochs = {}

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
        url = stream.url if stream is not None and stream.url else (
            self.client.base_url)

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

    def _call(self, path, payload, what, timeout=None):
        """POST one request; return the answer's JSON.

        Within ``timeout`` seconds, or the backend's timeout if shorter.
        """
        self._reap_idle()
        timeout = self.timeout if timeout is None else min(timeout,
                                                           self.timeout)
        with self._translate(what):
            resp = self._session.post(self._url(path), json=payload,
                                      timeout=timeout)
            try:
                body = resp.json()
            except ValueError:
                body = None
            if resp.status_code != 200:
                _raise_for(what, resp.status_code, body)
            if 'result' in body and 'header' not in body:
                # Stream endpoints (keepalive) wrap their one answer.
                body = body['result']
            self._observe(body)
            return body

    def _observe(self, result):
        """Note the cluster ID of an answer; return the current epoch."""
        header = result.get('header') if isinstance(result, dict) else None
        cluster = (header or {}).get('cluster_id')
        with self._lock:
            if cluster and cluster != self._cluster_id:
                if self._cluster_id is not None:
                    self._epoch += 1
                    LOG.warning('etcd cluster ID changed from %s to %s: '
                                'another cluster answers',
                                self._cluster_id, cluster)
                self._cluster_id = cluster
            return self._epoch

    def _learnt(self, ident, epoch):
        """The caller of ``ident`` now stands on what epoch ``epoch`` said."""
        with self._lock:
            self._epochs[ident] = epoch

    def _check_cluster(self, ident, what):
        """Raise ClusterRewound, once, if the cluster changed under ident.

        That is, if etcd's cluster ID changed since the caller of
        ``ident`` (a watched (key, range_end)) learnt its position.
        """
        with self._lock:
            known = self._epochs.setdefault(ident, self._epoch)
            if known == self._epoch:
                return
            self._epochs[ident] = self._epoch
            cluster = self._cluster_id
        raise exceptions.ClusterRewound(
            '%s: another etcd cluster (ID %s) answers now; indexes from '
            'before mean nothing there' % (what, cluster))

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
        ident = (prefix, path + '0')
        # The watch of this tree must not continue a half-returned index
        # that this snapshot already covers.
        self._forget_cursor(ident)
        page, attempts = PAGE_SIZE, 0
        while True:
            try:
                return self._read_pages(path, prefix, page, ident)
            except _TooLarge as e:
                if page == 1:
                    raise exceptions.BackendError(
                        'read %s: even one key is too large for etcd\'s '
                        'gateway: %s' % (path, e)) from e
                page = max(1, page // 2)
                LOG.warning('read %s: page too large for etcd\'s gateway; '
                            'reading %d keys at a time', path, page)
            except exceptions.HistoryGone:
                attempts += 1
                if attempts == 3:
                    raise

    def _read_pages(self, path, prefix, page, ident):
        """Read the tree in pages of ``page`` keys, at one revision.

        A page too large for the gateway raises :class:`_TooLarge`.
        """
        items = {}
        start, revision = prefix, None
        while True:
            extra = {'range_end': _b64(path + '0'), 'limit': page}
            if revision is not None:
                extra['revision'] = revision
            result = self._range(start, 'read %s' % path, **extra)
            if revision is None:
                revision = _revision(result)
                self._learnt(ident, self._observe(result))
            kvs = result.get('kvs') or ()
            for kv in kvs:
                items[_text(kv['key'])] = _text(kv.get('value'))
            if not result.get('more') or not kvs:
                return base.Snapshot(revision, items)
            # The next page starts just after the last key (as bytes).
            start = base64.b64decode(kvs[-1]['key']) + b'\0'

    def read_key(self, key):
        kv, revision = self._get(key)
        self._learnt((key, None), self._epoch)
        if kv is None:
            return None, revision
        return (base.KeyState(_text(kv.get('value')),
                              int(kv['create_revision']),
                              int(kv['mod_revision'])),
                revision)

    def check_current(self, path, index):
        """One linearizable count of the keys below ``path + '/'``.

        Returns etcd's revision; raises
        :class:`~etcdwatch.exceptions.ClusterRewound` if it is below
        ``index``, or if the cluster ID changed (seen by this read, or by
        another call since ``path``'s watch learnt its position), and
        :class:`~etcdwatch.exceptions.EtcdUnavailable` (moving a
        :class:`~etcdwatch.v3client.FailoverEtcd3Client` to the next
        member) if no quorum answers within
        :data:`~etcdwatch.backends.base.CHECK_TIMEOUT` (or the client's
        timeout, if shorter).
        """
        what = 'check %s' % path
        before = self._epoch
        result = self._call('kv/range', {
            'key': _b64(path + '/'), 'range_end': _b64(path + '0'),
            'count_only': True}, what, timeout=base.CHECK_TIMEOUT)
        revision = _revision(result)
        if revision is None:
            raise exceptions.BackendError('%s: no revision in the answer'
                                          % what)
        changed = before != self._epoch
        tree, key = (path + '/', path + '0'), (path, None)
        rewound = None
        for ident in [i for i in (tree, key) if i in self._epochs] or [tree]:
            if changed:
                self._learnt(ident, before)
            try:
                self._check_cluster(ident, what)
            except exceptions.ClusterRewound as e:
                rewound = e
        if rewound is not None:
            raise rewound
        if revision < index:
            raise exceptions.ClusterRewound(
                '%s: etcd is at revision %d, below %d seen before: its data '
                'was wiped or restored' % (what, revision, index), revision)
        return revision

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
        ident = (key, range_end)
        cursor = self._cursor(key, range_end, from_index)
        if not cursor.lock.acquire(
                timeout=-1 if timeout is None else max(0, timeout)):
            return None
        what = 'watch %s' % path
        try:
            cursor.position(from_index)
            self._check_cluster(ident, what)
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
                stream = cursor.stream
                try:
                    self._take(path, cursor, message)
                except exceptions.BackendError as e:
                    # Take all of a message or none of it: the next stream
                    # starts after the last revision taken.
                    cursor.close_stream()
                    if isinstance(e, exceptions.EtcdUnavailable):
                        self._member_unavailable(stream.url)
                    raise
                self._check_cluster(ident, what)
        except exceptions.ClusterRewound:
            self._drop_cursor(ident, cursor)
            raise
        finally:
            if cursor.stream is not None:
                cursor.stream.last_used = time.monotonic()
                cursor.stream.timeout = timeout
            cursor.lock.release()

    def _drop_cursor(self, ident, cursor):
        """Forget a cursor whose positions mean nothing (lock held)."""
        cursor.close_stream()
        with self._lock:
            if self._cursors.get(ident) is cursor:
                del self._cursors[ident]

    def _open(self, path, cursor, deadline, timeout):
        """A new stream from where the cursor stands; None if out of time."""
        remaining = None if deadline is None else (
            deadline - time.monotonic())
        if remaining is not None and remaining <= 0:
            return None
        request = {'key': _b64(cursor.key),
                   'start_revision': cursor.start_revision(),
                   'progress_notify': True}
        if cursor.range_end is not None:
            request['range_end'] = _b64(cursor.range_end)
        what = 'watch %s' % path
        connect = self.timeout if remaining is None else min(remaining,
                                                             self.timeout)
        url = self.client.base_url
        with self._translate(what):
            try:
                resp = self._session.post(
                    self._url('watch'), json={'create_request': request},
                    headers=_WATCH_HEADERS, stream=True,
                    timeout=(connect, remaining))
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
            try:
                if resp.status_code != 200:
                    try:
                        body = json.loads(resp.raw.read(65536))
                    except ValueError:
                        body = None
                    # A member without a leader answers 503 and a stream
                    # error: {"error": {"grpc_code": 14, ...}}.
                    _raise_for(what, resp.status_code, body)
                return _Stream(resp, timeout, url)
            except BaseException:
                resp.close()
                raise

    def _next_message(self, path, cursor, deadline):
        """The stream's next message, or None (deadline, or aborted)."""
        stream = cursor.stream
        try:
            with self._translate('watch %s' % path, stream):
                try:
                    message = stream.next_message(deadline)
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
        """Fold one stream message into the cursor.

        Checks the header first: a revision below where the cursor stands
        raises ClusterRewound.  A progress notification (a header and
        nothing else) moves ``received`` up to its revision: etcd has sent
        every event up to it.  A "created" answer moves nothing (history
        may follow it).  Raises without changing the cursor.
        """
        what = 'watch %s' % path
        result = message.get('result') if isinstance(message, dict) else None
        if not isinstance(result, dict):
            _raise_for(what, None, message, stream=True)
        current = _revision(result)
        self._observe(result)
        stands = max(cursor.floor - 1, cursor.received)
        if current is not None and current < stands:
            raise exceptions.ClusterRewound(
                '%s: etcd is at revision %d, below %d where this watch '
                'stands: its data was wiped or restored'
                % (what, current, stands), current)
        compacted = int(result.get('compact_revision', 0))
        if compacted:
            raise exceptions.HistoryGone(
                '%s: etcd compacted its history up to revision %d; this '
                'watch needed it from %d'
                % (what, compacted, cursor.start_revision()), current)
        if result.get('canceled'):
            reason = result.get('cancel_reason') or 'no reason given'
            if 'no leader' in reason:
                raise exceptions.EtcdUnavailable(
                    '%s: etcd canceled the watch: %s' % (what, reason))
            raise exceptions.BackendError(
                '%s: etcd canceled the watch: %s' % (what, reason))
        events = []
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
        for event in events:
            cursor.received = max(cursor.received, event.index)
            if event.index >= cursor.floor:
                cursor.events.append(event)
        if not events and not result.get('created') and current is not None:
            # A progress notification.
            cursor.received = max(cursor.received, current)

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
