"""Unit tests of the in-memory etcd v3 (etcdwatch.testing.fake_v3).

What a real etcd does is held to by tests/functional/
test_fake_v3_conformance.py; these test what only the fake can show
quickly: its clock (lease and token expiry), its transports (etcd3gw's
streaming watch, httpx sync and async), and its hooks.
"""

import asyncio
import base64
import json
import threading

import httpx
import pytest
import requests

from etcd3gw import exceptions as gw_exceptions

from etcdwatch.backends import v3
from etcdwatch.testing.fake_v3 import FakeEtcd3Server
from tests.helpers import wait_until

WAIT = 10.0


def b64(text):
    return base64.b64encode(text.encode('utf-8')).decode('ascii')


@pytest.fixture
def server():
    return FakeEtcd3Server()


@pytest.fixture
def client(server):
    return server.client(timeout=WAIT)


def post(server, path, body, token=None):
    """``(status, JSON body)`` of one gateway request through requests."""
    headers = {'Authorization': token} if token else {}
    resp = server.session().post(server.base_url + path,
                                 data=json.dumps(body), headers=headers,
                                 timeout=WAIT)
    return resp.status_code, resp.json()


# ---------------------------------------------------------------- leases


def test_lease_expiry_deletes_keys_in_one_revision(server, client):
    lease = client.lease(10)
    client.put('/a', '1', lease=lease)
    client.put('/b', '2', lease=lease)
    client.put('/c', '3')
    before = server.revision
    server.advance(9.5)
    assert server.revision == before
    assert client.get('/a') == [b'1']
    server.advance(0.5)
    assert server.revision == before + 1
    assert client.get_prefix('/') == [
        (b'3', {'key': b'/c', 'create_revision': '4', 'mod_revision': '4',
                'version': '1'})]
    assert lease.refresh() == -1
    assert lease.ttl() == -1


def test_leases_expire_one_revision_each_in_expiry_order(server, client):
    late = client.lease(20)
    early = client.lease(10)
    client.put('/late', 'x', lease=late)
    client.put('/early', 'y', lease=early)
    start = server.revision
    events, cancel = client.watch_prefix('/', start_revision=start + 1)
    server.advance(30)
    got = [next(events), next(events)]
    cancel()
    assert [(e['type'], e['kv']['key'], e['kv']['mod_revision'])
            for e in got] == [('DELETE', b'/early', str(start + 1)),
                              ('DELETE', b'/late', str(start + 2))]
    assert server.leases == {}


def test_keepalive_restarts_the_ttl(server, client):
    lease = client.lease(10)
    client.put('/k', 'v', lease=lease)
    server.advance(8)
    assert lease.ttl() == 2
    assert lease.refresh() == 10
    assert lease.ttl() == 10
    server.advance(8.5)
    assert client.get('/k') == [b'v']
    assert lease.ttl() == 1         # 1.5 s left: etcd truncates
    server.advance(1)
    # 0.5 s left reads 0, which the gateway leaves out, as etcd's does.
    assert post(server, '/v3/lease/timetolive', {'ID': lease.id})[1] == {
        'header': server.header(), 'ID': str(lease.id), 'grantedTTL': '10'}
    server.advance(0.5)
    assert client.get('/k') == []


def test_min_lease_ttl_and_given_id(server):
    assert post(server, '/v3/lease/grant', {'TTL': 1, 'ID': 42})[1][
        'TTL'] == '2'
    assert post(server, '/v3/lease/grant', {'TTL': 5, 'ID': 42}) == (
        400, {'error': 'etcdserver: lease already exists', 'code': 9,
              'message': 'etcdserver: lease already exists'})


def test_keepalive_answers_in_stream_shape(server):
    resp = server.session().post(server.base_url + '/v3/lease/keepalive',
                                 data='{"ID": 7}', timeout=WAIT)
    assert resp.content.endswith(b'}}\n')
    assert resp.json() == {'result': {'header': server.header(), 'ID': '7'}}


# ------------------------------------------------------------ compaction


def test_compaction_errors(server, client):
    for value in 'abc':
        client.put('/k', value)                 # revisions 2, 3, 4
    assert post(server, '/v3/kv/compaction', {'revision': 3})[0] == 200
    compacted = {'error': 'etcdserver: mvcc: required revision has been '
                 'compacted', 'code': 11,
                 'message': 'etcdserver: mvcc: required revision has been '
                 'compacted'}
    assert post(server, '/v3/kv/range',
                {'key': b64('/k'), 'revision': 2}) == (400, compacted)
    assert post(server, '/v3/kv/compaction', {'revision': 3}) == (
        400, compacted)
    future = post(server, '/v3/kv/range', {'key': b64('/k'),
                                           'revision': 5})
    assert future[0] == 400 and 'future revision' in future[1]['error']
    assert client.get('/k', revision=3) == [b'b']
    with pytest.raises(gw_exceptions.Etcd3Exception) as caught:
        client.get('/k', revision=2)
    assert 'compacted' in caught.value.detail_text


