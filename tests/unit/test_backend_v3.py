"""The v3 backend's own parts: selection, text, errors, stream cursors.

Without etcd: gateway answers are given as parsed JSON, or, for the
stream's HTTP reading, written by a one-connection server on loopback that
the test scripts byte by byte (:class:`_Gateway`).
"""

import base64
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time

import etcd3gw
from etcd3gw.client import Etcd3Client
import etcd3gw.exceptions
import pytest
import requests

from etcdwatch import backends
from etcdwatch.backends import base
from etcdwatch.backends import v3
from etcdwatch.backends import v3auth
from etcdwatch.backends import v3proto
from etcdwatch import exceptions
from etcdwatch import v3client

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


class MyClient(Etcd3Client):
    pass


def test_for_client_picks_v3_for_etcd3gw_clients():
    # Neither builds a connection.
    for client in (etcd3gw.client(host='127.0.0.1', port=1),
                   MyClient(host='127.0.0.1', port=1)):
        backend = backends.for_client(client)
        assert isinstance(backend, v3.V3Backend)
        assert backend.client is client
        assert backend.timeout == v3.DEFAULT_TIMEOUT
    assert backends.for_client(etcd3gw.client(timeout=3)).timeout == 3


def test_v2_users_never_import_etcd3gw():
    code = '\n'.join([
        'import sys',
        'import etcdwatch',
        'from etcdwatch.testing import FakeEtcdClient',
        'client = FakeEtcdClient()',
        'etcdwatch.EtcdElection(client, "n", "/e", work_time=5).clean()',
        'assert "etcd3gw" not in sys.modules, "etcd3gw imported"',
    ])
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT),
                          stderr=subprocess.PIPE, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]


def test_text_is_utf8_with_surrogateescape():
    assert v3._text(v3._b64('żółw')) == 'żółw'
    assert v3._text(None) == ''
    odd = v3._text('//4=')                      # b'\xff\xfe'
    assert odd.encode('utf-8', 'surrogateescape') == b'\xff\xfe'
    assert v3._b64(odd) == '//4='
    assert v3._b64(b'\xff') == '/w=='


def test_ttl_rounds_up_to_whole_seconds():
    assert [v3._ttl(t) for t in (0.1, 1, 1.2, 7)] == [1, 1, 2, 7]


@pytest.mark.parametrize('exc,expected', [
    (requests.exceptions.ConnectionError('refused'),
     exceptions.EtcdUnavailable),
    (requests.exceptions.ReadTimeout('slow'), exceptions.EtcdUnavailable),
    (etcd3gw.exceptions.ConnectionFailedError('x'),
     exceptions.EtcdUnavailable),
    (etcd3gw.exceptions.Etcd3Exception('x'), exceptions.BackendError),
    (requests.exceptions.InvalidURL('x'), exceptions.BackendError),
    (ValueError('not JSON'), exceptions.BackendError),
])
def test_errors_are_translated_with_their_cause(exc, expected):
    with pytest.raises(expected) as info:
        with v3._Translate('read /k'):
            raise exc
    assert type(info.value) is expected
    assert info.value.__cause__ is exc


def test_our_own_errors_and_bugs_pass_through():
    with pytest.raises(exceptions.HistoryGone):
        with v3._Translate('x'):
            raise exceptions.HistoryGone()
    with pytest.raises(ZeroDivisionError):
        with v3._Translate('x'):
            1 / 0


@pytest.mark.parametrize('status,body,expected', [
    (400, {'error': 'etcdserver: mvcc: required revision has been '
           'compacted', 'code': 11}, exceptions.HistoryGone),
    (503, {'error': 'etcdserver: no leader', 'code': 14},
     exceptions.EtcdUnavailable),
    (500, {'error': 'x', 'code': 4}, exceptions.EtcdUnavailable),
    (400, {'error': 'etcdserver: bad', 'code': 3}, exceptions.BackendError),
    (500, None, exceptions.BackendError),
    (None, {'error': {'grpc_code': 14, 'http_code': 503, 'message': 'down'}},
     exceptions.EtcdUnavailable),
])
def test_gateway_errors(status, body, expected):
    with pytest.raises(expected) as info:
        v3._raise_for('watch /p', status, body)
    assert type(info.value) is expected


