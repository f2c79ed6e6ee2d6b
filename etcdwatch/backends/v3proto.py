"""etcd v3 through its JSON gateway, without the I/O (sans-IO).

Everything the v3 backends decide lives here, in plain objects and
functions that never open a socket, take a lock, sleep or read a clock:
request bodies, the parsing of answers and watch messages, the
translation of the gateway's error shapes into :mod:`etcdwatch.exceptions`,
the framing of a watch stream, the position of a watch (:class:`Cursor`),
which etcd cluster answers (:class:`ClusterEpochs`), and the multi-request
operations (create, refresh, delete, tree reads) as generators of
:class:`Request` that a transport runs with its own I/O.  Its only side
effect is a log line (oslo.log) when another cluster answers or a page is
too large for the gateway.

Two transports run these rules: :mod:`etcdwatch.backends.v3` (threads,
requests' session) and :mod:`etcdwatch.backends.v3_async` (asyncio,
httpx).  So a sync and an async elector on one election use the same
keys, leases and compares, and a watch message means the same to both.

Driving a generator: send it the answer (the JSON body, after
:meth:`ClusterEpochs.observe`) of each :class:`Request` it yields, or
``throw`` it the :class:`~etcdwatch.exceptions.BackendError` the request
raised; its return value is the operation's result (see :class:`Steps`).

Text: keys and values are bytes in etcd v3; they are decoded as UTF-8
with ``errors='surrogateescape'`` (:func:`text`), so nothing fails to
load and :func:`b64` gives the original bytes back.
"""

import base64
import binascii
import collections
import json
import math
import re
import uuid
from typing import Any, List, Sequence, Tuple, Union

from oslo_log import log as logging

from etcdwatch.backends import base
from etcdwatch.backends import v3auth
from etcdwatch import exceptions

LOG = logging.getLogger(__name__)

#: Keys per request when reading a tree (all pages read at one revision).
PAGE_SIZE = 1000
#: Seconds without an answer to a new watch after which etcd is deemed
#: unavailable (a shorter wait proves nothing).
MIN_SILENCE = 0.5
#: The most events one whole-message watch call gathers from messages
#: already received (one message may hold more: etcd sends up to 1,000
#: revisions in one).
BATCH_EVENTS = 1000

#: A v3 watcher's defaults for CATCHUP_MIN_LAG / CATCHUP_TREE_FRACTION.  A
#: stream delivers missed events in batches (about 0.015 ms each on
#: loopback), while a re-read costs about as much as walking a tree's worth
#: of events, and restarts the stream at a past revision, which etcd answers
#: only at its next 100 ms round for late watchers: under steady writes a
#: small threshold would re-read every round.  So only re-read past the
#: tree's size, and never for under 1000 events.
CATCHUP_MIN_LAG = 1000
CATCHUP_TREE_FRACTION = 1

# gRPC status codes that mean "try again later" rather than "wrong".
GRPC_UNAVAILABLE = frozenset([4, 14])      # DEADLINE_EXCEEDED, UNAVAILABLE
HTTP_UNAVAILABLE = frozenset([408, 502, 503, 504])
# RESOURCE_EXHAUSTED: before etcd 3.4.17 the gateway refuses any message
# over 4 MiB, on every retry alike.
GRPC_TOO_LARGE = 8

#: Sent with every watch: etcd then cancels the watch ("etcdserver: no
#: leader") when the member loses its raft leader, instead of keeping it
#: open and silent on a member cut off from its cluster (etcd #10819).
WATCH_HEADERS = {'Grpc-Metadata-hasleader': 'true',
                 # Lines must arrive as etcd flushes them.
                 'Accept-Encoding': 'identity'}


# -- members ------------------------------------------------------------------

Endpoint = Tuple[str, int]


def parse_endpoint(entry: Union[str, Sequence[Any]]) -> Endpoint:
    """``(host, port)`` of one member.

    ``entry`` is ``'host:port'`` (IPv6 in brackets) or a ``(host, port)``
    pair.  Raises ValueError naming ``endpoints``.
    """
    if isinstance(entry, str):
        host, sep, port = entry.rpartition(':')
        if not sep or not port.isdigit() or not host:
            raise ValueError('endpoints: %r is not HOST:PORT' % (entry,))
        host = host[1:-1] if host.startswith('[') else host
        return host, int(port)
    host, port = tuple(entry)
    if not isinstance(host, str) or not host:
        raise ValueError('endpoints: %r has no host' % (entry,))
    if isinstance(port, bool) or not isinstance(port, int) or not (
            0 < port < 65536):
        raise ValueError('endpoints: %r has no valid port' % (entry,))
    return host, port