def test_watch_from_compacted_revision_is_cancelled(server):
    for value in 'abc':
        post(server, '/v3/kv/put', {'key': b64('/k'), 'value': b64(value)})
    post(server, '/v3/kv/compaction', {'revision': 4})
    resp = server.session().post(
        server.base_url + '/v3/watch', stream=True, timeout=WAIT,
        data=json.dumps({'create_request': {'key': b64('/k'),
                                            'start_revision': 2}}))
    lines = resp.iter_lines()
    created = json.loads(next(lines))['result']
    cancelled = json.loads(next(lines))['result']
    resp.close()
    assert created == {'header': server.header(), 'created': True}
    header = server.header()
    del header['revision']
    assert cancelled == {'header': header, 'canceled': True,
                         'compact_revision': '4'}
    wait_until(lambda: server.watch_count == 0, WAIT)


# ------------------------------------------------------- etcd3gw watches


def test_etcd3gw_watch_streams_live_events_and_cancel_ends_it(server,
                                                              client):
    events, cancel = client.watch_prefix('/w/', prev_kv=True)
    wait_until(lambda: server.watch_count == 1, WAIT)
    client.put('/w/a', '1')
    client.put('/other', 'x')
    client.put('/w/a', '2')
    first, second = next(events), next(events)
    assert first['kv']['value'] == b'1' and 'prev_kv' not in first
    assert second['kv']['value'] == b'2'
    assert second['prev_kv']['value'] == base64.b64encode(b'1').decode()
    cancel()
    wait_until(lambda: server.watch_count == 0, WAIT)


def test_one_txn_is_one_watch_message(server, client):
    resp = server.session().post(
        server.base_url + '/v3/watch', stream=True, timeout=WAIT,
        data=json.dumps({'create_request': {'key': b64('/t/'),
                                            'range_end': b64('/t0')}}))
    lines = resp.iter_lines()
    next(lines)                                 # created
    client.transaction({'success': [
        {'request_put': {'key': b64('/t/a'), 'value': b64('1')}},
        {'request_put': {'key': b64('/t/b'), 'value': b64('2')}}]})
    message = json.loads(next(lines))['result']
    resp.close()
    assert [e['kv']['key'] for e in message['events']] == [
        b64('/t/a'), b64('/t/b')]
    assert message['header']['revision'] == str(server.revision)


def test_watch_once_and_start_revision(server, client):
    client.put('/x', '1')
    client.put('/x', '2')
    event = client.watch_once('/x', timeout=WAIT, start_revision=3)
    assert event['kv']['value'] == b'2'
    with pytest.raises(gw_exceptions.WatchTimedOut):
        client.watch_once('/x', timeout=0.1, start_revision=4)


def test_read_timeout_on_a_silent_watch(server):
    resp = server.session().post(
        server.base_url + '/v3/watch', stream=True, timeout=(1, 0.05),
        data=json.dumps({'create_request': {'key': b64('/q')}}))
    chunks = resp.iter_content(chunk_size=None)
    assert b'"created":true' in next(chunks)
    with pytest.raises(requests.exceptions.ConnectionError):
        next(chunks)
    resp.close()


def test_close_streams_ends_every_watch(server):
    resp = server.session().post(
        server.base_url + '/v3/watch', stream=True, timeout=WAIT,
        data=json.dumps({'create_request': {'key': b64('/q')}}))
    lines = resp.iter_lines()
    next(lines)
    server.close_streams()
    assert list(lines) == []
    assert server.watch_count == 0


def test_progress_notifications_on_the_clock(server):
    resp = server.session().post(
        server.base_url + '/v3/watch', stream=True, timeout=WAIT,
        data=json.dumps({'create_request': {'key': b64('/p'),
                                            'progress_notify': True}}) +
        json.dumps({'create_request': {'key': b64('/quiet')}}))
    raw = resp.raw
    assert raw.read_message(0) and raw.read_message(0)     # created x2
    post(server, '/v3/kv/put', {'key': b64('/other'), 'value': b64('v')})
    server.advance(599)
    assert raw.read_message(0) is None
    server.advance(1)
    progress = json.loads(raw.read_message(0))['result']
    assert progress == {'header': server.header()}      # watch 0, no events
    assert raw.read_message(0) is None                  # /quiet never asked
    server.notify_progress()
    assert json.loads(raw.read_message(0))['result'] == progress
    resp.close()


