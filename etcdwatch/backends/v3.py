"""The etcd v3 backend, over etcd3gw's client for etcd's HTTP/JSON gateway.

The threaded transport: what v3 means (request bodies, answers, error
shapes, watch cursors, leases) is decided in
:mod:`etcdwatch.backends.v3proto`; this module only does the I/O, with the
etcd3gw client's address, its ``requests`` session (TLS settings included)
and its timeout.  It sends its own requests to the gateway: so that every
request is bounded in time, text is encoded as UTF-8 (etcd3gw encodes str
as latin-1), and watches survive what etcd3gw's watch helper does not
(see :class:`V3Backend`).

Text: keys and values are bytes in etcd v3.  They are decoded as UTF-8
with ``errors='surrogateescape'``: valid UTF-8 arrives as the same str as
on v2, and any other byte becomes a lone surrogate, so nothing fails to
load and ``value.encode('utf-8', 'surrogateescape')`` gives the original
bytes back.  Str written through this backend is encoded the same way.

Needs etcd >= 3.4 (tested on 3.5); the v2 API may be disabled.
"""

import json
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
from etcdwatch.backends import v3auth
from etcdwatch.backends import v3proto
from etcdwatch import exceptions

LOG = logging.getLogger(__name__)

#: Seconds a request (other than a watch) may take when the etcd3gw client
#: has no timeout of its own: a paused etcd must not hang a recipe forever.
DEFAULT_TIMEOUT = 10.0
#: Keys per request when reading a tree (all pages read at one revision).
PAGE_SIZE = v3proto.PAGE_SIZE
#: Seconds between two looks for idle watch streams to close.
REAP_INTERVAL = 1.0
#: How much longer than asked a stream read may wait, so that following
#: a busy stream does not set the socket's timeout (a system call) once
#: per message.
_TIMEOUT_SLACK = 0.02
#: Bytes a stream read takes at most.
_READ_SIZE = 65536

# The rules' old private names in this module, kept for code (and tests)
# written before the split.
_MIN_SILENCE = v3proto.MIN_SILENCE
_WATCH_HEADERS = v3proto.WATCH_HEADERS
_b64 = v3proto.b64
_text = v3proto.text
_ttl = v3proto.ttl_seconds
_revision = v3proto.revision
_TooLarge = v3proto.TooLarge
_gateway_error = v3proto.gateway_error
_raise_for = v3proto.raise_for
_ChunkedDecoder = v3proto.ChunkedDecoder


class _Translate(v3proto.Translate):
    """Turns requests', urllib3's and etcd3gw's errors into etcdwatch's.

    ``on_unavailable`` (if given) is called before an
    :class:`~etcdwatch.exceptions.EtcdUnavailable` leaves the block.
    """

    RULES = (
        # Before OSError: every requests exception is one.
        (requests.exceptions.RequestException,
         (requests.exceptions.ConnectionError, requests.exceptions.Timeout)),
        (etcd3gw.exceptions.Etcd3Exception,
         (etcd3gw.exceptions.ConnectionFailedError,
          etcd3gw.exceptions.ConnectionTimeoutError)),
        # A stream's socket, read directly.
        ((urllib3.exceptions.HTTPError, OSError), BaseException),
    )


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


