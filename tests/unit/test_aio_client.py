"""The asyncio client and v3 backend over a scripted in-memory gateway.

No etcd and no socket: :class:`_Gateway` is an ``httpx.AsyncBaseTransport``
whose unary answers a test gives as a function, and whose watch streams a
test writes byte by byte, so that cancellation, splits across reads,
aborts and failover can be placed exactly.  Real etcd is in
tests/functional/test_v3_async.py.  No test sleeps for a fixed time: each
waits for a condition.
"""

import asyncio
import json

import httpx
import pytest

from etcdwatch.aio.client import AsyncEtcd3Client
from etcdwatch import backends
from etcdwatch.backends import v3_async
from etcdwatch.backends import v3proto
from etcdwatch import exceptions

WAIT = 30
HEADER = {'cluster_id': '111', 'member_id': '9', 'revision': '20'}


def _message(revision=20, **result):
    return {'result': dict(result, header=dict(HEADER,
                                               revision=str(revision)))}


def _put(revision, key='/p/a', value='v'):
    return {'kv': {'key': v3proto.b64(key), 'value': v3proto.b64(value),
                   'mod_revision': str(revision)}}


def _line(message):
    return json.dumps(message).encode() + b'\n'


class _Body(httpx.AsyncByteStream):
    """A response body the test writes: bytes, or None for its end."""

    def __init__(self):
        self.queue = asyncio.Queue()
        self.closed = False

    async def __aiter__(self):
        while True:
            data = await self.queue.get()
            if data is None:
                return
            yield data

    async def aclose(self):
        self.closed = True


class _Gateway(httpx.AsyncBaseTransport):
    """An in-memory etcd gateway for :class:`AsyncEtcd3Client`.

    ``answer(member, path, payload)`` gives each unary answer: a
    ``(status, body)`` pair, an exception to raise, or a coroutine to
    await (one that never ends: a paused etcd).  Watches get a
    :class:`_Body` each (``streams``), answered 200 at once unless
    ``watch_status`` says otherwise.
    """

    def __init__(self, answer=None):
        self.answer = answer or (lambda member, path, payload: (
            200, {'header': HEADER}))
        self.requests = []
        self.streams = []
        self.watch_status = 200
        self.watch_hangs = False
        self.opened = asyncio.Event()

    async def handle_async_request(self, request):
        member = '%s:%d' % (request.url.host, request.url.port)
        path = request.url.path
        await request.aread()
        payload = json.loads(request.content) if request.content else None
        self.requests.append((member, path, dict(request.headers), payload))
        if path == '/version':
            return httpx.Response(200, json={'etcdserver': '3.5.1'})
        if path == '/v3/watch':
            if self.watch_hangs:
                await asyncio.Event().wait()
            body = _Body()
            self.streams.append(body)
            self.opened.set()
            return httpx.Response(self.watch_status, stream=body)
        answer = self.answer(member, path[len('/v3/'):], payload)
        if isinstance(answer, BaseException):
            raise answer
        if asyncio.iscoroutine(answer):
            answer = await answer
        status, body = answer
        return httpx.Response(status, json=body)

    async def stream(self, count=1):
        """The ``count``-th watch stream, once it is open."""
        while len(self.streams) < count:
            self.opened.clear()
            await asyncio.wait_for(self.opened.wait(), WAIT)
        return self.streams[count - 1]


def _client(gateway, *members, **kwargs):
    return AsyncEtcd3Client(list(members) or ['a:1'], transport=gateway,
                            **kwargs)


async def _until(condition, timeout=WAIT):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, 'condition not met in time'
        await asyncio.sleep(0.005)


# -- the client ---------------------------------------------------------------