def test_cancel_request_and_filters(server):
    stream = server.handle('POST', '/v3/watch', json.dumps(
        {'create_request': {'key': b64('/f'), 'filters': ['NOPUT']}}
    ).encode())
    assert json.loads(stream.next_message(0))['result']['created']
    post(server, '/v3/kv/put', {'key': b64('/f'), 'value': b64('v')})
    assert stream.next_message(0) is None
    post(server, '/v3/kv/deleterange', {'key': b64('/f')})
    event = json.loads(stream.next_message(0))['result']['events'][0]
    assert event['type'] == 'DELETE'
    stream.send(b'{"cancel_request": {"watch_id": 0}}')
    assert json.loads(stream.next_message(0))['result'] == {
        'header': server.header(), 'canceled': True}
    assert server.watch_count == 0 and not stream.closed
    stream.close()
    assert stream.next_message(0) == b''


# ------------------------------------------------------------------ auth


def _enable_auth(server):
    for path, body in (
            ('/v3/auth/user/add', {'name': 'root', 'password': 'rootpw'}),
            ('/v3/auth/user/grant', {'user': 'root', 'role': 'root'}),
            ('/v3/auth/role/add', {'name': 'app'}),
            ('/v3/auth/role/grant', {'name': 'app', 'perm': {
                'key': b64('/app/'), 'range_end': b64('/app0'),
                'permType': 'READWRITE'}}),
            ('/v3/auth/user/add', {'name': 'alice', 'password': 'pw'}),
            ('/v3/auth/user/grant', {'user': 'alice', 'role': 'app'}),
            ('/v3/auth/enable', {})):
        assert post(server, path, body)[0] == 200, path


def _token(server, name='alice', password='pw'):
    status, body = post(server, '/v3/auth/authenticate',
                        {'name': name, 'password': password})
    assert status == 200, body
    return body['token']


def test_auth_token_expires_after_idle_ttl(server):
    _enable_auth(server)
    token = _token(server)
    key = {'key': b64('/app/k'), 'value': b64('v')}
    server.advance(299)
    assert post(server, '/v3/kv/put', key, token)[0] == 200
    server.advance(299)             # each use renews it
    assert post(server, '/v3/kv/put', key, token)[0] == 200
    server.advance(300)
    assert post(server, '/v3/kv/put', key, token) == (
        401, {'error': 'etcdserver: invalid auth token', 'code': 16,
              'message': 'etcdserver: invalid auth token'})
    assert post(server, '/v3/kv/put', key, _token(server))[0] == 200


def test_auth_errors(server):
    _enable_auth(server)
    token = _token(server)
    assert post(server, '/v3/auth/authenticate',
                {'name': 'alice', 'password': 'wrong'})[1]['error'] == (
        'etcdserver: authentication failed, invalid user ID or password')
    assert post(server, '/v3/kv/range', {'key': b64('/app/k')}) == (
        400, {'error': 'etcdserver: user name is empty', 'code': 3,
              'message': 'etcdserver: user name is empty'})
    assert post(server, '/v3/kv/range', {'key': b64('/etc')}, token) == (
        403, {'error': 'etcdserver: permission denied', 'code': 7,
              'message': 'etcdserver: permission denied'})
    assert post(server, '/v3/kv/range', {
        'key': b64('/app/'), 'range_end': b64('/app0')}, token)[0] == 200
    assert post(server, '/v3/auth/user/add', {'name': 'eve'}, token)[0] == (
        403)
    assert post(server, '/v3/auth/user/add', {'name': 'eve'},
                _token(server, 'root', 'rootpw'))[0] == 200
    # A changed password ends the user's tokens.
    assert post(server, '/v3/auth/user/changepw',
                {'name': 'alice', 'password': 'new'},
                _token(server, 'root', 'rootpw'))[0] == 200
    assert post(server, '/v3/kv/range', {'key': b64('/app/k')},
                token)[0] == 401


def test_watch_without_permission_is_cancelled(server):
    _enable_auth(server)
    stream = server.handle('POST', '/v3/watch', json.dumps(
        {'create_request': {'key': b64('/etc')}}).encode(),
        {'Authorization': _token(server)})
    assert json.loads(stream.next_message(0))['result'] == {
        'header': server.header(), 'created': True, 'canceled': True,
        'cancel_reason': 'rpc error: code = PermissionDenied desc = '
        'etcdserver: permission denied'}
    assert server.watch_count == 0