def parse_endpoints(
        endpoints: Union[str, Sequence[Union[str, Sequence[Any]]]]
) -> List[Endpoint]:
    """The members of a cluster, in order.

    ``endpoints`` is a list of what :func:`parse_endpoint` takes, or one
    comma-separated string.  Raises ValueError for an empty list or a bad
    entry.
    """
    if isinstance(endpoints, str):
        endpoints = [part.strip() for part in endpoints.split(',')
                     if part.strip()]
    parsed = [parse_endpoint(e) for e in endpoints]
    if not parsed:
        raise ValueError('endpoints: at least one member is needed')
    return parsed


def base_url(protocol: str, endpoint: Endpoint) -> str:
    """``protocol://host:port`` of a member (an IPv6 host in brackets)."""
    host, port = endpoint
    if ':' in host:
        host = '[%s]' % host
    return '%s://%s:%d' % (protocol, host, port)


# -- text, TTLs, headers ------------------------------------------------------

def b64(value):
    """``value`` (str or bytes) as the gateway's base64 text."""
    if not isinstance(value, bytes):
        value = str(value).encode('utf-8', 'surrogateescape')
    return base64.b64encode(value).decode('ascii')


def text(encoded):
    """The str of a gateway base64 field (missing or empty: ``''``)."""
    # etcd's JSON leaves out empty fields: a missing value is ''.
    # binascii directly: base64.b64decode's checks cost as much as the
    # decoding, twice per event.
    return binascii.a2b_base64(encoded or '').decode('utf-8',
                                                     'surrogateescape')


def ttl_seconds(seconds):
    """A lease TTL for ``seconds``: whole seconds, rounded up, at least 1."""
    # etcd silently raises a TTL below its minimum (2 s with default
    # flags): longer than asked, which is the safe direction.
    return max(1, int(math.ceil(seconds)))


def revision(result):
    """The header revision of an answer, or None."""
    header = result.get('header') or {}
    rev = header.get('revision')
    return None if rev is None else int(rev)


def api_path(version):
    """The gateway's API path for etcd's server ``version`` ('3.5.1')."""
    major_minor = tuple(int(p) for p in version.split('.')[:2])
    if major_minor >= (3, 4):
        return 'v3'
    if major_minor >= (3, 3):
        return 'v3beta'
    return 'v3alpha'


def tree_ident(path):
    """The watched (key, range_end) of the tree below ``path + '/'``."""
    return (path + '/', path + '0')


def key_ident(key):
    """The watched (key, range_end) of one key."""
    return (key, None)


# -- errors -------------------------------------------------------------------

class TooLarge(exceptions.BackendError):
    """The gateway refused a message over its size limit (gRPC code 8)."""


def gateway_error(body):
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


def raise_for(what, status, body, current_index=None, stream=False):
    """Raise the etcdwatch error for a gateway error answer.

    Compaction: :class:`~etcdwatch.exceptions.HistoryGone`; no leader, an
    unavailable or timed-out etcd:
    :class:`~etcdwatch.exceptions.EtcdUnavailable`; an auth refusal: what
    :func:`~etcdwatch.backends.v3auth.error_for` says; a message too large
    for the gateway: :class:`TooLarge` (ask for less), or inside a watch
    stream (``stream``), where the watch cannot go on, HistoryGone (the
    caller re-reads); anything else: BackendError.
    """
    code, message = gateway_error(body)
    if 'required revision has been compacted' in message:
        raise exceptions.HistoryGone('%s: %s' % (what, message),
                                     current_index)
    if code == GRPC_TOO_LARGE:
        if stream:
            raise exceptions.HistoryGone(
                '%s: a watch message was too large for etcd\'s gateway '
                '(RESOURCE_EXHAUSTED; etcd before 3.4.17 refuses messages '
                'over 4 MiB), so the events cannot be walked: %s'
                % (what, message), current_index)
        raise TooLarge('%s: answer too large for etcd\'s gateway: %s'
                       % (what, message))
    if (status in HTTP_UNAVAILABLE or code in GRPC_UNAVAILABLE or
            'no leader' in message):
        raise exceptions.EtcdUnavailable('%s: etcd unavailable (%s): %s'
                                         % (what, status or code, message))
    auth_error = v3auth.error_for(what, code, message)
    if auth_error is not None:
        raise auth_error
    raise exceptions.BackendError('%s: etcd answered %s: %s'
                                  % (what, status or code, message))


