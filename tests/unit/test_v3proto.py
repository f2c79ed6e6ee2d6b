"""The v3 rules without I/O: bytes and dicts in, events and errors out.

No socket, thread, event loop or clock: each test feeds
:mod:`etcdwatch.backends.v3proto` what etcd's gateway would send and
checks what it makes of it.  Operations (create, refresh, ...) run on a
small in-memory table of keys and leases (:class:`_Etcd`) through
:class:`~etcdwatch.backends.v3proto.Steps`, as a transport would run them.
"""

import base64
import json

import pytest

from etcdwatch.backends import base
from etcdwatch.backends import v3auth
from etcdwatch.backends import v3proto as proto
from etcdwatch import exceptions

HEADER = {'cluster_id': '111', 'member_id': '9', 'revision': '20'}


def _result(revision=20, cluster='111', **fields):
    return dict(fields, header=dict(HEADER, revision=str(revision),
                                    cluster_id=cluster))


def _message(revision=20, cluster='111', **fields):
    return {'result': _result(revision, cluster, **fields)}


def _put(revision, key='/p/a', value='v'):
    return {'kv': {'key': proto.b64(key), 'value': proto.b64(value),
                   'mod_revision': str(revision)}}


def _delete(revision, key='/p/a'):
    return {'type': 'DELETE', 'kv': {'key': proto.b64(key),
                                     'mod_revision': str(revision)}}


# -- text, members ------------------------------------------------------------

def test_text_round_trips_any_bytes():
    assert proto.text(proto.b64('żółw')) == 'żółw'
    assert proto.text(None) == proto.text('') == ''
    odd = proto.text(base64.b64encode(b'\xff\xfe').decode())
    assert proto.b64(odd) == base64.b64encode(b'\xff\xfe').decode()
    assert [proto.ttl_seconds(t) for t in (0, 0.1, 1, 1.01, 7)] == [
        1, 1, 1, 2, 7]


def test_endpoints_are_parsed_once_for_every_client():
    assert proto.parse_endpoints('a:1, [::1]:2,') == [('a', 1), ('::1', 2)]
    assert proto.parse_endpoints([('h', 5)]) == [('h', 5)]
    assert proto.base_url('https', ('::1', 2)) == 'https://[::1]:2'
    assert proto.base_url('http', ('h', 5)) == 'http://h:5'
    for bad in ([], ['h'], ['h:x'], [('h', 0)], [('', 1)], [('h', True)]):
        with pytest.raises(ValueError, match='endpoints'):
            proto.parse_endpoints(bad)


def test_api_path_by_version():
    assert [proto.api_path(v) for v in ('3.5.1', '3.4.0', '3.3.9',
                                        '3.2.1')] == [
        'v3', 'v3', 'v3beta', 'v3alpha']


# -- error shapes -------------------------------------------------------------

@pytest.mark.parametrize('status,body,stream,expected', [
    (400, {'error': 'etcdserver: mvcc: required revision has been '
           'compacted', 'code': 11}, False, exceptions.HistoryGone),
    (503, {'error': 'etcdserver: no leader', 'code': 14}, False,
     exceptions.EtcdUnavailable),
    (504, None, False, exceptions.EtcdUnavailable),
    (400, {'error': 'bad', 'code': 3}, False, exceptions.BackendError),
    (429, {'error': 'big', 'code': 8}, False, proto.TooLarge),
    # 3.5 (grpc-gateway v1) and 3.6 (v2) inside a stream.
    (None, {'error': {'grpc_code': 14, 'http_code': 503,
                      'message': 'etcdserver: no leader'}}, True,
     exceptions.EtcdUnavailable),
    (None, {'error': {'code': 14, 'message': 'etcdserver: no leader',
                      'details': []}}, True, exceptions.EtcdUnavailable),
    (None, {'error': {'code': 4, 'message': 'deadline'}}, True,
     exceptions.EtcdUnavailable),
    (None, {'error': {'code': 8, 'message': 'too big'}}, True,
     exceptions.HistoryGone),
    (None, {'error': {'code': 'x', 'message': 'odd'}}, True,
     exceptions.BackendError),
    (None, 'not a dict', True, exceptions.BackendError),
])
def test_gateway_error_shapes(status, body, stream, expected):
    with pytest.raises(expected) as info:
        proto.raise_for('watch /p', status, body, 7, stream=stream)
    assert type(info.value) is expected
    assert str(info.value).startswith('watch /p: ')
    if expected is exceptions.HistoryGone:
        assert info.value.current_index == 7