def test_etcd3gw_with_a_token_on_its_session(server):
    _enable_auth(server)
    client = server.client(timeout=WAIT)
    client.session.headers['Authorization'] = _token(server)
    client.put('/app/x', 'y')
    assert client.get('/app/x') == [b'y']
    with pytest.raises(gw_exceptions.Etcd3Exception) as caught:
        client.put('/elsewhere', 'y')
    assert 'permission denied' in caught.value.detail_text


# ----------------------------------------------------------------- httpx


def test_httpx_sync_transport(server):
    with httpx.Client(transport=server.httpx_transport(),
                      base_url=server.base_url) as http:
        assert http.post('/v3/kv/put', json={
            'key': b64('/h'), 'value': b64('v')}).status_code == 200
        with http.stream('POST', '/v3/watch', json={'create_request': {
                'key': b64('/h'), 'start_revision': 1}}) as resp:
            lines = resp.iter_lines()
            assert json.loads(next(lines))['result']['created']
            event = json.loads(next(lines))['result']['events'][0]
            assert event['kv']['value'] == b64('v')
        wait_until(lambda: server.watch_count == 0, WAIT)
        answer = http.post('/v3/kv/range', json={'key': ''})
        assert answer.status_code == 400
        assert answer.json()['message'] == 'etcdserver: key is not provided'


def test_httpx_sync_read_timeout(server):
    with httpx.Client(transport=server.httpx_transport(),
                      base_url=server.base_url,
                      timeout=httpx.Timeout(1, read=0.05)) as http:
        with http.stream('POST', '/v3/watch', json={'create_request': {
                'key': b64('/h')}}) as resp:
            chunks = resp.iter_bytes()
            next(chunks)
            with pytest.raises(httpx.ReadTimeout):
                next(chunks)


def test_httpx_async_transport_streams_without_blocking_the_loop(server):
    async def scenario():
        async with httpx.AsyncClient(
                transport=server.async_httpx_transport(),
                base_url=server.base_url) as http:
            async with http.stream('POST', '/v3/watch', json={
                    'create_request': {'key': b64('/as')}}) as resp:
                lines = resp.aiter_lines()
                assert json.loads(await lines.__anext__())['result'][
                    'created']
                # A write from another thread wakes the waiting reader.
                writer = threading.Thread(target=post, args=(
                    server, '/v3/kv/put',
                    {'key': b64('/as'), 'value': b64('1')}))
                reading = asyncio.ensure_future(lines.__anext__())
                await asyncio.sleep(0)
                writer.start()
                line = await asyncio.wait_for(reading, WAIT)
                writer.join(WAIT)
                # And one from the loop itself.
                answer = await http.post('/v3/kv/put', json={
                    'key': b64('/as'), 'value': b64('2')})
                assert answer.status_code == 200
                second = await asyncio.wait_for(lines.__anext__(), WAIT)
            return json.loads(line), json.loads(second)
    first, second = asyncio.run(scenario())
    assert first['result']['events'][0]['kv']['value'] == b64('1')
    assert second['result']['events'][0]['kv']['value'] == b64('2')
    wait_until(lambda: server.watch_count == 0, WAIT)


# ------------------------------------------------------ etcdwatch's v3


def test_v3_backend_unary_calls_run_on_the_fake(server, client):
    backend = v3.V3Backend(client)
    index = backend.create('/e/leader', 'me', 10)
    assert backend.create('/e/leader', 'you', 10) is None
    state, current = backend.read_key('/e/leader')
    assert (state.value, state.created_index, current) == ('me', index,
                                                           index)
    assert backend.read_tree('/e').items == {'/e/leader': 'me'}
    server.advance(8)
    assert backend.refresh('/e/leader', 'me', 10)
    server.advance(8)
    assert backend.read_key('/e/leader')[0] is not None
    server.advance(3)
    assert backend.read_key('/e/leader')[0] is None


def test_unknown_path_and_method(server):
    resp = server.session().post(server.base_url + '/v3/kv/nothing',
                                 data='{}', timeout=WAIT)
    assert (resp.status_code, resp.text) == (404, 'Not Found\n')
    resp = server.session().get(server.base_url + '/v3/kv/range',
                                timeout=WAIT)
    assert resp.status_code == 405
    assert server.session().get(server.base_url + '/version').json() == {
        'etcdserver': '3.5.1', 'etcdcluster': '3.5.0'}