def _event(index, key='/p/k'):
    return base.Event(base.PUT, key, 'v', index, False, index)


def test_cursor_continues_within_one_revision():
    cursor = v3._Cursor('/p/', '/p0', 10)
    cursor.events.extend([_event(12, '/p/a'), _event(12, '/p/b'),
                          _event(13, '/p/c')])
    cursor.received = 13
    cursor.position(10)
    assert cursor.pop().key == '/p/a'
    cursor.position(13)                 # index + 1 right after an event
    assert cursor.pop().key == '/p/b'
    cursor.position(13)
    assert cursor.pop().key == '/p/c'
    assert cursor.pop() is None
    assert cursor.start_revision() == 14


def test_cursor_skips_ahead_and_replays_back():
    cursor = v3._Cursor('/p/', '/p0', 10)
    cursor.events.extend([_event(12, '/p/a'), _event(12, '/p/b'),
                          _event(15, '/p/c')])
    cursor.received = 15
    cursor.position(13)                 # skipped ahead: revision 12 goes
    assert cursor.pop().key == '/p/c'
    assert cursor.start_revision() == 16
    cursor.position(20)                 # beyond what arrived
    assert cursor.start_revision() == 20
    cursor.position(11)                 # back: start over from there
    assert (list(cursor.events), cursor.start_revision()) == ([], 11)


class _SilentSession(object):
    """A requests session whose every watch gets no answer in time."""

    def __init__(self):
        self.timeouts = []

    def post(self, url, json=None, stream=False, timeout=None, **kwargs):
        self.timeouts.append(timeout)
        raise requests.exceptions.ReadTimeout('no answer')


@pytest.mark.parametrize('timeout,expected', [
    (5, exceptions.EtcdUnavailable),    # etcd said nothing for 5 s
    (0.1, None),                        # too short to blame etcd for
])
def test_a_watch_etcd_never_answers(timeout, expected):
    client = etcd3gw.client(host='192.0.2.1', port=2379, timeout=3)
    client.session = session = _SilentSession()
    client._api_path = '/v3/'
    be = v3.V3Backend(client)
    if expected is None:
        assert be.watch_tree('/p', 5, timeout) is None
    else:
        with pytest.raises(expected, match='did not answer'):
            be.watch_tree('/p', 5, timeout)
    # Connect within the client's timeout, read within the call's.
    [(connect, read)] = session.timeouts
    assert connect == min(3, read) and 0 < read <= timeout
    assert be.open_streams() == 0


# -- gateway errors: etcd 3.5 and 3.6 shapes -------------------------------

@pytest.mark.parametrize('body,stream,expected', [
    # 3.5 (grpc-gateway v1) inside a stream; what a member without a
    # leader sent here when a watch carried Grpc-Metadata-hasleader.
    ({'error': {'grpc_code': 14, 'http_code': 503, 'http_status':
                'Service Unavailable', 'message': 'etcdserver: no leader'}},
     True, exceptions.EtcdUnavailable),
    # 3.6 (grpc-gateway v2) inside a stream.
    ({'error': {'code': 14, 'message': 'etcdserver: no leader',
                'details': []}}, True, exceptions.EtcdUnavailable),
    ({'error': {'code': 4, 'message': 'context deadline exceeded'}}, True,
     exceptions.EtcdUnavailable),
    ({'error': {'grpc_code': 4, 'message': 'deadline'}}, True,
     exceptions.EtcdUnavailable),
    ({'error': {'code': 3, 'message': 'bad'}}, True, exceptions.BackendError),
    ({'error': {'code': 8, 'message': 'grpc: trying to send message larger '
                'than max'}}, True, exceptions.HistoryGone),
    ({'error': {'grpc_code': 8, 'message': 'too big'}}, True,
     exceptions.HistoryGone),
    # Unary: a top-level code.
    ({'error': 'too big', 'code': 8, 'message': 'too big'}, False,
     v3._TooLarge),
    ({'error': 'etcdserver: request timed out', 'code': 14}, False,
     exceptions.EtcdUnavailable),
])
def test_gateway_error_shapes(body, stream, expected):
    with pytest.raises(expected) as info:
        v3._raise_for('watch /p', None if stream else 500, body, 7,
                      stream=stream)
    assert type(info.value) is expected
    if expected is exceptions.HistoryGone:
        assert 'too large' in str(info.value)
        assert info.value.current_index == 7