def test_unary_answers():
    result = _result()
    assert proto.unary_answer('x', 200, result) is result
    # Stream endpoints (lease keepalive) wrap their one answer.
    assert proto.unary_answer('x', 200, {'result': result}) is result
    with pytest.raises(exceptions.BackendError, match='unexpected'):
        proto.unary_answer('x', 200, None)
    with pytest.raises(exceptions.EtcdUnavailable):
        proto.unary_answer('x', 503, {'error': 'etcdserver: no leader'})


def test_a_new_watch_without_an_answer():
    assert proto.unanswered('watch /p', 0.1) is None
    with pytest.raises(exceptions.EtcdUnavailable, match='within 5.0s'):
        proto.unanswered('watch /p', 5)
    with pytest.raises(exceptions.EtcdUnavailable):
        proto.unanswered('watch /p', None)


class _Down(Exception):
    pass


class _Odd(Exception):
    pass


class _Translate(proto.Translate):
    RULES = (((_Down, _Odd), _Down),)


@pytest.mark.parametrize('exc,expected', [
    (_Down(), exceptions.EtcdUnavailable),
    (_Odd(), exceptions.BackendError),
    (ValueError('not JSON'), exceptions.BackendError),
    (KeyError('ID'), exceptions.BackendError),
])
def test_translate_by_the_transports_rules(exc, expected):
    moved = []
    with pytest.raises(expected) as info:
        with _Translate('read /k', lambda: moved.append(1)):
            raise exc
    assert type(info.value) is expected and info.value.__cause__ is exc
    assert moved == ([1] if expected is exceptions.EtcdUnavailable else [])


def test_translate_lets_our_errors_and_bugs_through():
    moved = []
    for exc in (exceptions.HistoryGone(), ZeroDivisionError()):
        with pytest.raises(type(exc)):
            with _Translate('x', lambda: moved.append(1)):
                raise exc
    with pytest.raises(exceptions.EtcdUnavailable):
        with _Translate('x', lambda: moved.append(1)):
            raise exceptions.EtcdUnavailable('down')
    assert moved == [1]


# -- stream framing -----------------------------------------------------------

LINES = [_message(4, created=True), _message(9),
         _message(12, events=[_put(12, '/p/a', 'żółw')])]
BODY = b''.join(json.dumps(m).encode() + b'\n\n' for m in LINES)


def _chunked(body, size):
    pieces = [body[i:i + size] for i in range(0, len(body), size)]
    return b''.join(b'%x\r\n%s\r\n' % (len(p), p) for p in pieces) + (
        b'0\r\n\r\n')


@pytest.mark.parametrize('chunked', [False, True])
def test_messages_come_whole_at_every_split(chunked):
    wire = _chunked(BODY, 7) if chunked else BODY
    for split in range(0, len(wire) + 1, 3):
        buffer = proto.MessageBuffer(chunked=chunked)
        got = []
        for piece in (wire[:split], wire[split:]):
            buffer.feed(piece)
            try:
                message = buffer.next()
                while message is not None:
                    got.append(message)
                    message = buffer.next()
            except proto.StreamEnded:
                assert chunked
        assert got == LINES, split
        if not chunked:
            buffer.end()
        with pytest.raises(proto.StreamEnded):
            buffer.next()


def test_a_stream_error_without_newline_at_the_end():
    buffer = proto.MessageBuffer()
    error = {'error': {'code': 14, 'message': 'etcdserver: no leader'}}
    buffer.feed(json.dumps(error).encode())
    assert buffer.next() is None and not buffer.has_line()
    buffer.end()
    assert buffer.next() == error
    with pytest.raises(proto.StreamEnded):
        buffer.next()


def test_bad_framing_and_bad_json_are_value_errors():
    with pytest.raises(ValueError):
        proto.MessageBuffer(chunked=True).feed(b'zz\r\n')
    buffer = proto.MessageBuffer()
    buffer.feed(b'{not json}\n')
    with pytest.raises(ValueError):
        buffer.next()


# -- the cursor and what a message does to it ---------------------------------

def _take(cursor, message, epochs=None):
    proto.take(cursor, epochs or proto.ClusterEpochs(), message, 'watch /p')