def unary_answer(what, status, body):
    """The result of a unary answer (HTTP ``status``, parsed ``body``).

    Raises as :func:`raise_for` for a status other than 200.  Stream
    endpoints (lease keepalive) wrap their one answer in ``result``: it is
    unwrapped.
    """
    if status != 200:
        raise_for(what, status, body)
    if not isinstance(body, dict):
        raise exceptions.BackendError('%s: unexpected answer from etcd: %r'
                                      % (what, body))
    if 'result' in body and 'header' not in body:
        body = body['result']
    return body


def unanswered(what, waited):
    """A new watch got no answer in ``waited`` seconds: what that means.

    Returns None (the caller returns "nothing happened") for a wait too
    short to blame etcd for; else raises
    :class:`~etcdwatch.exceptions.EtcdUnavailable`: etcd accepted the
    connection but did not even answer the request (paused, overloaded).
    As on v2, an error, so the caller backs off and says so; a stream etcd
    answered and then kept quiet on is no error.
    """
    if waited is not None and waited < MIN_SILENCE:
        return None
    raise exceptions.EtcdUnavailable(
        '%s: etcd did not answer within %.1fs' % (what, waited or 0))


class Translate(object):
    """Turns a transport's errors into etcdwatch's, at one boundary.

    A context manager: an exception leaving the block is matched against
    :attr:`RULES` (the first rule whose types match decides): one of that
    rule's ``unavailable`` types becomes
    :class:`~etcdwatch.exceptions.EtcdUnavailable`, any other
    :class:`~etcdwatch.exceptions.BackendError`, with the original as
    ``__cause__``.  ValueError, KeyError and TypeError (not JSON, or JSON
    without the fields etcd always sends) become BackendError; etcdwatch's
    own errors and anything else (bugs, cancellation) pass through.
    ``on_unavailable`` (if given) is called before an EtcdUnavailable
    leaves the block.  Transports subclass it with their RULES.
    """

    #: ((exception types, the subset that mean unreachable), ...)
    RULES: Tuple[Tuple[Any, Any], ...] = ()

    def __init__(self, what, on_unavailable=None):
        self.what = what
        self.on_unavailable = on_unavailable

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            return False
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
        for kinds, unavailable_kinds in self.RULES:
            if isinstance(exc, kinds):
                unavailable = isinstance(exc, unavailable_kinds)
                break
        else:
            if isinstance(exc, (ValueError, KeyError, TypeError)):
                raise exceptions.BackendError(
                    '%s: unexpected answer from etcd: %r' % (self.what, exc)
                ) from exc
            return False
        if unavailable:
            raise exceptions.EtcdUnavailable(
                '%s: etcd unreachable: %s' % (self.what, exc)) from exc
        raise exceptions.BackendError('%s: %s' % (self.what, exc)) from exc


# -- watch streams: framing ---------------------------------------------------

#: A chunk's size line (up to its newline): hex digits, then perhaps
#: extensions.
_CHUNK_SIZE = re.compile(rb'[ \t]*([0-9a-fA-F]+)[ \t]*(?:;[^\r\n]*)?\r?')


def _chunk_size(line):
    """A size line the pattern above refused: the lenient parse."""
    line = line.rstrip(b'\r')
    size = line.split(b';', 1)[0].strip()
    if not size or size.strip(b'0123456789abcdefABCDEF'):
        raise ValueError('chunked body: bad size %r' % line)
    return int(size, 16)


class ChunkedDecoder(object):
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
        # Positions into one buffer: a piece holding many chunks (a burst
        # of messages) is not copied once per chunk.
        buf = self._pending + data if self._pending else data
        end, pos, out = len(buf), 0, []
        state, left = self._state, self._left
        while state != 'done':
            if state == 'size':
                newline = buf.find(b'\n', pos)
                if newline < 0:
                    if end - pos > self._MAX_LINE:
                        raise ValueError('chunked body: framing line too long')
                    break
                size = _CHUNK_SIZE.fullmatch(buf, pos, newline)
                left = (int(size.group(1), 16) if size is not None else
                        _chunk_size(buf[pos:newline]))
                pos = newline + 1
                if not left:
                    state = 'trailer'
                    continue
                stop = pos + left
                if buf[stop:stop + 2] == b'\r\n':
                    # The whole chunk and its CRLF are here (a watch
                    # message usually comes in one piece): one slice.
                    out.append(buf[pos:stop])
                    pos, left = stop + 2, 0
                    continue
                state = 'data'
                continue
            if state == 'data':
                if pos >= end:
                    break
                stop = min(end, pos + left)
                out.append(buf[pos:stop])
                left -= stop - pos
                pos = stop
                if not left:
                    state = 'crlf'
                continue
            newline = buf.find(b'\n', pos)
            if newline < 0:
                if end - pos > self._MAX_LINE:
                    raise ValueError('chunked body: framing line too long')
                break
            line = buf[pos:newline].rstrip(b'\r')
            pos = newline + 1
            if state == 'crlf':
                if line:
                    raise ValueError('chunked body: chunk overruns its size')
                state = 'size'
            elif not line:          # the blank line after the trailers
                state = 'done'
                self.done = True
        self._state, self._left = state, left
        self._pending = buf[pos:]
        return out[0] if len(out) == 1 else b''.join(out)