def test_options_are_checked():
    for kwargs in ({'protocol': 'ftp'}, {'ca_cert': '/ca.pem'},
                   {'cert_cert': '/c.pem'},
                   {'protocol': 'https', 'cert_key': '/k.pem'},
                   {'timeout': 0}, {'timeout': None}, {'timeout': True}):
        with pytest.raises(ValueError):
            AsyncEtcd3Client(['a:1'], **kwargs)
    with pytest.raises(ValueError, match='endpoints'):
        AsyncEtcd3Client([])
    client = AsyncEtcd3Client('a:1,[::1]:2', timeout=3)
    assert client.endpoints == [('a', 1), ('::1', 2)]
    assert repr(client) == (
        '<AsyncEtcd3Client http://a:1 of http://a:1,http://[::1]:2>')
    assert backends.for_async_client(client).client is client
    with pytest.raises(TypeError):
        backends.for_async_client(object())


def test_many_streams_fit_in_the_pool():
    client = AsyncEtcd3Client(['a:1'])
    pool = client.http._transport._pool
    assert pool._max_connections is None or pool._max_connections >= 10000


@pytest.mark.asyncio
async def test_requests_carry_the_headers_hook_and_find_the_api():
    class Authed(AsyncEtcd3Client):
        async def request_headers(self):
            return {'Authorization': 'token-1'}

    gateway = _Gateway()
    async with Authed(['a:1'], transport=gateway) as client:
        be = v3_async.AsyncV3Backend(client)
        assert await be.read_key('/k') == (None, 20)
        assert await be.watch_tree('/p', 5, 0.05) is None
    [version, read, watch] = gateway.requests
    assert [r[1] for r in gateway.requests] == ['/version', '/v3/kv/range',
                                                '/v3/watch']
    for _member, _path, headers, _payload in (read, watch):
        assert headers['authorization'] == 'token-1'
    # /version needs no token (it is read before authenticating).
    assert 'authorization' not in version[2]
    assert watch[2]['grpc-metadata-hasleader'] == 'true'
    assert watch[3] == {'create_request': {
        'key': v3proto.b64('/p/'), 'range_end': v3proto.b64('/p0'),
        'start_revision': 5, 'progress_notify': True}}


@pytest.mark.asyncio
async def test_an_unreachable_member_moves_the_client_on():
    def answer(member, path, payload):
        if member == 'a:1':
            return httpx.ConnectError('refused')
        return 200, {'header': HEADER, 'kvs': []}

    gateway = _Gateway(answer)
    async with _client(gateway, 'a:1', 'b:2', api_path='/v3/') as client:
        be = v3_async.AsyncV3Backend(client)
        with pytest.raises(exceptions.EtcdUnavailable) as info:
            await be.read_key('/k')
        assert isinstance(info.value.__cause__, httpx.ConnectError)
        assert client.base_url == 'http://b:2'
        assert await be.read_key('/k') == (None, 20)


@pytest.mark.asyncio
async def test_every_request_is_bounded_in_time():
    async def hang():
        await asyncio.Event().wait()

    gateway = _Gateway(lambda member, path, payload: hang())
    async with _client(gateway, 'a:1', 'b:2', timeout=0.5,
                       api_path='v3') as client:
        be = v3_async.AsyncV3Backend(client)
        loop = asyncio.get_running_loop()
        for call in (be.read_key('/k'), be.create('/e', 'me', 5),
                     be.check_current('/p', 1)):
            began = loop.time()
            with pytest.raises(exceptions.EtcdUnavailable,
                               match='within 0.5s'):
                await call
            assert 0.4 <= loop.time() - began < 0.5 + 5
        assert client.base_url == 'http://b:2'      # three moves, a b a b


@pytest.mark.asyncio
async def test_gateway_refusals_are_translated():
    answers = {'kv/range': (503, {'error': 'etcdserver: no leader',
                                  'code': 14}),
               'kv/txn': (400, {'error': 'etcdserver: bad', 'code': 3})}
    gateway = _Gateway(lambda member, path, payload: answers.get(
        path, (200, {'header': HEADER, 'ID': '7', 'TTL': '5'})))
    async with _client(gateway, 'a:1', 'b:2', api_path='v3') as client:
        be = v3_async.AsyncV3Backend(client)
        with pytest.raises(exceptions.EtcdUnavailable, match='no leader'):
            await be.read_key('/k')
        assert client.base_url == 'http://b:2'
        with pytest.raises(exceptions.BackendError) as info:
            await be.create('/e', 'me', 5)
        assert type(info.value) is exceptions.BackendError
        # The lease granted for it was revoked.
        assert [r[1] for r in gateway.requests[-3:]] == [
            '/v3/lease/grant', '/v3/kv/txn', '/v3/lease/revoke']