class _TimedReads(object):
    """Reads of a socket that wait at most a timeout each.

    The socket's own timeout (one poll in C, then the read), which works
    for TLS sockets and green ones too.  Setting it is a system call of
    its own, so a timeout up to ``_TIMEOUT_SLACK`` longer than asked is
    kept rather than set again for every message of a busy stream.

    Not a blocking read that the kernel ends (``SO_RCVTIMEO``), though
    that is one system call instead of two: a signal (a handler, Ctrl-Z,
    a profiler or debugger attaching) makes Python retry such a read with
    its whole timeout again, so a watch could overrun its deadline
    without bound.
    """

    def __init__(self, sock):
        self.sock = sock
        # The socket's timeout as last set (0: non-blocking, as given).
        self._timeout = 0.0
        self._selector = None

    def recv(self, deadline):
        """What has arrived (``b''`` at the end), or None at ``deadline``.

        ``deadline``: a ``time.monotonic()`` value, or None to wait for
        ever; once passed, only what has arrived is taken.
        """
        while True:
            # Seconds left (0 once passed); the socket's timeout is
            # set only if the one it has is not close enough.
            timeout = None
            if deadline is not None:
                timeout = deadline - time.monotonic()
                if not timeout > 0:
                    timeout = 0.0
            current = self._timeout
            if current != timeout and not (
                    timeout and current and
                    timeout <= current <= timeout + _TIMEOUT_SLACK):
                self.sock.settimeout(timeout)
                self._timeout = timeout
            try:
                return self.sock.recv(_READ_SIZE)
            except socket.timeout:
                return None
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError,
                    ssl.SSLWantWriteError):
                # A socket that stays non-blocking whatever its timeout
                # (eventlet's green TLS socket): wait until it is readable.
                if timeout == 0:
                    return None
                self._wait_readable(timeout)

    def _wait_readable(self, timeout):
        if self._selector is None:
            self._selector = selectors.DefaultSelector()
            self._selector.register(self.sock, selectors.EVENT_READ)
        self._selector.select(timeout)

    def close(self):
        if self._selector is not None:
            self._selector.close()


class _Stream(object):
    """One open ``/watch`` response: JSON messages, one per line.

    Each read waits at most until the caller's deadline (the socket's own
    timeout, green under eventlet's monkey patching), and a read that
    times out takes nothing, so a deadline passing never harms the stream:
    the next call continues it.  Bytes TLS has already decrypted are read
    without waiting (the SSL layer looks at its buffer first).  The HTTP
    body is decoded by a :class:`~etcdwatch.backends.v3proto.MessageBuffer`,
    chunked or not.
    """

    def __init__(self, response, timeout, url=None):
        self.response = response
        #: The timeout of the last watch call that used it (for reaping).
        self.timeout = timeout
        self.last_used = time.monotonic()
        #: The member's base URL, for moving off it when it fails.
        self.url = url
        self.aborted = False
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
        self._buffer = v3proto.MessageBuffer(chunked=bool(raw.chunked))
        self._sock.setblocking(False)
        # What the HTTP reader buffered past the headers; from now on
        # the socket is read directly.
        try:
            first = reader.read1(1 << 20)
        except (BlockingIOError, ssl.SSLWantReadError,
                ssl.SSLWantWriteError):
            first = b''
        self._buffer.feed(first or b'')
        self._reads = _TimedReads(self._sock)
        #: Whether a whole message is received (next_message won't wait):
        #: the buffer's own method (asked once per message).
        self.has_message = self._buffer.has_message

    def next_message(self, deadline):
        """The next message, or None if ``deadline`` passes first.

        ``deadline`` is a ``time.monotonic()`` value, or None to wait for
        ever.  Returning None leaves the stream usable.  Raises
        :class:`~etcdwatch.backends.v3proto.StreamEnded` at the end of the
        stream (or after :meth:`abort`), and transport errors as they come.
        """
        buffer, recv = self._buffer, self._reads.recv
        while True:
            message = buffer.next()
            if message is not None:
                return message
            # Past the deadline, this only takes what has arrived.
            data = recv(deadline)
            if data is None:
                return None
            if not data:
                buffer.end()
            buffer.feed(data)

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
            self._reads.close()
            self.response.close()
        except Exception:  # noqa: broad; closing must not fail the caller
            pass