def test_create_request_starts_after_what_arrived():
    cursor = proto.Cursor('/p/', '/p0', 10)
    assert cursor.create_request() == {'create_request': {
        'key': proto.b64('/p/'), 'range_end': proto.b64('/p0'),
        'start_revision': 10, 'progress_notify': True}}
    _take(cursor, _message(30))                     # progress
    assert cursor.create_request()['create_request']['start_revision'] == 31
    key = proto.Cursor('/e', None, 5).create_request()['create_request']
    assert 'range_end' not in key and key['start_revision'] == 5


def test_events_progress_and_created():
    cursor = proto.Cursor('/p/', '/p0', 10)
    _take(cursor, _message(9, created=True))
    assert cursor.start_revision() == 10 and cursor.pop() is None
    _take(cursor, _message(15, events=[_put(12, '/p/a', '1'),
                                       _put(12, '/p/b', '2'),
                                       _delete(13, '/p/a')]))
    # An event's message says nothing about revisions after its events.
    assert cursor.start_revision() == 14
    got = [cursor.pop() for _ in range(3)]
    assert got == [base.Event('put', '/p/a', '1', 12, False, 15),
                   base.Event('put', '/p/b', '2', 12, False, 15),
                   base.Event('delete', '/p/a', None, 13, False, 15)]
    assert cursor.pop() is None


def test_events_already_given_are_dropped():
    cursor = proto.Cursor('/p/', '/p0', 13)
    _take(cursor, _message(15, events=[_put(12), _put(13, '/p/b')]))
    assert cursor.pop().key == '/p/b' and cursor.pop() is None


def test_position_within_one_revision_and_back():
    cursor = proto.Cursor('/p/', '/p0', 10)
    _take(cursor, _message(13, events=[_put(12, '/p/a'), _put(12, '/p/b'),
                                       _put(13, '/p/c')]))
    assert cursor.position(10) is False
    assert cursor.pop().key == '/p/a'
    assert cursor.position(13) is False     # index + 1 right after an event
    assert cursor.pop().key == '/p/b'
    assert cursor.position(14) is False     # skipped ahead
    assert cursor.pop() is None and cursor.start_revision() == 14
    assert cursor.position(11) is True      # back: start over
    assert (list(cursor.events), cursor.start_revision()) == ([], 11)


@pytest.mark.parametrize('messages', [
    [_message(3, created=True)],
    [_message(3)],
    [_message(600, events=[_put(550)]), _message(540)],
])
def test_a_revision_below_the_cursor_is_a_rewound_cluster(messages):
    cursor = proto.Cursor('/p/', '/p0', 500)
    with pytest.raises(exceptions.ClusterRewound) as info:
        for message in messages:
            _take(cursor, message)
    assert info.value.current_index == int(
        messages[-1]['result']['header']['revision'])


def test_a_message_sent_before_the_cursor_moved_ahead_is_no_rewind():
    # A stream opened at 500; a later call asks from 800 (a key won at
    # 799, say) while a message sent at revision 650 is on its way.
    cursor = proto.Cursor('/p/', '/p0', 500)
    cursor.create_request()
    _take(cursor, _message(600, events=[_put(600)]))
    assert cursor.position(800) is False
    _take(cursor, _message(650, events=[_put(650)]))    # old news
    assert cursor.pop() is None and cursor.received == 650
    # But a revision below what this stream already gave is etcd going
    # back.
    with pytest.raises(exceptions.ClusterRewound):
        _take(cursor, _message(640))
    # A new stream starts where the cursor stands now: below it, a rewind.
    cursor.reset(800)
    cursor.create_request()
    with pytest.raises(exceptions.ClusterRewound):
        _take(cursor, _message(700, created=True))


@pytest.mark.parametrize('message,expected', [
    (_message(canceled=True, cancel_reason='etcdserver: no leader'),
     exceptions.EtcdUnavailable),
    (_message(canceled=True, cancel_reason='permission denied'),
     v3auth.WatchRefused),
    (_message(canceled=True, cancel_reason='something else'),
     exceptions.BackendError),
    (_message(canceled=True, compact_revision='15'), exceptions.HistoryGone),
    ({'error': {'grpc_code': 14, 'message': 'etcdserver: no leader'}},
     exceptions.EtcdUnavailable),
    (_message(events=[{'kv': {'key': proto.b64('/p/x')}}]),
     exceptions.BackendError),
])
def test_a_message_is_taken_whole_or_not_at_all(message, expected):
    cursor = proto.Cursor('/p/', '/p0', 10)
    _take(cursor, _message(12, events=[_put(11)]))
    before = (cursor.floor, cursor.received, list(cursor.events))
    with pytest.raises(expected) as info:
        _take(cursor, dict(message, result=dict(
            message.get('result', {}),
            events=[_put(12, '/p/b')] + message.get('result', {}).get(
                'events', []))) if 'result' in message else message)
    assert type(info.value) is expected
    assert (cursor.floor, cursor.received, list(cursor.events)) == before