# -- what a watch makes of each message (no socket) ------------------------

HEADER = {'cluster_id': '111', 'member_id': '9', 'revision': '20'}


def _message(revision=20, cluster='111', **result):
    header = dict(HEADER, revision=str(revision), cluster_id=cluster)
    return {'result': dict(result, header=header)}


def _put(revision, key='/p/a', value='v'):
    return {'kv': {'key': v3._b64(key), 'value': v3._b64(value),
                   'mod_revision': str(revision)}}


def _offline_backend(client=None):
    client = client or etcd3gw.client(host='192.0.2.1', port=2379,
                                      timeout=3)
    client._api_path = '/v3/'
    return v3.V3Backend(client)


def _take(be, cursor, message):
    return v3proto.take(cursor, be._epochs, message, 'watch /p')


def test_progress_notification_advances_received_created_does_not():
    be, cursor = _offline_backend(), v3._Cursor('/p/', '/p0', 10)
    _take(be, cursor, _message(20, created=True))
    assert cursor.start_revision() == 10
    _take(be, cursor, _message(20))            # progress
    assert cursor.start_revision() == 21 and not cursor.events
    _take(be, cursor, _message(25, events=[_put(23)]))
    # An event's message tells nothing about revisions after the event.
    assert cursor.start_revision() == 24 and cursor.pop().index == 23


@pytest.mark.parametrize('messages', [
    # A wiped etcd, asked from 500: created, at revision 3.
    [_message(3, created=True)],
    [_message(3)],
    [_message(600, events=[_put(550)]), _message(540)],
])
def test_a_revision_below_the_cursor_is_a_rewound_cluster(messages):
    be, cursor = _offline_backend(), v3._Cursor('/p/', '/p0', 500)
    with pytest.raises(exceptions.ClusterRewound):
        for message in messages:
            _take(be, cursor, message)
    assert _take(be, v3._Cursor('/p/', '/p0', 4),
                 _message(3, created=True)) is None


@pytest.mark.parametrize('message,expected', [
    (_message(canceled=True, cancel_reason='etcdserver: no leader'),
     exceptions.EtcdUnavailable),
    (_message(canceled=True, cancel_reason='permission denied'),
     v3auth.WatchRefused),
    (_message(canceled=True, cancel_reason='something else'),
     exceptions.BackendError),
    (_message(canceled=True, compact_revision='15'), exceptions.HistoryGone),
    ({'error': {'code': 14, 'message': 'etcdserver: no leader'}},
     exceptions.EtcdUnavailable),
])
def test_cancellations(message, expected):
    be, cursor = _offline_backend(), v3._Cursor('/p/', '/p0', 10)
    with pytest.raises(expected) as info:
        _take(be, cursor, message)
    assert type(info.value) is expected


def test_a_new_cluster_id_rewinds_each_watch_once():
    be = _offline_backend()
    tree, key = ('/p/', '/p0'), ('/e', None)
    _take(be, v3._Cursor('/p/', '/p0', 10), _message(20))
    be._epochs.check(tree, 'watch /p')
    be._epochs.check(key, 'watch /e')
    be._epochs.observe(_message(20)['result'])             # same cluster
    be._epochs.check(tree, 'watch /p')
    be._epochs.observe(_message(20, cluster='222')['result'])
    for ident in (tree, key):
        with pytest.raises(exceptions.ClusterRewound, match='222'):
            be._epochs.check(ident, 'watch')
        be._epochs.check(ident, 'watch')           # once
    # A position learnt after the change is on the new cluster.
    be._epochs.observe(_message(20, cluster='333')['result'])
    be._epochs.learnt(tree, be._epochs.epoch)
    be._epochs.check(tree, 'watch /p')