_raw_json = json.JSONDecoder().raw_decode


def _json(line):
    """The JSON value of one line (bytes); ValueError if it is not JSON."""
    text = line.decode('utf-8')
    try:
        # json.loads minus its two whitespace scans: once per message.
        value, end = _raw_json(text)
    except ValueError:
        value, end = None, -1
    if end != len(text):
        # Surrounding whitespace, trailing data or no JSON at all:
        # json.loads decides (and words the error).
        return json.loads(text)
    return value


class StreamEnded(Exception):
    """The watch stream ended (after its last message)."""


class MessageBuffer(object):
    """The JSON messages of a watch stream's body, one per line.

    :meth:`feed` the body's bytes as they arrive (raw HTTP/1.1 chunked
    framing too, with ``chunked``), :meth:`end` at its end; :meth:`next`
    returns each complete message once.  Bytes of a message not yet
    complete stay here until the rest arrives, so reading can stop at any
    point and resume later.
    """

    def __init__(self, chunked=False):
        self._decoder = ChunkedDecoder() if chunked else None
        self._text = b''
        # Where the next line starts in _text: lines are taken by moving
        # it, not by copying the rest of the buffer after each.
        self._pos = 0
        self.ended = False

    def feed(self, data):
        """Add body bytes (raises ValueError for bad chunked framing)."""
        if self._decoder is not None:
            data = self._decoder.feed(data)
            if self._decoder.done:
                self.ended = True
        if self._pos >= len(self._text):
            # Every line taken (following live, the usual case): no copy.
            self._text, self._pos = data, 0
            return
        if self._pos:
            self._text = self._text[self._pos:]
            self._pos = 0
        self._text += data

    def end(self):
        """The body ended (no more bytes will come)."""
        self.ended = True

    def has_line(self):
        """Whether a complete line is waiting."""
        return self._text.find(b'\n', self._pos) >= 0

    def has_message(self):
        """Whether a whole message is waiting (a line that is not blank)."""
        text, pos = self._text, self._pos
        while True:
            newline = text.find(b'\n', pos)
            if newline < 0:
                return False
            if text[pos:newline].strip():
                return True
            pos = newline + 1

    def next(self):
        """The next message, or None until more bytes arrive.

        Raises :class:`StreamEnded` once the stream ended and every message
        was taken, ValueError for a line that is not JSON.
        """
        text = self._text
        while True:
            newline = text.find(b'\n', self._pos)
            if newline >= 0:
                line = text[self._pos:newline]
                self._pos = newline + 1
                if line.strip():
                    return _json(line)
                continue
            if not self.ended:
                return None
            # The gateway ends a stream error without a newline.
            line, self._text, self._pos = text[self._pos:], b'', 0
            if line.strip():
                return _json(line)
            raise StreamEnded()


# -- watch streams: what the messages mean ------------------------------------

