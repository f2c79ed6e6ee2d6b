"""Carrying :class:`~etcdwatch.testing.fake_v3.core.FakeEtcd3` over
``requests`` and ``httpx`` without a network.

:class:`RequestsAdapter` is a ``requests`` transport adapter: mounted on a
session, every request to the fake's base URL is answered by the fake, and
a ``/v3/watch`` answer is a normal streamed ``requests.Response`` whose
body yields each gateway message (one JSON line) as it happens.  Closing
the response, or its ``connection`` (what etcd3gw's watch cancel does),
ends the stream.  A read timeout (requests' ``timeout``) that passes with
no message raises what a silent socket would: ``ReadTimeoutError`` inside
urllib3, ``requests.exceptions.ConnectionError`` out of ``iter_content``.

The httpx transports live in :mod:`etcdwatch.testing.fake_v3.httpx_transport`
(httpx is imported only there).
"""

import io
from urllib.parse import urlsplit

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.exceptions import ReadTimeoutError

from etcdwatch.testing.fake_v3 import core

_REASONS = {200: 'OK', 400: 'Bad Request', 401: 'Unauthorized',
            403: 'Forbidden', 404: 'Not Found',
            405: 'Method Not Allowed', 499: 'Client Closed Request',
            500: 'Internal Server Error', 503: 'Service Unavailable'}


def request_path(url):
    parts = urlsplit(url)
    return parts.path + ('?' + parts.query if parts.query else '')


def read_timeout(timeout):
    """The read part of a requests ``timeout`` (a number or a pair)."""
    if isinstance(timeout, tuple):
        return timeout[1]
    return timeout


class _BodyRaw(io.BytesIO):
    """A complete body, shaped enough like urllib3's response."""

    def stream(self, amt=None, decode_content=None):
        while True:
            chunk = self.read(amt or 65536)
            if not chunk:
                return
            yield chunk

    def release_conn(self):
        pass


class StreamRaw(object):
    """The raw body of a watch answer: one chunk per gateway message.

    :meth:`read_message` is the socket-free seam a stream reader can use:
    the next message (bytes), None if ``timeout`` passes, b'' at the end.
    """

    chunked = True

    def __init__(self, stream, timeout, url):
        self.watch_stream = stream
        self._timeout = timeout
        self._url = url
        self._buffer = b''

    def read_message(self, timeout=None):
        return self.watch_stream.next_message(timeout)

    def stream(self, amt=None, decode_content=None):
        while True:
            if self._buffer:
                chunk, self._buffer = self._buffer, b''
                yield chunk
                continue
            message = self.watch_stream.next_message(self._timeout)
            if message is None:
                raise ReadTimeoutError(None, self._url, 'Read timed out.')
            if not message:
                return
            yield message

    def read(self, amt=None, decode_content=None):
        if not self._buffer:
            message = self.watch_stream.next_message(self._timeout)
            if message is None:
                raise ReadTimeoutError(None, self._url, 'Read timed out.')
            self._buffer = message
        if amt is None:
            data, self._buffer = self._buffer, b''
        else:
            data, self._buffer = self._buffer[:amt], self._buffer[amt:]
        return data

    @property
    def closed(self):
        return self.watch_stream.closed

    def close(self):
        self.watch_stream.close()

    def release_conn(self):
        pass


class _StreamConnection(object):
    """``response.connection`` of a watch: closing it ends the stream."""

    def __init__(self, raw):
        self._raw = raw

    def close(self):
        self._raw.close()


class RequestsAdapter(BaseAdapter):
    """A ``requests`` adapter answering from a fake etcd v3 member."""

    def __init__(self, server):
        super(RequestsAdapter, self).__init__()
        self.server = server

    def send(self, request, stream=False, timeout=None, verify=True,
             cert=None, proxies=None):
        if not self.server.available:
            raise requests.exceptions.ConnectionError(
                'fake etcd %s is unavailable (outage)' % request.url,
                request=request)
        body = request.body or b''
        if hasattr(body, 'read'):
            body = body.read()
        if isinstance(body, str):
            body = body.encode('utf-8')
        answer = self.server.handle(request.method, request_path(request.url),
                                    body, dict(request.headers))
        response = requests.Response()
        response.request = request
        response.url = request.url
        if isinstance(answer, core.WatchStream):
            response.status_code = 200
            headers = core.STREAM_HEADERS
            raw = StreamRaw(answer, read_timeout(timeout), request.url)
            response.raw = raw
            response.connection = _StreamConnection(raw)
        else:
            response.status_code = answer.status
            headers = answer.headers + [('Content-Length',
                                         str(len(answer.body)))]
            response.raw = _BodyRaw(answer.body)
            response.connection = self
            if not stream:
                response._content = answer.body
        response.headers = CaseInsensitiveDict(headers)
        response.reason = _REASONS.get(response.status_code, '')
        response.encoding = 'utf-8'
        return response

    def close(self):
        pass
