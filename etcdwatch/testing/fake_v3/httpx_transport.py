"""httpx transports (sync and asyncio) answering from a fake etcd v3.

A ``/v3/watch`` answer's body is a byte stream yielding one gateway
message (a JSON line) per chunk as it happens; closing the response ends
the stream on the fake.  A read timeout (``timeout=httpx.Timeout(...,
read=s)``) passing with no message raises ``httpx.ReadTimeout``, as a
silent socket would.  The async stream waits on the event loop, never
blocking it.
"""

import asyncio

import httpx

from etcdwatch.testing.fake_v3 import core


def _check_available(server, request):
    if not server.available:
        raise httpx.ConnectError('fake etcd %s is unavailable (outage)'
                                 % request.url, request=request)


def _answer(server, request, body):
    return server.handle(request.method, request.url.raw_path.decode(),
                         body, dict(request.headers))


def _read_timeout(request):
    timeout = request.extensions.get('timeout') or {}
    return timeout.get('read')


def _headers(answer):
    if isinstance(answer, core.WatchStream):
        return core.STREAM_HEADERS
    return answer.headers + [('Content-Length', str(len(answer.body)))]


class _SyncStream(httpx.SyncByteStream):
    def __init__(self, stream, timeout, request):
        self._stream = stream
        self._timeout = timeout
        self._request = request

    def __iter__(self):
        while True:
            message = self._stream.next_message(self._timeout)
            if message is None:
                raise httpx.ReadTimeout('Read timed out.',
                                        request=self._request)
            if not message:
                return
            yield message

    def close(self):
        self._stream.close()


class _AsyncStream(httpx.AsyncByteStream):
    def __init__(self, stream, timeout, request):
        self._stream = stream
        self._timeout = timeout
        self._request = request

    async def __aiter__(self):
        loop = asyncio.get_running_loop()
        arrived = asyncio.Event()

        def wake():
            loop.call_soon_threadsafe(arrived.set)
        self._stream.add_listener(wake)
        try:
            while True:
                arrived.clear()
                message = self._stream.next_message(0)
                if message is None:
                    try:
                        await asyncio.wait_for(arrived.wait(), self._timeout)
                    except asyncio.TimeoutError:
                        raise httpx.ReadTimeout('Read timed out.',
                                                request=self._request)
                    continue
                if not message:
                    return
                yield message
        finally:
            self._stream.remove_listener(wake)

    async def aclose(self):
        self._stream.close()


class HTTPXTransport(httpx.BaseTransport):
    """``httpx.Client(transport=...)`` on a fake etcd v3 member."""

    def __init__(self, server):
        self.server = server

    def handle_request(self, request):
        _check_available(self.server, request)
        answer = _answer(self.server, request, request.read())
        if isinstance(answer, core.WatchStream):
            return httpx.Response(200, headers=_headers(answer),
                                  stream=_SyncStream(
                                      answer, _read_timeout(request),
                                      request))
        return httpx.Response(answer.status, headers=_headers(answer),
                              content=answer.body)


class AsyncHTTPXTransport(httpx.AsyncBaseTransport):
    """``httpx.AsyncClient(transport=...)`` on a fake etcd v3 member."""

    def __init__(self, server):
        self.server = server

    async def handle_async_request(self, request):
        _check_available(self.server, request)
        answer = _answer(self.server, request, await request.aread())
        if isinstance(answer, core.WatchStream):
            return httpx.Response(200, headers=_headers(answer),
                                  stream=_AsyncStream(
                                      answer, _read_timeout(request),
                                      request))
        return httpx.Response(answer.status, headers=_headers(answer),
                              content=answer.body)