class Cursor(object):
    """Where one watched key or prefix stands, across watch calls.

    ``floor``: the caller has every event below it.  ``received``: every
    event up to it has arrived (a new stream starts after it).  ``events``:
    arrived, not yet returned.  ``returned``: the index of the event just
    returned, while the next call may continue with the other events of
    that same index.  ``opened``: where the stream now open for it started
    (None before the first).
    """

    def __init__(self, key, range_end, start):
        self.key = key
        self.range_end = range_end
        self.reset(start)

    def reset(self, start):
        """Start over at ``start``: forget every event and position."""
        self.floor = start
        self.received = start - 1
        self.returned = None
        self.events = collections.deque()
        self.opened = None

    def position(self, from_index):
        """Stand where a call asking from ``from_index`` needs to be.

        Returns True if the cursor started over (an index already given was
        asked again: events must be replayed from etcd, so a stream open
        for this cursor must be closed), else False.
        """
        if from_index < self.floor:
            self.reset(from_index)
            return True
        if from_index == self.floor and self.returned == from_index - 1:
            # index + 1 right after an event: keep the rest of its index.
            return False
        while self.events and self.events[0].index < from_index:
            self.events.popleft()
        self.floor = from_index
        self.returned = None
        return False

    def pop(self):
        """The next event to return, or None."""
        if not self.events:
            return None
        event = self.events.popleft()
        self.returned = event.index
        self.floor = event.index + 1
        return event

    def pop_all(self):
        """Every event arrived and not yet returned, in order, or None.

        Messages carry whole revisions, so the list ends at the end of
        one: watching again from the last event's index + 1 continues with
        the next revision.
        """
        if not self.events:
            return None
        events = list(self.events)
        self.events.clear()
        self.returned = events[-1].index
        self.floor = self.returned + 1
        return events

    def ready(self, whole, more=False):
        """:meth:`pop_all` if ``whole``, else :meth:`pop`.

        With ``whole``, None while ``more`` (another message is received
        already) can add to the events, up to :data:`BATCH_EVENTS`: a
        reader that fell behind a busy stream takes the messages that
        piled up in one call, not one call each.
        """
        if not whole:
            return self.pop()
        if more and len(self.events) < BATCH_EVENTS:
            return None
        return self.pop_all()

    def start_revision(self):
        """Where a new stream for this cursor must start."""
        return max(self.floor, self.received + 1)

    def create_request(self):
        """The body of a ``watch`` request for a new stream from here."""
        self.opened = self.start_revision()
        request = {'key': b64(self.key),
                   'start_revision': self.opened,
                   'progress_notify': True}
        if self.range_end is not None:
            request['range_end'] = b64(self.range_end)
        return {'create_request': request}

    def take(self, result, what):
        """Fold one watch message's ``result`` into the cursor.

        Checks the header first: a revision below where the stream started
        (or below what it already received) raises ClusterRewound.  Not
        below where a later call moved the cursor: messages sent before
        that call, still on their way, carry the revision of their time.
        A progress notification (a header and nothing else) moves
        ``received`` up to its revision: etcd has sent every event up to
        it.  A "created" answer moves nothing (history
        may follow it).  Raises without changing the cursor, so a message
        is taken whole or not at all.
        """
        # revision(result), inline: once per message.
        current = (result.get('header') or {}).get('revision')
        if current is not None:
            current = int(current)
        start = self.floor if self.opened is None else self.opened
        stands = max(start - 1, self.received)
        if current is not None and current < stands:
            raise exceptions.ClusterRewound(
                '%s: etcd is at revision %d, below %d where this watch '
                'stands: its data was wiped or restored'
                % (what, current, stands), current)
        compacted = result.get('compact_revision')
        if compacted and int(compacted):
            compacted = int(compacted)
            raise exceptions.HistoryGone(
                '%s: etcd compacted its history up to revision %d; this '
                'watch needed it from %d'
                % (what, compacted, self.start_revision()), current)
        if result.get('canceled'):
            reason = result.get('cancel_reason') or 'no reason given'
            if 'no leader' in reason:
                raise exceptions.EtcdUnavailable(
                    '%s: etcd canceled the watch: %s' % (what, reason))
            refused = v3auth.watch_refusal(what, reason)
            if refused is not None:
                raise refused
            raise exceptions.BackendError(
                '%s: etcd canceled the watch: %s' % (what, reason))
        events = []
        # Up to 1,000 events a message: names bound once, events made as
        # plain tuples (kind, key, value, index, is_dir, current_index)
        # without the namedtuple's Python __new__, and text() inline.
        new, event, add, put, delete = tuple.__new__, base.Event, (
            events.append), base.PUT, base.DELETE
        decode = binascii.a2b_base64
        try:
            for change in result.get('events') or ():
                kv = change['kv']
                key = decode(kv['key'] or '').decode(
                    'utf-8', 'surrogateescape')
                if change.get('type') == 'DELETE':
                    add(new(event, (delete, key, None,
                                    int(kv['mod_revision']), False,
                                    current)))
                else:
                    value = decode(kv.get('value') or '').decode(
                        'utf-8', 'surrogateescape')
                    add(new(event, (put, key, value,
                                    int(kv['mod_revision']), False,
                                    current)))
        except (ValueError, KeyError, TypeError) as e:
            # As Translate words it (a try costs nothing; a with block is
            # two calls, once per message).
            Translate(what)._translate(e)
            raise
        if events:
            # etcd sends a message's events in revision order.
            if events[-1].index > self.received:
                self.received = events[-1].index
            floor = self.floor
            if events[0].index >= floor:
                self.events.extend(events)
            else:
                self.events.extend(e for e in events if e.index >= floor)
        elif not result.get('created') and current is not None:
            # A progress notification.
            self.received = max(self.received, current)