# -- unary requests through a scripted session ------------------------------

class _Answer(object):
    def __init__(self, status, body):
        self.status_code, self.body = status, body

    def json(self):
        return self.body


class _ScriptedSession(object):
    """Answers each POST with ``answer(path, payload)``."""

    def __init__(self, answer):
        self.answer = answer
        self.calls = []
        self.timeouts = []

    def post(self, url, json=None, timeout=None, **kwargs):
        path = url.split('/v3/', 1)[1]
        self.calls.append((path, json))
        self.timeouts.append(timeout)
        result = self.answer(path, json)
        if isinstance(result, Exception):
            raise result
        return result


def _backend_with(answer, client=None):
    be = _offline_backend(client)
    be.client.session = session = _ScriptedSession(answer)
    return be, session


def test_a_page_too_large_is_read_again_in_smaller_pages():
    keys = ['/p/k%03d' % i for i in range(10)]

    def answer(path, payload):
        if payload['limit'] > 3:
            return _Answer(429, {'error': 'grpc: received message larger '
                                 'than max', 'code': 8})
        first = base64.b64decode(payload['key']).decode()
        page = [k for k in keys if k >= first][:payload['limit']]
        return _Answer(200, {
            'header': HEADER, 'more': page[-1] != keys[-1],
            'kvs': [{'key': v3._b64(k), 'value': v3._b64('v')}
                    for k in page]})
    be, session = _backend_with(answer)
    snapshot = be.read_tree('/p')
    assert snapshot == base.Snapshot(20, {k: 'v' for k in keys})
    limits = [payload['limit'] for _, payload in session.calls]
    assert limits[:5] == [1000, 500, 250, 125, 62]
    assert set(limits[-4:]) == {3}
    # Every page of the successful read is pinned to the first's revision.
    assert [p.get('revision') for _, p in session.calls[-3:]] == [20] * 3


def test_a_single_key_too_large_is_a_backend_error():
    be, session = _backend_with(lambda path, payload: _Answer(
        429, {'error': 'too large', 'code': 8}))
    with pytest.raises(exceptions.BackendError, match='even one key'):
        be.read_tree('/p')
    assert session.calls[-1][1]['limit'] == 1


def test_check_current_reads_one_count_and_compares():
    revision = {'now': 20, 'cluster': '111'}

    def answer(path, payload):
        header = dict(HEADER, revision=str(revision['now']),
                      cluster_id=revision['cluster'])
        return _Answer(200, {'header': header, 'count': '3'})
    be, session = _backend_with(answer)
    assert be.check_current('/p', 20) == 20
    [(path, payload)] = session.calls
    assert path == 'kv/range' and payload['count_only'] is True
    assert (payload['key'], payload['range_end']) == (v3._b64('/p/'),
                                                      v3._b64('/p0'))
    assert 'serializable' not in payload        # linearizable
    with pytest.raises(exceptions.ClusterRewound) as info:
        be.check_current('/p', 21)
    assert info.value.current_index == 20
    revision['cluster'] = '222'
    with pytest.raises(exceptions.ClusterRewound, match='222'):
        be.check_current('/p', 5)
    assert be.check_current('/p', 5) == 20      # once
    # The change seen elsewhere (here, by a key read) reaches the watch of
    # /p through check_current too, once.
    revision['cluster'] = '333'
    be.read_key('/other')
    with pytest.raises(exceptions.ClusterRewound, match='333'):
        be.check_current('/p', 5)
    assert be.check_current('/p', 5) == 20