# -- watch streams ------------------------------------------------------------

@pytest.mark.asyncio
async def test_one_stream_serves_many_calls():
    gateway = _Gateway()
    async with _client(gateway, api_path='v3') as client:
        be = v3_async.AsyncV3Backend(client)
        assert await be.watch_tree('/p', 5, 0.05) is None
        body = await gateway.stream()
        body.queue.put_nowait(_line(_message(4, created=True)))
        body.queue.put_nowait(_line(_message(9)))       # progress
        assert await be.watch_tree('/p', 5, 0.1) is None
        [cursor] = be._cursors.values()
        await _until(lambda: cursor.start_revision() == 10)
        line = _line(_message(12, events=[_put(12, '/p/a', 'żółw')]))
        body.queue.put_nowait(line[:30])
        assert await be.watch_tree('/p', 5, 0.1) is None
        body.queue.put_nowait(line[30:])
        event = await be.watch_tree('/p', 5, WAIT)
        assert (event.key, event.value, event.index) == ('/p/a', 'żółw', 12)
        assert len(gateway.streams) == 1 and be.open_streams() == 1
        await be.aclose()
        assert be.open_streams() == 0 and body.closed


@pytest.mark.asyncio
async def test_a_watch_cancelled_mid_message_loses_and_repeats_nothing():
    gateway = _Gateway()
    async with _client(gateway, api_path='v3') as client:
        be = v3_async.AsyncV3Backend(client)
        task = asyncio.ensure_future(be.watch_tree('/p', 5, WAIT))
        body = await gateway.stream()
        body.queue.put_nowait(_line(_message(4, created=True)))
        line = _line(_message(7, events=[_put(6, '/p/a', '1'),
                                         _put(7, '/p/b', '2')]))
        body.queue.put_nowait(line[:25])
        [cursor] = be._cursors.values()
        # Cancelled while it waits for the rest of the message.
        await _until(lambda: body.queue.empty() and
                     cursor.stream._waiter is not None and
                     not cursor.stream._reader.done())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not cursor.lock.locked() and be.open_streams() == 1
        body.queue.put_nowait(line[25:])
        got = [await be.watch_tree('/p', 5, WAIT)]
        got.append(await be.watch_tree('/p', got[-1].index + 1, WAIT))
        assert [(e.key, e.index) for e in got] == [('/p/a', 6), ('/p/b', 7)]
        assert await be.watch_tree('/p', 8, 0.1) is None
        assert len(gateway.streams) == 1
        # Cancelled while opening its stream: nothing is left half open.
        await be.aclose()
        gateway.watch_hangs = True
        task = asyncio.ensure_future(be.watch_tree('/p', 8, WAIT))
        await _until(lambda: len(gateway.requests) == 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert be.open_streams() == 0 and not cursor.lock.locked()
        gateway.watch_hangs = False
        assert await be.watch_tree('/p', 8, 0.1) is None
        assert gateway.requests[-1][3]['create_request'][
            'start_revision'] == 8


@pytest.mark.asyncio
async def test_aclose_wakes_a_waiting_watch_and_the_backend_goes_on():
    gateway = _Gateway()
    async with _client(gateway, api_path='v3') as client:
        be = v3_async.AsyncV3Backend(client)
        loop = asyncio.get_running_loop()
        began = loop.time()
        task = asyncio.ensure_future(be.watch_tree('/p', 5, WAIT))
        body = await gateway.stream()
        body.queue.put_nowait(_line(_message(4, created=True)))
        [cursor] = be._cursors.values()
        await _until(lambda: cursor.stream is not None and
                     cursor.stream._read is not None and body.queue.empty())
        await be.aclose()
        assert await task is None and loop.time() - began < 5
        assert be.open_streams() == 0 and body.closed
        # A second watch of the same prefix, meanwhile, waits its turn.
        first = asyncio.ensure_future(be.watch_tree('/p', 5, WAIT))
        second = await be.watch_tree('/p', 5, 0.1)
        assert second is None and not first.done()
        body = await gateway.stream(2)
        body.queue.put_nowait(_line(_message(6, events=[_put(6)])))
        assert (await first).index == 6


@pytest.mark.asyncio
@pytest.mark.parametrize('message', [
    {'error': {'grpc_code': 14, 'http_code': 503,
               'message': 'etcdserver: no leader'}},
    _message(canceled=True, cancel_reason='etcdserver: no leader'),
    None,
])
async def test_no_leader_or_an_ended_stream_moves_to_the_next_member(message):
    gateway = _Gateway()
    async with _client(gateway, 'a:1', 'b:2', api_path='v3') as client:
        be = v3_async.AsyncV3Backend(client)
        assert await be.watch_tree('/p', 5, 0.05) is None
        body = await gateway.stream()
        body.queue.put_nowait(_line(_message(4, created=True)))
        body.queue.put_nowait(None if message is None else
                              json.dumps(message).encode())
        if message is not None:
            body.queue.put_nowait(None)
        with pytest.raises(exceptions.EtcdUnavailable,
                           match='ended' if message is None else
                           'no leader'):
            await be.watch_tree('/p', 5, WAIT)
        assert client.base_url == 'http://b:2' and be.open_streams() == 0
        assert await be.watch_tree('/p', 5, 0.05) is None
        assert gateway.requests[-1][0] == 'b:2'


@pytest.mark.asyncio
async def test_a_member_without_leader_refuses_a_new_watch():
    gateway = _Gateway()
    gateway.watch_status = 503
    async with _client(gateway, 'a:1', 'b:2', api_path='v3') as client:
        be = v3_async.AsyncV3Backend(client)
        task = asyncio.ensure_future(be.watch_tree('/p', 5, WAIT))
        body = await gateway.stream()
        body.queue.put_nowait(json.dumps({'error': {
            'grpc_code': 14, 'message': 'etcdserver: no leader'}}).encode())
        body.queue.put_nowait(None)
        with pytest.raises(exceptions.EtcdUnavailable, match='no leader'):
            await task
        assert client.base_url == 'http://b:2' and body.closed


@pytest.mark.asyncio
@pytest.mark.parametrize('timeout,expected', [
    (2, exceptions.EtcdUnavailable),    # etcd said nothing for 2 s
    (0.1, None),                        # too short to blame etcd for
])
async def test_a_watch_etcd_never_answers(timeout, expected):
    gateway = _Gateway()
    gateway.watch_hangs = True
    async with _client(gateway, api_path='v3', timeout=5) as client:
        be = v3_async.AsyncV3Backend(client)
        loop = asyncio.get_running_loop()
        began = loop.time()
        if expected is None:
            assert await be.watch_tree('/p', 5, timeout) is None
        else:
            with pytest.raises(expected, match='did not answer'):
                await be.watch_tree('/p', 5, timeout)
        assert timeout * 0.9 <= loop.time() - began < timeout + 5
        assert be.open_streams() == 0


@pytest.mark.asyncio
async def test_waiting_for_a_cursor_never_leaks_its_lock():
    lock = asyncio.Lock()
    assert await v3_async._acquire(lock, 0)          # free: taken at once
    assert await v3_async._acquire(lock, 0.05) is False
    waiter = asyncio.ensure_future(v3_async._acquire(lock, WAIT))
    await _until(lambda: len(lock._waiters or ()) == 1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    # Handed over and cancelled in the same turn: given back.
    waiter = asyncio.ensure_future(v3_async._acquire(lock, WAIT))
    await _until(lambda: len(lock._waiters or ()) == 1)
    lock.release()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await _until(lambda: not lock.locked())
    assert await v3_async._acquire(lock, 0.05)
    lock.release()