def test_async_v3_backend_runs_on_the_async_transport(server):
    from etcdwatch.aio.client import AsyncEtcd3Client
    from etcdwatch.backends.v3_async import AsyncV3Backend

    async def scenario():
        client = AsyncEtcd3Client([(server.host, server.port)], timeout=WAIT,
                                  transport=server.async_httpx_transport())
        backend = AsyncV3Backend(client)
        try:
            index = await backend.create('/e/leader', 'me', 10)
            quiet = await backend.watch_tree('/e', index + 1, 0.05)
            writer = asyncio.get_running_loop().run_in_executor(
                None, server.client().put, '/e/x', 'y')
            put = await backend.watch_tree('/e', index + 1, WAIT)
            await writer
            server.advance(10)
            expired = await backend.watch_tree('/e', index + 2, WAIT)
            return quiet, put, expired
        finally:
            await backend.aclose()
            await client.aclose()
    quiet, put, expired = asyncio.run(scenario())
    assert quiet is None
    assert (put.kind, put.key, put.value) == ('put', '/e/x', 'y')
    assert (expired.kind, expired.key) == ('delete', '/e/leader')
    wait_until(lambda: server.watch_count == 0, WAIT)


def test_watch_prev_kv_is_the_key_before_the_revision(server, client):
    """A key put and deleted in one txn: its delete has no prev_kv.

    etcd reads a watch event's prev_kv at the revision before the event,
    when that key did not exist yet.
    """
    client.put('/t/old', 'o')
    stream = server.handle('POST', '/v3/watch', json.dumps(
        {'create_request': {'key': b64('/t/'), 'range_end': b64('\0'),
                            'prev_kv': True}}).encode())
    stream.next_message(0)
    client.transaction({'success': [
        {'request_put': {'key': b64('/t/new'), 'value': b64('n')}},
        {'request_delete_range': {'key': b64('/t/'),
                                  'range_end': b64('\0')}}]})
    events = json.loads(stream.next_message(0))['result']['events']
    stream.close()
    assert [(e.get('type', 'PUT'), base64.b64decode(e['kv']['key']),
             'prev_kv' in e) for e in events] == [
        ('PUT', b'/t/new', False), ('DELETE', b'/t/new', False),
        ('DELETE', b'/t/old', True)]


def test_watch_at_the_compaction_revision_keeps_its_delete(server, client):
    client.put('/k', 'v')
    client.delete('/k')
    post(server, '/v3/kv/compaction', {'revision': server.revision})
    event = client.watch_once('/k', timeout=WAIT,
                              start_revision=server.revision)
    assert event['type'] == 'DELETE'


def test_outage_refuses_requests_and_ends_streams(server, client):
    client.put('/k', 'v')
    lease = client.lease(10)
    events, cancel = client.watch('/k')
    wait_until(lambda: server.watch_count == 1, WAIT)
    with server.outage():
        assert server.watch_count == 0
        with pytest.raises(gw_exceptions.ConnectionFailedError):
            client.get('/k')
        with httpx.Client(transport=server.httpx_transport(),
                          base_url=server.base_url) as http:
            with pytest.raises(httpx.ConnectError):
                http.post('/v3/kv/range', json={'key': b64('/k')})
        server.advance(10)          # the store carries on
    cancel()
    assert lease.ttl() == -1
    assert client.get('/k') == [b'v']


def test_etcd3gw_api_on_the_fake(server, client):
    assert client.create('/c', 'one') is True
    assert client.create('/c', 'two') is False
    assert client.replace('/c', 'one', 'three') is True
    assert client.replace('/c', 'one', 'four') is False
    client.put('/d/a', '1')
    client.put('/d/b', '2')
    assert [v for v, _ in client.get_prefix('/d/', sort_order='descend')] == [
        b'2', b'1']
    assert [m['key'] for _, m in client.get_all()] == [b'/c', b'/d/a',
                                                       b'/d/b']
    assert client.delete('/c') is True
    assert client.delete('/c') is False
    assert client.delete_prefix('/d/') is True
    assert client.get_all() == []
    assert client.status()['version'] == '3.5.1'
    assert [m['ID'] for m in client.members()] == [str(server.member_id)]
    lock = client.lock('job', ttl=10)
    assert lock.acquire() is True
    assert client.lock('job', ttl=10).acquire() is False
    assert lock.is_acquired()
    server.advance(10)
    assert not lock.is_acquired()
    assert client.lock('job', ttl=10).acquire() is True