def test_check_current_without_an_answer_moves_to_the_next_member():
    client = v3client.client(['192.0.2.1:2379', '192.0.2.2:2379'],
                             timeout=3)
    be, session = _backend_with(
        lambda path, payload: requests.exceptions.ReadTimeout('slow'),
        client)
    with pytest.raises(exceptions.EtcdUnavailable):
        be.check_current('/p', 5)
    assert client.base_url.startswith('http://192.0.2.2:2379')
    # Sooner than etcd's own request timeout (7 s) on such a member.
    assert session.timeouts == [base.CHECK_TIMEOUT]


# -- chunked bodies ----------------------------------------------------------

BODY = (b'{"result": {"a": 1}}\n\n{"result": {"b": "\xc5\xbc"}}\n')


def _chunked(body, sizes, extension=b''):
    out, at = [], 0
    for size in sizes:
        out.append(b'%x%s\r\n%s\r\n' % (size, extension, body[at:at + size]))
        at += size
    return b''.join(out) + b'0\r\nX-Trailer: 1\r\n\r\n'


@pytest.mark.parametrize('sizes,extension', [
    ([len(BODY)], b''), ([3, 20, len(BODY) - 23], b';ext=1'),
])
def test_chunked_decoder_at_every_split(sizes, extension):
    wire = _chunked(BODY, sizes, extension)
    for split in range(len(wire) + 1):
        decoder = v3._ChunkedDecoder()
        got = decoder.feed(wire[:split])
        assert not decoder.done or split == len(wire)
        got += decoder.feed(wire[split:])
        assert got == BODY and decoder.done, split


@pytest.mark.parametrize('wire', [b'zz\r\n', b'3\r\nabcd\r\n', b'1' * 5000])
def test_chunked_decoder_refuses_bad_framing(wire):
    with pytest.raises(ValueError):
        v3._ChunkedDecoder().feed(wire)


# -- the watch stream over a scripted loopback gateway ---------------------

CHUNKED_HEAD = (b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n'
                b'Transfer-Encoding: chunked\r\n\r\n')
PLAIN_HEAD = (b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n'
              b'Connection: close\r\n\r\n')


class _Gateway(object):
    """A loopback HTTP server for scripted watch streams.

    Reads each request (kept in ``requests`` as (head, JSON body)), answers
    with ``head`` at once, and hands the connection to the test
    (:meth:`connection`), which writes the body.
    """

    def __init__(self, head=CHUNKED_HEAD):
        self.head = head
        self.requests = []
        self._conns = queue.Queue()
        self._listener = socket.socket()
        self._listener.bind(('127.0.0.1', 0))
        self._listener.listen(8)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            data = b''
            while b'\r\n\r\n' not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b'\r\n\r\n')
            length = int([line.split(b':')[1] for line in head.split(b'\r\n')
                          if line.lower().startswith(b'content-length')][0])
            while len(body) < length:
                body += conn.recv(65536)
            self.requests.append((head.decode('latin-1').lower(),
                                  json.loads(body)))
            conn.sendall(self.head)
            self._conns.put(conn)

    def connection(self):
        return self._conns.get(timeout=10)

    def close(self):
        self._listener.close()


@pytest.fixture
def gateway():
    gw = _Gateway()
    yield gw
    gw.close()


def _send(conn, *lines, chunked=True, split=None):
    """Write JSON lines, as one chunk (or the first ``split`` bytes)."""
    data = b''.join(json.dumps(line).encode() + b'\n' for line in lines)
    if split is not None:
        data = data[:split] if split > 0 else data[split:]
    conn.sendall(b'%x\r\n%s\r\n' % (len(data), data) if chunked else data)


def _stream_backend(port, *more):
    client = v3client.client(['127.0.0.1:%d' % port] + list(more),
                             timeout=5)
    client._api_path = '/v3/'
    return v3.V3Backend(client)