def take(cursor, epochs, message, what):
    """Fold one watch stream ``message`` into ``cursor``, whole or not at all.

    An error message raises as :func:`raise_for` (inside a stream); the
    header's cluster ID goes to ``epochs`` (:meth:`ClusterEpochs.observe`)
    before the cursor checks anything; then :meth:`Cursor.take`.
    """
    result = message.get('result') if isinstance(message, dict) else None
    if not isinstance(result, dict):
        raise_for(what, None, message, stream=True)
    header = result.get('header')
    # Once per message: observe() only when there may be news for it.
    if not isinstance(header, dict) or header.get('cluster_id') != (
            epochs.cluster_id):
        epochs.observe(result)
    cursor.take(result, what)


class ClusterEpochs(object):
    """Which etcd cluster answers, and who learnt their position when.

    Every answer's ``header.cluster_id`` goes through :meth:`observe`; each
    change of ID after the first starts a new epoch.  A watched
    ``(key, range_end)`` (an *ident*) notes the epoch in which its caller
    learnt its position (:meth:`learnt`); :meth:`check` raises
    ClusterRewound once for an ident whose epoch is over.  Not locked: a
    threaded transport serialises the three methods itself.
    """

    def __init__(self):
        self.cluster_id = None
        self.epoch = 0
        self.idents = {}

    def observe(self, result):
        """Note the cluster ID of an answer; return the current epoch."""
        header = result.get('header') if isinstance(result, dict) else None
        cluster = (header or {}).get('cluster_id')
        if cluster and cluster != self.cluster_id:
            if self.cluster_id is not None:
                self.epoch += 1
                LOG.warning('etcd cluster ID changed from %s to %s: '
                            'another cluster answers',
                            self.cluster_id, cluster)
            self.cluster_id = cluster
        return self.epoch

    def learnt(self, ident, epoch):
        """The caller of ``ident`` now stands on what epoch ``epoch`` said."""
        self.idents[ident] = epoch

    def check(self, ident, what):
        """Raise ClusterRewound, once, if the cluster changed under ident.

        That is, if etcd's cluster ID changed since the caller of
        ``ident`` learnt its position.
        """
        known = self.idents.setdefault(ident, self.epoch)
        if known == self.epoch:
            return
        self.idents[ident] = self.epoch
        raise exceptions.ClusterRewound(
            '%s: another etcd cluster (ID %s) answers now; indexes from '
            'before mean nothing there' % (what, self.cluster_id))


# -- operations: generators of requests ---------------------------------------

Request = collections.namedtuple('Request', ['path', 'payload', 'what',
                                             'timeout'])
Request.__new__.__defaults__ = (None,)
Request.__doc__ = """One unary POST to the gateway: ``path`` below the API
path ('kv/range'), the JSON ``payload``, ``what`` for error messages, and
a ``timeout`` (seconds) shorter than the transport's own, or None."""


class Steps(object):
    """Runs an operation generator one request at a time.

    ``request = steps.start()``; then, while ``request`` is not None, do
    it and ``request = steps.resume(answer, error)`` (``error`` the
    BackendError it raised, else None); ``steps.result`` is the outcome.
    Errors the operation does not handle propagate from :meth:`resume`.
    """

    def __init__(self, operation):
        self._operation = operation
        self.result = None

    def start(self):
        return self._advance(lambda: next(self._operation))

    def resume(self, answer, error=None):
        if error is not None:
            return self._advance(lambda: self._operation.throw(error))
        return self._advance(lambda: self._operation.send(answer))

    def _advance(self, step):
        try:
            return step()
        except StopIteration as stop:
            self.result = stop.value
            return None


def _get(key):
    """(kv dict or None, header revision) of one key."""
    result = yield Request('kv/range', {'key': b64(key)}, 'read %s' % key)
    kvs = result.get('kvs') or ()
    return (kvs[0] if kvs else None), revision(result)


def read_key(key, epochs):
    """Operation: ``(KeyState or None, revision)`` of one key."""
    kv, rev = yield from _get(key)
    epochs.learnt(key_ident(key), epochs.epoch)
    if kv is None:
        return None, rev
    with Translate('read %s' % key):
        return (base.KeyState(text(kv.get('value')),
                              int(kv['create_revision']),
                              int(kv['mod_revision'])),
                rev)


def read_tree(path, epochs, page_size=PAGE_SIZE):
    """Operation: a :class:`~etcdwatch.backends.base.Snapshot` of a tree.

    Every key below ``path + '/'`` (a key named ``path`` itself is not part
    of the tree), in pages of ``page_size`` keys, all at the first page's
    revision.  A page too large for the gateway is asked again at half the
    size, down to one key (then BackendError).  If etcd compacts the
    revision meanwhile, the read starts over (three times at most).
    """
    page, attempts = page_size, 0
    while True:
        try:
            return (yield from _read_pages(path, page, epochs))
        except TooLarge as e:
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