class _MessageStream(object):
    """A ``/watch`` response whose body hands over whole messages.

    An in-memory etcd (:class:`etcdwatch.testing.FakeEtcd3Server`) has no
    socket to read: its response's ``raw.read_message(timeout)`` returns
    the next message, None when the timeout passes, ``b''`` at the end.
    The same contract as :class:`_Stream`.
    """

    def __init__(self, response, timeout, url=None):
        self.response = response
        self.timeout = timeout
        self.last_used = time.monotonic()
        self.url = url
        self.aborted = False
        self._read = response.raw.read_message
        self._buffer = v3proto.MessageBuffer(chunked=False)
        self.has_message = self._buffer.has_message

    def next_message(self, deadline):
        while True:
            message = self._buffer.next()
            if message is not None:
                return message
            wait = None
            if deadline is not None:
                wait = max(0.0, deadline - time.monotonic())
            data = self._read(wait)
            if data is None:
                return None
            if not data:
                self._buffer.end()
            self._buffer.feed(data)

    def abort(self):
        self.aborted = True
        try:
            self.response.raw.close()
        except Exception:  # noqa: broad; waking must not fail the caller
            pass

    def close(self):
        try:
            self.response.close()
        except Exception:  # noqa: broad; closing must not fail the caller
            pass


def _stream_of(response, timeout, url):
    if callable(getattr(response.raw, 'read_message', None)):
        return _MessageStream(response, timeout, url)
    return _Stream(response, timeout, url)


class _Cursor(v3proto.Cursor):
    """A :class:`~etcdwatch.backends.v3proto.Cursor` with its stream.

    ``lock``: held by the one watch call using it; ``stream``: the
    :class:`_Stream` open for it, or None.
    """

    def __init__(self, key, range_end, start):
        self.lock = threading.Lock()
        self.stream = None
        #: 'watch <path>', for errors (made once).
        self.what = None
        super(_Cursor, self).__init__(key, range_end, start)

    def close_stream(self):
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.close()


