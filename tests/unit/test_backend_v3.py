"""The v3 backend's pure parts: selection, text, errors, stream cursors."""

import os
import subprocess
import sys

import etcd3gw
from etcd3gw.client import Etcd3Client
import etcd3gw.exceptions
import pytest
import requests

from etcdwatch import backends
from etcdwatch.backends import base
from etcdwatch.backends import v3
from etcdwatch import exceptions

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


class _Raw(object):
    chunked = True

    def __init__(self, chunks):
        self._chunks = chunks

    def supports_chunked_reads(self):
        return True

    def read_chunked(self, amt, decode_content):
        return iter(self._chunks)


class _Response(object):
    def __init__(self, chunks):
        self.raw = _Raw(chunks)
        self.closed = False

    def close(self):
        self.closed = True


def test_stream_reassembles_messages_across_chunks():
    stream = v3._Stream(_Response([b'{"result": {"a"', b': 1}}\n\n{"res',
                                   b'ult": {}}\n']), 5)
    assert stream.next_message(None) == {'result': {'a': 1}}
    assert stream.next_message(None) == {'result': {}}
    with pytest.raises(StopIteration):
        stream.next_message(None)
    stream.close()
    assert stream.response.closed


class _SilentSession(object):
    """A requests session whose every watch gets no answer in time."""

    def __init__(self):
        self.timeouts = []

    def post(self, url, json=None, stream=False, timeout=None):
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