def _read_pages(path, page, epochs):
    items = {}
    start, rev = path + '/', None
    what = 'read %s' % path
    while True:
        payload = {'key': b64(start), 'range_end': b64(path + '0'),
                   'limit': page}
        if rev is not None:
            payload['revision'] = rev
        result = yield Request('kv/range', payload, what)
        with Translate(what):
            if rev is None:
                rev = revision(result)
                epochs.learnt(tree_ident(path), epochs.epoch)
            kvs = result.get('kvs') or ()
            for kv in kvs:
                items[text(kv['key'])] = text(kv.get('value'))
            if not result.get('more') or not kvs:
                return base.Snapshot(rev, items)
            # The next page starts just after the last key (as bytes).
            start = base64.b64decode(kvs[-1]['key']) + b'\0'


def check_current(path, index, epochs):
    """Operation: one linearizable count below ``path + '/'``.

    Returns etcd's revision; raises ClusterRewound if it is below
    ``index``, or if the cluster ID changed (seen by this read, or by
    another call since ``path``'s watch learnt its position).  Its request
    has ``timeout`` :data:`~etcdwatch.backends.base.CHECK_TIMEOUT`.
    """
    what = 'check %s' % path
    before = epochs.epoch
    result = yield Request('kv/range', {
        'key': b64(path + '/'), 'range_end': b64(path + '0'),
        'count_only': True}, what, base.CHECK_TIMEOUT)
    rev = revision(result)
    if rev is None:
        raise exceptions.BackendError('%s: no revision in the answer'
                                      % what)
    changed = before != epochs.epoch
    tree, key = tree_ident(path), key_ident(path)
    rewound = None
    for ident in [i for i in (tree, key) if i in epochs.idents] or [tree]:
        if changed:
            epochs.learnt(ident, before)
        try:
            epochs.check(ident, what)
        except exceptions.ClusterRewound as e:
            rewound = e
    if rewound is not None:
        raise rewound
    if rev < index:
        raise exceptions.ClusterRewound(
            '%s: etcd is at revision %d, below %d seen before: its data '
            'was wiped or restored' % (what, rev, index), rev)
    return rev


def _txn(compare, success, what):
    return (yield Request('kv/txn', {'compare': compare, 'success': success,
                                     'failure': []}, what))


def _grant(ttl, what):
    result = yield Request('lease/grant', {'TTL': ttl_seconds(ttl), 'ID': 0},
                           what)
    with Translate(what):
        return int(result['ID'])


def _revoke(lease, what):
    # Best effort: a lease we could not revoke expires on its own.
    try:
        yield Request('lease/revoke', {'ID': lease}, what)
    except exceptions.BackendError:
        pass


def _keepalive(lease, what):
    """The lease's TTL after renewing it, or None if it has expired."""
    result = yield Request('lease/keepalive', {'ID': lease}, what)
    with Translate(what):
        ttl = int(result.get('TTL', -1))
    return ttl if ttl > 0 else None


def _put_on_new_lease(leases, key, value, ttl, compares, what):
    """Put ``key`` on a new lease of ``ttl`` if ``compares`` hold.

    Returns the transaction's answer, or None (the new lease revoked)
    if a compare failed.
    """
    lease = yield from _grant(ttl, what)
    try:
        result = yield from _txn(
            compares,
            [{'request_put': {'key': b64(key), 'value': b64(value),
                              'lease': lease}}], what)
    except exceptions.BackendError:
        yield from _revoke(lease, what)
        raise
    if not result.get('succeeded'):
        yield from _revoke(lease, what)
        return None
    leases[(key, value)] = lease
    return result


def create(leases, key, value, ttl):
    """Operation: create ``key`` on a new lease of ``ttl`` if absent.

    A transaction on ``create_revision == 0``.  Returns the key's create
    revision (the fencing token), or None if the key exists (the lease
    granted for it is revoked).  ``leases`` maps ``(key, value)`` to the
    lease we bound the key to (a cache, always checked against etcd).
    """
    result = yield from _put_on_new_lease(
        leases, key, value, ttl,
        [{'key': b64(key), 'target': 'CREATE', 'result': 'EQUAL',
          'create_revision': 0}], 'create %s' % key)
    return None if result is None else revision(result)