def test_a_new_cluster_id_rewinds_each_ident_once():
    epochs = proto.ClusterEpochs()
    tree, key = proto.tree_ident('/p'), proto.key_ident('/e')
    _take(proto.Cursor('/p/', '/p0', 10), _message(20), epochs)
    epochs.check(tree, 'watch /p')
    epochs.check(key, 'watch /e')
    assert epochs.observe(_result(cluster='222')) == 1
    for ident in (tree, key):
        with pytest.raises(exceptions.ClusterRewound, match='222'):
            epochs.check(ident, 'watch')
        epochs.check(ident, 'watch')
    epochs.observe(_result(cluster='333'))
    epochs.learnt(tree, epochs.epoch)
    epochs.check(tree, 'watch /p')
    with pytest.raises(exceptions.ClusterRewound):
        epochs.check(key, 'watch /e')


# -- operations on an in-memory etcd ------------------------------------------

class _Etcd(object):
    """Just enough of etcd's kv and lease API to run the operations."""

    def __init__(self):
        self.revision = 20
        self.cluster = '111'
        self.kvs = {}           # key -> dict(value, lease, create, mod)
        self.leases = {}        # id -> granted TTL
        self.requests = []
        self.fail = {}          # path -> exception to raise once
        self.page_limit = None  # larger pages: too large for the gateway
        self.compact_once_at = None

    def answer(self, request):
        self.requests.append(request)
        error = self.fail.pop(request.path, None)
        if error is not None:
            raise error
        body = getattr(self, '_' + request.path.replace('/', '_'))(
            request.payload)
        # Stream endpoints (keepalive) wrap their one answer, header and
        # all, in "result".
        body.get('result', body)['header'] = dict(
            HEADER, revision=str(self.revision), cluster_id=self.cluster)
        return body

    def _kv(self, key):
        kv = self.kvs[key]
        return {'key': proto.b64(key), 'value': proto.b64(kv['value']),
                'lease': str(kv['lease']), 'create_revision':
                str(kv['create']), 'mod_revision': str(kv['mod'])}

    def _kv_range(self, payload):
        start = base64.b64decode(payload['key']).decode()
        if 'range_end' not in payload:
            return {'kvs': [self._kv(start)] if start in self.kvs else []}
        if payload.get('count_only'):
            return {'count': str(len(self.kvs))}
        if self.page_limit is not None and (
                payload['limit'] > self.page_limit):
            proto.raise_for('read', 429, {'error': 'big', 'code': 8})
        if self.compact_once_at is not None and (
                self.compact_once_at == payload.get('revision')):
            self.compact_once_at = None
            proto.raise_for('read', 400, {
                'error': 'required revision has been compacted'})
        end = base64.b64decode(payload['range_end']).decode()
        keys = sorted(k for k in self.kvs if start <= k < end)
        page = keys[:payload['limit']]
        return {'kvs': [self._kv(k) for k in page],
                'more': len(keys) > len(page)}

    def _lease_grant(self, payload):
        lease = 1000 + len(self.leases) + self.revision
        self.leases[lease] = payload['TTL']
        return {'ID': str(lease), 'TTL': str(payload['TTL'])}

    def _lease_revoke(self, payload):
        self.leases.pop(payload['ID'], None)
        for key in [k for k, kv in self.kvs.items()
                    if kv['lease'] == payload['ID']]:
            del self.kvs[key]
        return {}

    def _lease_keepalive(self, payload):
        return {'result': {'ID': str(payload['ID']), 'TTL': str(
            self.leases.get(payload['ID'], -1))}}

    def _kv_txn(self, payload):
        ok = all(self._holds(c) for c in payload['compare'])
        responses = []
        for op in payload['success'] if ok else payload['failure']:
            if 'request_put' in op:
                put = op['request_put']
                key = base64.b64decode(put['key']).decode()
                self.revision += 1
                old = self.kvs.get(key)
                self.kvs[key] = {
                    'value': base64.b64decode(put['value']).decode(),
                    'lease': put['lease'], 'mod': self.revision,
                    'create': old['create'] if old else self.revision}
                responses.append({'response_put': {}})
            else:
                key = base64.b64decode(
                    op['request_delete_range']['key']).decode()
                prev = [self._kv(key)] if key in self.kvs else []
                self.kvs.pop(key, None)
                self.revision += 1
                responses.append({'response_delete_range': {
                    'prev_kvs': prev}})
        return {'succeeded': ok, 'responses': responses}

    def _holds(self, compare):
        kv = self.kvs.get(base64.b64decode(compare['key']).decode())
        if compare['target'] == 'CREATE':
            return (kv['create'] if kv else 0) == compare['create_revision']
        if compare['target'] == 'VALUE':
            return kv is not None and proto.b64(kv['value']) == compare[
                'value']
        return (kv['lease'] if kv else 0) == compare['lease']