class _LockedEpochs(v3proto.ClusterEpochs):
    """ClusterEpochs shared by threads: each method under one lock."""

    def __init__(self):
        super(_LockedEpochs, self).__init__()
        self._lock = threading.Lock()
        # (cluster ID, epoch), replaced whole under the lock, so the lock
        # free path below never pairs a new epoch with the old ID.
        self._known = (None, 0)

    def observe(self, result):
        header = result.get('header') if isinstance(result, dict) else None
        known = self._known
        if header and header.get('cluster_id') == known[0]:
            # The cluster every answer comes from: nothing to note (once
            # per watch message, so without the lock).
            return known[1]
        with self._lock:
            epoch = super(_LockedEpochs, self).observe(result)
            self._known = (self.cluster_id, epoch)
            return epoch

    def learnt(self, ident, epoch):
        with self._lock:
            super(_LockedEpochs, self).learnt(ident, epoch)

    def check(self, ident, what):
        if self.idents.get(ident) == self.epoch:
            # Nothing changed under ident (a dict read is atomic; a change
            # racing with it is caught by the next check).
            return
        with self._lock:
            super(_LockedEpochs, self).check(ident, what)


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
    :class:`~etcdwatch.exceptions.HistoryGone`; a new watch canceled for
    want of a token or a permission is opened again once with a new token
    (:mod:`~etcdwatch.backends.v3auth`), then raises
    :class:`~etcdwatch.exceptions.EtcdPermissionDenied`; any other
    cancellation raises :class:`~etcdwatch.exceptions.BackendError`.  No
    thread is ever started.  :meth:`close` closes every stream; a stream
    left idle for twice its last call's timeout (plus a second) is closed
    by the next call on this backend.

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
    catchup_min_lag = v3proto.CATCHUP_MIN_LAG
    catchup_tree_fraction = v3proto.CATCHUP_TREE_FRACTION

    def __init__(self, client):
        super(V3Backend, self).__init__(client)
        self.timeout = client.timeout or DEFAULT_TIMEOUT
        self._api_path = None
        self._lock = threading.Lock()
        # How many times close() was called: a watch that opened its
        # stream while close() ran gives up as if it had been closed.
        self._closes = 0
        self._cursors = {}
        self._reaped_at = float('-inf')
        # (key, value) -> the lease we bound the key to, to save a read on
        # each refresh.  Always checked against the key itself.
        self._leases = {}
        # The cluster ID etcd's answers carry, its epochs, and per watched
        # (key, range_end) the epoch in which its caller learnt its
        # position.
        self._epochs = _LockedEpochs()
        # The token: the client's (FailoverEtcd3Client's username and
        # password), shared by every backend on that client; else none.
        self._auth = getattr(client, 'auth', None) or v3auth.Auth()
        self._auth_lock = getattr(client, 'auth_lock', None) or (
            threading.Lock())

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
                v3proto.raise_for('etcd version', resp.status_code, None)
            return v3proto.api_path(resp.json()['etcdserver'])

    def _call(self, path, payload, what, timeout=None):
        """POST one request; return the answer's JSON.

        Within ``timeout`` seconds, or the backend's timeout if shorter.
        With credentials, authenticates first if there is no token, and
        once more (then retries once) if etcd refuses the token
        (:mod:`~etcdwatch.backends.v3auth`).
        """
        now = time.monotonic()
        if now - self._reaped_at >= REAP_INTERVAL:
            self._reap_idle(now)
        for attempt in (1, 2):
            generation, headers = self._token()
            try:
                return self._post(path, payload, what, timeout, headers)
            except exceptions.BackendError as e:
                if not (isinstance(e, v3auth.TokenRejected) and
                        attempt == 1 and self._auth.enabled):
                    error = self._auth.give_up(e)
                    if error is e:
                        raise
                    raise error from e
                self._token_rejected(generation)

    def _token(self):
        """``(generation, headers)`` of the token to send.

        Authenticates first if a token is needed (one thread at a time).
        """
        auth = self._auth
        if not auth.enabled:
            return auth.generation, {}
        with self._auth_lock:
            if auth.needed():
                path, payload, what = auth.authenticate()
                try:
                    auth.authenticated(self._post(path, payload, what,
                                                  None, {}))
                except v3auth.AuthNotEnabled:
                    auth.not_enabled()
                except exceptions.EtcdAuthError as e:
                    raise auth.name(e)
            return auth.generation, auth.headers()

    def _token_rejected(self, generation):
        with self._auth_lock:
            self._auth.rejected(generation)

    def _post(self, path, payload, what, timeout, headers):
        timeout = self.timeout if timeout is None else min(timeout,
                                                           self.timeout)
        # No headers argument without a token: for sessions that take none.
        extra = {'headers': headers} if headers else {}
        with self._translate(what):
            resp = self._session.post(self._url(path), json=payload,
                                      timeout=timeout, **extra)
            try:
                body = resp.json()
            except ValueError:
                body = None
            body = v3proto.unary_answer(what, resp.status_code, body)
            self._epochs.observe(body)
            return body

    def _run(self, operation):
        """Run a :mod:`~etcdwatch.backends.v3proto` operation; its result."""
        steps = v3proto.Steps(operation)
        request = steps.start()
        while request is not None:
            try:
                answer, error = self._call(*request), None
            except exceptions.BackendError as e:
                answer, error = None, e
            request = steps.resume(answer, error)
        return steps.result

    # -- reads ------------------------------------------------------------

    def read_tree(self, path):
        """Every key below ``path + '/'`` at one revision.

        A key named ``path`` itself is not part of the tree.  Big trees are
        read in pages of :data:`PAGE_SIZE` keys, all at the first page's
        revision; if etcd compacts that revision meanwhile, the read starts
        over (three times at most).
        """
        # The watch of this tree must not continue a half-returned index
        # that this snapshot already covers.
        self._forget_cursor(v3proto.tree_ident(path))
        return self._run(v3proto.read_tree(path, self._epochs, PAGE_SIZE))

    def read_key(self, key):
        return self._run(v3proto.read_key(key, self._epochs))

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
        return self._run(v3proto.check_current(path, index, self._epochs))

    # -- watches ----------------------------------------------------------

    def watch_tree(self, path, from_index, timeout):
        """The first event below ``path + '/'`` at ``from_index`` or later.

        Events that share an index (a transaction, a prefix delete: one
        DELETE per key) come one per call: asking again from ``index + 1``
        right after one of them continues with the next.  Returns None
        after ``timeout`` seconds (``None``: no limit) without an event,
        plus the time to open a connection if one is needed.
        """
        return self._watch(path, *v3proto.tree_ident(path), from_index,
                           timeout)

    def watch_tree_events(self, path, from_index, timeout):
        """Every event at hand below ``path + '/'``: a whole message.

        See :meth:`Backend.watch_tree_events`.  A watcher applies them in
        one pass: one call per message rather than per event.
        """
        return self._watch(path, *v3proto.tree_ident(path), from_index,
                           timeout, whole=True)

    def watch_key(self, key, from_index, timeout):
        return self._watch(key, *v3proto.key_ident(key), from_index, timeout)

    def _watch(self, path, key, range_end, from_index, timeout,
               whole=False):
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        closes = self._closes
        ident = (key, range_end)
        cursor = self._cursor(ident, from_index, now)
        # Free but for a close() racing with us: try that first (a timed
        # acquire costs three times as much, once per watch message).
        if not cursor.lock.acquire(False) and not cursor.lock.acquire(
                timeout=-1 if timeout is None else max(0, timeout)):
            return None
        what = cursor.what
        if what is None:
            what = cursor.what = 'watch %s' % path
        epochs = self._epochs
        refused = False
        try:
            # Continuing right after the events last returned (following
            # a stream, once per message) moves nothing: position() only
            # if not.
            if (from_index != cursor.floor or
                    cursor.returned != from_index - 1) and (
                    cursor.position(from_index)):
                cursor.close_stream()
            # ClusterEpochs.check's question, asked here first: this runs
            # once per watch message, and the answer is nearly always no.
            if epochs.idents.get(ident) != epochs.epoch:
                epochs.check(ident, what)
            while True:
                if cursor.events:
                    stream = cursor.stream
                    ready = cursor.ready(whole, whole and stream is not None
                                         and stream.has_message())
                    if ready is not None:
                        return ready
                if cursor.stream is None:
                    try:
                        cursor.stream = self._open(path, cursor, deadline,
                                                   timeout)
                    except v3auth.TokenRejected as e:
                        # Refused before the stream began (not seen on
                        # etcd 3.5, whose refusals are cancellations).
                        if refused or not self._auth.enabled:
                            raise self._auth.give_up(e) from e
                        refused = True
                        self._token_rejected(self._auth.generation)
                        continue
                    if cursor.stream is None:
                        return None
                    if self._closes != closes:
                        # close() came while the stream was opening: it
                        # could not close this one, so we do.
                        cursor.close_stream()
                        return None
                try:
                    message = self._next_message(path, cursor, deadline)
                except exceptions.BackendError:
                    if cursor.events:
                        # See the take below: the events at hand come
                        # first.
                        return cursor.ready(whole)
                    raise
                if message is None:
                    # Events at hand (a whole line received was blank, or
                    # the stream was closed) are not held back.
                    return cursor.ready(whole)
                stream = cursor.stream
                try:
                    v3proto.take(cursor, epochs, message, what)
                except v3auth.TokenRejected as e:
                    # A new watch refused for want of a token or of a
                    # permission (etcd cannot tell which): once more with
                    # a new token, then EtcdPermissionDenied.
                    cursor.close_stream()
                    if refused or not self._auth.enabled:
                        raise self._auth.give_up(e) from e
                    refused = True
                    self._token_rejected(stream.auth_generation)
                    continue
                except exceptions.BackendError as e:
                    # Take all of a message or none of it: the next stream
                    # starts after the last revision taken.
                    cursor.close_stream()
                    if isinstance(e, exceptions.EtcdUnavailable):
                        self._member_unavailable(stream.url)
                    if cursor.events and not isinstance(
                            e, exceptions.ClusterRewound):
                        # A message read only to join the events at hand
                        # failed: they come back now, and the next call's
                        # new stream meets the failure again (or a
                        # healthy member).
                        return cursor.ready(whole)
                    raise
                if epochs.idents.get(ident) != epochs.epoch:
                    epochs.check(ident, what)
        except exceptions.ClusterRewound:
            self._drop_cursor(ident, cursor)
            raise
        finally:
            stream = cursor.stream
            if stream is not None:
                stream.last_used = time.monotonic()
                stream.timeout = timeout
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
        what = 'watch %s' % path
        connect = self.timeout if remaining is None else min(remaining,
                                                             self.timeout)
        url = self.client.base_url
        generation, token = self._token()
        with self._translate(what):
            try:
                resp = self._session.post(
                    self._url('watch'), json=cursor.create_request(),
                    headers=dict(v3proto.WATCH_HEADERS, **token),
                    stream=True, timeout=(connect, remaining))
            except requests.exceptions.ReadTimeout:
                return v3proto.unanswered(what, remaining)
            try:
                if resp.status_code != 200:
                    try:
                        body = json.loads(resp.raw.read(65536))
                    except ValueError:
                        body = None
                    # A member without a leader answers 503 and a stream
                    # error: {"error": {"grpc_code": 14, ...}}.
                    v3proto.raise_for(what, resp.status_code, body)
                stream = _stream_of(resp, timeout, url)
                #: The token it was opened with.
                stream.auth_generation = generation
                #: Its reads' error translation (made once: a read per
                #: message).
                stream.translate = self._translate(what, stream)
                return stream
            except BaseException:
                resp.close()
                raise

    def _next_message(self, path, cursor, deadline):
        """The stream's next message, or None (deadline, or aborted)."""
        stream = cursor.stream
        try:
            message = stream.next_message(deadline)
        except Exception as e:
            # Translated here, not in a with block around the read: that
            # is two calls more per message.
            try:
                with stream.translate:
                    if isinstance(e, v3proto.StreamEnded):
                        raise exceptions.EtcdUnavailable(
                            'watch %s: etcd ended the stream' % path)
                    raise
            except exceptions.BackendError:
                cursor.close_stream()
                if stream.aborted:
                    return None
                raise
        if stream.aborted:
            cursor.close_stream()
            return None
        return message

    def _cursor(self, ident, from_index, now):
        """The cursor of ``ident``, made at ``from_index`` if there is none.

        Also closes idle streams, once per :data:`REAP_INTERVAL` (``now``:
        ``time.monotonic()``).
        """
        if now - self._reaped_at >= REAP_INTERVAL:
            self._reap_idle(now, keep=ident)
        cursor = self._cursors.get(ident)     # atomic: no lock to find one
        if cursor is not None:
            return cursor
        with self._lock:
            cursor = self._cursors.get(ident)
            if cursor is None:
                cursor = self._cursors[ident] = _Cursor(
                    ident[0], ident[1], from_index)
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

    def _reap_idle(self, now, keep=None):
        # A stream nobody reads (say, a follower's that won and now leads)
        # would hold a connection and a watch on etcd for nothing.  Streams
        # idle for seconds: once a second is soon enough, and a watch call
        # (once per message) stays cheap.
        self._reaped_at = now
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

        A watch blocked in another thread returns None at once, also one
        whose stream was opening meanwhile.  Events
        already received are kept, so a later watch continues exactly; the
        backend stays usable.
        """
        with self._lock:
            self._closes += 1
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
        return self._run(v3proto.create(self._leases, key, value, ttl))

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
        return self._run(v3proto.refresh(self._leases, key, value, ttl))

    def delete_if(self, key, value):
        """Delete ``key`` if it holds ``value``, and revoke its lease."""
        return self._run(v3proto.delete_if(self._leases, key, value))

    def replace(self, key, old, new, ttl):
        """Write ``new`` into ``key`` if it holds ``old``, on its lease."""
        return self._run(v3proto.replace(self._leases, key, old, new))

    # -- lock queue -------------------------------------------------------

    def create_unique(self, prefix, value, ttl):
        """``prefix/<random id>`` on a new lease: ``(key, create rev)``."""
        return self._run(v3proto.create_unique(self._leases, prefix, value,
                                               ttl))

    def read_queue(self, prefix):
        """The keys below ``prefix``, by create revision (a Queue)."""
        return self._run(v3proto.read_queue(prefix))