def create_unique(leases, prefix, value, ttl, unique_id=None):
    """Operation: create ``prefix/<unique_id>`` on a new lease of ``ttl``.

    As :func:`create` (the key must not exist: ``unique_id``, by default
    a random UUID, makes it new); returns ``(key, create revision)``.
    """
    key = prefix + '/' + (unique_id or uuid.uuid4().hex)
    result = yield from _put_on_new_lease(
        leases, key, value, ttl,
        [{'key': b64(key), 'target': 'CREATE', 'result': 'EQUAL',
          'create_revision': 0}], 'create %s' % key)
    if result is None:
        raise exceptions.BackendError('create %s: the key exists' % key)
    return key, revision(result)


def read_queue(prefix):
    """Operation: a :class:`~etcdwatch.backends.base.Queue` below ``prefix``.

    The keys below ``prefix + '/'`` (one request, sorted by create
    revision; etcd never holds many waiters of one lock), oldest first.
    """
    what = 'read %s' % prefix
    result = yield Request('kv/range', {
        'key': b64(prefix + '/'), 'range_end': b64(prefix + '0'),
        'sort_order': 'ASCEND', 'sort_target': 'CREATE'}, what)
    with Translate(what):
        entries = [base.QueueEntry(text(kv['key']), text(kv.get('value')),
                                   int(kv['create_revision']))
                   for kv in result.get('kvs') or ()]
        entries.sort(key=lambda entry: entry.created_index)
        return base.Queue(revision(result), entries)


def refresh(leases, key, value, ttl):
    """Operation: renew the lease of ``key`` if it still holds ``value``.

    A keepalive: the key is not written, so its watchers sleep on.  The
    key is read after the keepalive, so True means it held ``value`` on
    that lease after the renewal.  A lease's TTL is fixed when granted:
    a ``ttl`` up to it keeps the lease (the key may then outlive ``ttl``,
    the safe way); a longer ``ttl`` (or a key on no lease) moves the key to
    a new lease of that TTL, in a transaction that compares the value and
    the old lease: it rewrites the key once with the same value (its
    watchers wake once), and the old lease is revoked.
    """
    what = 'refresh %s' % key
    lease = leases.get((key, value))
    if lease is None:
        kv, _rev = yield from _get(key)
        if kv is None or text(kv.get('value')) != value:
            return False
        lease = int(kv.get('lease', 0))
        if not lease:
            return (yield from _rebind(leases, key, value, ttl, lease, what))
    granted = yield from _keepalive(lease, what)
    kv, _rev = yield from _get(key)
    if (granted is None or kv is None or
            text(kv.get('value')) != value or
            int(kv.get('lease', 0)) != lease):
        leases.pop((key, value), None)
        return False
    leases[(key, value)] = lease
    if ttl_seconds(ttl) > granted:
        return (yield from _rebind(leases, key, value, ttl, lease, what))
    return True


def _rebind(leases, key, value, ttl, old_lease, what):
    """Move our key to a new lease of ``ttl``; True if still ours."""
    result = yield from _put_on_new_lease(
        leases, key, value, ttl,
        [{'key': b64(key), 'target': 'VALUE', 'result': 'EQUAL',
          'value': b64(value)},
         {'key': b64(key), 'target': 'LEASE', 'result': 'EQUAL',
          'lease': old_lease}], what)
    if result is None:
        leases.pop((key, value), None)
        return False
    if old_lease:
        yield from _revoke(old_lease, what)
    return True


def replace(leases, key, old, new):
    """Operation: write ``new`` into ``key`` if it still holds ``old``.

    On the lease the key has (``ignore_lease``): what keeps it alive goes
    on doing so.  True if written.
    """
    what = 'replace %s' % key
    result = yield from _txn(
        [{'key': b64(key), 'target': 'VALUE', 'result': 'EQUAL',
          'value': b64(old)}],
        [{'request_put': {'key': b64(key), 'value': b64(new),
                          'ignore_lease': True}}],
        what)
    lease = leases.pop((key, old), None)
    if not result.get('succeeded'):
        return False
    if lease is not None:
        leases[(key, new)] = lease
    return True


def delete_if(leases, key, value):
    """Operation: delete ``key`` if it holds ``value``; revoke its lease."""
    what = 'delete %s' % key
    leases.pop((key, value), None)
    result = yield from _txn(
        [{'key': b64(key), 'target': 'VALUE', 'result': 'EQUAL',
          'value': b64(value)}],
        [{'request_delete_range': {'key': b64(key), 'prev_kv': True}}],
        what)
    if not result.get('succeeded'):
        return False
    with Translate(what):
        deleted = result['responses'][0]['response_delete_range']
        revoke = [int(kv.get('lease', 0))
                  for kv in deleted.get('prev_kvs') or ()]
    for lease in revoke:
        if lease:
            yield from _revoke(lease, what)
    return True