def _run(etcd, operation, epochs=None):
    steps = proto.Steps(operation)
    request = steps.start()
    while request is not None:
        try:
            answer = proto.unary_answer('x', 200, etcd.answer(request))
            error = None
            if epochs is not None:
                epochs.observe(answer)
        except exceptions.BackendError as e:
            answer, error = None, e
        request = steps.resume(answer, error)
    return steps.result


def _paths(etcd):
    return [r.path for r in etcd.requests]


def test_create_takes_an_absent_key_on_a_lease_of_its_own():
    etcd, leases = _Etcd(), {}
    assert _run(etcd, proto.create(leases, '/e/k', 'me', 2.5)) == 21
    assert etcd.kvs['/e/k']['value'] == 'me'
    lease = etcd.kvs['/e/k']['lease']
    assert etcd.leases == {lease: 3} and leases == {('/e/k', 'me'): lease}
    assert etcd.requests[1].payload['compare'] == [{
        'key': proto.b64('/e/k'), 'target': 'CREATE', 'result': 'EQUAL',
        'create_revision': 0}]
    # Taken: None, and the lease granted for it is revoked.
    assert _run(etcd, proto.create({}, '/e/k', 'other', 3)) is None
    assert list(etcd.leases) == [lease]
    assert _paths(etcd)[-3:] == ['lease/grant', 'kv/txn', 'lease/revoke']


def test_a_failed_transaction_revokes_the_lease_and_raises():
    etcd = _Etcd()
    etcd.fail['kv/txn'] = exceptions.EtcdUnavailable('down')
    with pytest.raises(exceptions.EtcdUnavailable):
        _run(etcd, proto.create({}, '/e/k', 'me', 3))
    assert _paths(etcd) == ['lease/grant', 'kv/txn', 'lease/revoke']
    assert not etcd.leases and not etcd.kvs


def test_refresh_keeps_the_lease_and_leaves_the_key_alone():
    etcd, leases = _Etcd(), {}
    _run(etcd, proto.create(leases, '/e/k', 'me', 5))
    lease, mod = etcd.kvs['/e/k']['lease'], etcd.kvs['/e/k']['mod']
    del etcd.requests[:]
    assert _run(etcd, proto.refresh(leases, '/e/k', 'me', 5)) is True
    assert _paths(etcd) == ['lease/keepalive', 'kv/range']
    assert etcd.kvs['/e/k']['mod'] == mod
    # A backend that never saw the key finds its lease first.
    del etcd.requests[:]
    assert _run(etcd, proto.refresh({}, '/e/k', 'me', 5)) is True
    assert _paths(etcd) == ['kv/range', 'lease/keepalive', 'kv/range']
    assert etcd.kvs['/e/k']['lease'] == lease


def test_refresh_with_a_longer_ttl_moves_the_key_to_a_new_lease():
    etcd, leases = _Etcd(), {}
    _run(etcd, proto.create(leases, '/e/k', 'me', 2))
    old = etcd.kvs['/e/k']['lease']
    assert _run(etcd, proto.refresh(leases, '/e/k', 'me', 7)) is True
    new = etcd.kvs['/e/k']['lease']
    assert new != old and etcd.leases == {new: 7}
    assert leases == {('/e/k', 'me'): new}
    txn = [r for r in etcd.requests if r.path == 'kv/txn'][-1]
    assert [c['target'] for c in txn.payload['compare']] == ['VALUE',
                                                             'LEASE']