def test_one_stream_serves_many_calls(gateway):
    be = _stream_backend(gateway.port)
    assert be.watch_tree('/p', 5, 0.2) is None          # nothing yet
    conn = gateway.connection()
    [(head, body)] = gateway.requests
    assert 'grpc-metadata-hasleader: true' in head.split('\r\n')
    assert body == {'create_request': {
        'key': v3._b64('/p/'), 'range_end': v3._b64('/p0'),
        'start_revision': 5, 'progress_notify': True}}
    _send(conn, _message(4, created=True))
    assert be.watch_tree('/p', 5, 0.2) is None
    _send(conn, _message(9))                            # progress
    assert be.watch_tree('/p', 5, 0.2) is None
    cursor, = be._cursors.values()
    assert cursor.start_revision() == 10
    # A message split across chunks, and across calls.
    event = _message(12, events=[_put(12, '/p/a', 'żółw')])
    _send(conn, event, split=30)
    assert be.watch_tree('/p', 5, 0.2) is None
    _send(conn, event, split=-(len(json.dumps(event)) + 1 - 30))
    got = be.watch_tree('/p', 5, 0.2)
    assert (got.key, got.value, got.index) == ('/p/a', 'żółw', 12)
    assert len(gateway.requests) == 1 and be.open_streams() == 1
    # close() from another thread wakes a blocked call, which returns None.
    results = []
    thread = threading.Thread(target=lambda: results.append(
        be.watch_tree('/p', 13, 30)))
    began = time.monotonic()
    thread.start()
    deadline = time.monotonic() + 10
    while not cursor.lock.locked() and time.monotonic() < deadline:
        time.sleep(0.01)
    be.close()
    thread.join(10)
    assert results == [None] and time.monotonic() - began < 5
    assert be.open_streams() == 0
    conn.close()


def test_a_body_that_is_not_chunked(gateway):
    gateway.head = PLAIN_HEAD
    be = _stream_backend(gateway.port)
    assert be.watch_key('/e', 5, 0.2) is None
    conn = gateway.connection()
    _send(conn, _message(4, created=True), _message(7, events=[_put(6, '/e')]),
          chunked=False)
    assert be.watch_key('/e', 5, 5).index == 6
    conn.close()                                        # etcd went away
    with pytest.raises(exceptions.EtcdUnavailable, match='ended'):
        be.watch_key('/e', 7, 5)
    assert be.open_streams() == 0


@pytest.mark.parametrize('message', [
    {'error': {'grpc_code': 14, 'http_code': 503,
               'message': 'etcdserver: no leader'}},
    _message(canceled=True, cancel_reason='etcdserver: no leader'),
])
def test_no_leader_moves_to_the_next_member(gateway, message):
    be = _stream_backend(gateway.port, '192.0.2.9:2379')
    assert be.watch_tree('/p', 5, 0.2) is None
    conn = gateway.connection()
    _send(conn, _message(4, created=True), message)
    with pytest.raises(exceptions.EtcdUnavailable, match='no leader'):
        be.watch_tree('/p', 5, 5)
    assert be.client.base_url.startswith('http://192.0.2.9:2379')
    assert be.open_streams() == 0
    conn.close()


def test_a_member_without_leader_refuses_a_new_watch(gateway):
    # What etcd 3.5.1 answered to a new watch carrying hasleader.
    gateway.head = (b'HTTP/1.1 503 Service Unavailable\r\n'
                    b'Content-Type: application/json\r\n'
                    b'Connection: close\r\n\r\n')
    be = _stream_backend(gateway.port, '192.0.2.9:2379')
    result = []
    thread = threading.Thread(target=lambda: result.append(
        pytest.raises(exceptions.EtcdUnavailable, be.watch_tree, '/p', 5, 5)))
    thread.start()
    conn = gateway.connection()
    conn.sendall(json.dumps({'error': {
        'grpc_code': 14, 'http_code': 503, 'http_status':
        'Service Unavailable', 'message': 'etcdserver: no leader'}}).encode())
    conn.close()
    thread.join(10)
    assert 'no leader' in str(result[0].value)
    assert be.client.base_url.startswith('http://192.0.2.9:2379')