@pytest.mark.parametrize('change', ['expired', 'taken', 'gone', 'no lease'])
def test_refresh_of_a_key_no_longer_ours(change):
    etcd, leases = _Etcd(), {}
    _run(etcd, proto.create(leases, '/e/k', 'me', 5))
    lease = etcd.kvs['/e/k']['lease']
    if change == 'expired':
        del etcd.leases[lease]
    elif change == 'taken':
        etcd.kvs['/e/k']['value'] = 'other'
    elif change == 'gone':
        del etcd.kvs['/e/k']
    else:
        etcd.kvs['/e/k']['lease'] = 0
        leases.clear()
        # A key of ours on no lease is moved onto one.
        assert _run(etcd, proto.refresh(leases, '/e/k', 'me', 5)) is True
        assert etcd.kvs['/e/k']['lease'] in etcd.leases
        return
    assert _run(etcd, proto.refresh(leases, '/e/k', 'me', 5)) is False
    assert leases == {}


def test_delete_if_revokes_the_lease():
    etcd, leases = _Etcd(), {}
    _run(etcd, proto.create(leases, '/e/k', 'me', 5))
    assert _run(etcd, proto.delete_if(leases, '/e/k', 'other')) is False
    assert _run(etcd, proto.delete_if(leases, '/e/k', 'me')) is True
    assert not etcd.kvs and not etcd.leases and not leases


def test_read_tree_halves_pages_too_large_and_pins_the_revision():
    etcd, epochs = _Etcd(), proto.ClusterEpochs()
    for i in range(10):
        etcd.kvs['/p/k%d' % i] = {'value': str(i), 'lease': 0, 'create': 1,
                                  'mod': 1}
    etcd.kvs['/p'] = etcd.kvs['/q/x'] = etcd.kvs['/p/k0']
    etcd.page_limit = 3
    snapshot = _run(etcd, proto.read_tree('/p', epochs, page_size=16),
                    epochs)
    assert snapshot == base.Snapshot(20, {'/p/k%d' % i: str(i)
                                          for i in range(10)})
    limits = [r.payload['limit'] for r in etcd.requests]
    assert limits == [16, 8, 4, 2, 2, 2, 2, 2]
    assert [r.payload.get('revision') for r in etcd.requests[3:]] == [
        None] + [20] * 4
    assert epochs.idents == {proto.tree_ident('/p'): 0}


def test_read_tree_starts_over_when_compacted_meanwhile():
    etcd = _Etcd()
    etcd.kvs.update({'/p/%d' % i: {'value': 'v', 'lease': 0, 'create': 1,
                                   'mod': 1} for i in range(3)})
    etcd.compact_once_at = 20
    snapshot = _run(etcd, proto.read_tree('/p', proto.ClusterEpochs(),
                                          page_size=2))
    assert len(snapshot.items) == 3
    assert [r.payload.get('revision') for r in etcd.requests] == [
        None, 20, None, 20]
    etcd.page_limit = 0
    with pytest.raises(exceptions.BackendError, match='even one key'):
        _run(etcd, proto.read_tree('/p', proto.ClusterEpochs(), 1))


def test_check_current_compares_revision_and_cluster():
    etcd, epochs = _Etcd(), proto.ClusterEpochs()
    assert _run(etcd, proto.check_current('/p', 20, epochs), epochs) == 20
    request = etcd.requests[0]
    assert request.timeout == base.CHECK_TIMEOUT
    assert request.payload['count_only'] is True
    with pytest.raises(exceptions.ClusterRewound) as info:
        _run(etcd, proto.check_current('/p', 21, epochs), epochs)
    assert info.value.current_index == 20
    etcd.cluster = '222'
    with pytest.raises(exceptions.ClusterRewound, match='222'):
        _run(etcd, proto.check_current('/p', 5, epochs), epochs)
    assert _run(etcd, proto.check_current('/p', 5, epochs), epochs) == 20


def test_read_key():
    etcd, epochs = _Etcd(), proto.ClusterEpochs()
    assert _run(etcd, proto.read_key('/e/k', epochs)) == (None, 20)
    _run(etcd, proto.create({}, '/e/k', 'me', 5))
    state, revision = _run(etcd, proto.read_key('/e/k', epochs))
    assert state == base.KeyState('me', 21, 21) and revision == 21
    assert proto.key_ident('/e/k') in epochs.idents
