"""An asyncio client for etcd's v3 JSON gateway, over httpx.

:class:`AsyncEtcd3Client` knows every member of one cluster and talks to
one at a time: a request that finds the member in use unavailable moves
the client to the next (round robin), as
:class:`~etcdwatch.v3client.FailoverEtcd3Client` does for threads.  It is
the transport of :class:`~etcdwatch.backends.v3_async.AsyncV3Backend`;
what the requests mean lives in :mod:`etcdwatch.backends.v3proto`.

Example::

    from etcdwatch.aio.client import AsyncEtcd3Client

    async with AsyncEtcd3Client(['10.0.0.1:2379', '10.0.0.2:2379'],
                                timeout=10) as client:
        answer = await client.post('kv/range', {'key': 'L2E='})

httpx is imported with this module (the ``aio`` extra).
"""

import asyncio
import json
import ssl
from typing import (Any, Dict, List, Mapping, Optional, Sequence, Tuple,
                    Union)

import httpx

from etcdwatch.backends import v3auth
from etcdwatch.backends import v3proto
from etcdwatch import exceptions

__all__ = ['AsyncEtcd3Client', 'MessageStream']

#: Idle connections kept for unary requests.  Streams (one connection each)
#: are not limited: a thousand watchers on one client hold a thousand.
MAX_IDLE_CONNECTIONS = 20


class _Translate(v3proto.Translate):
    """Turns httpx's (and the sockets') errors into etcdwatch's."""

    RULES = (
        (httpx.HTTPError,
         (httpx.TimeoutException, httpx.NetworkError,
          httpx.RemoteProtocolError)),
        ((OSError, asyncio.TimeoutError), BaseException),
        ((httpx.InvalidURL, httpx.StreamError), ()),
    )


def _ssl_context(ca_cert, cert_cert, cert_key):
    context = ssl.create_default_context(cafile=ca_cert)
    if cert_cert:
        # As FailoverEtcd3Client: a certificate file may hold its key too.
        context.load_cert_chain(cert_cert, cert_key or None)
    return context


class MessageStream(object):
    """One streaming answer (a watch): its JSON messages, one per line.

    Made by :meth:`AsyncEtcd3Client.open_stream`.  One reader task per
    stream reads the body into a buffer, and stops reading while a whole
    message waits there to be taken (so a slow consumer slows the stream
    rather than fill memory).  A caller whose deadline passes, or who is
    cancelled, leaves what was read in the buffer, and the next
    :meth:`next_message` goes on from it: no byte is lost or read twice,
    and a message is only ever returned whole.  Waiting costs a future and
    a timer, not a task per message.
    """

    def __init__(self, response, url):
        self.response = response
        #: The member's base URL, for moving off it when it fails.
        self.url = url
        #: Set by :meth:`abort`: closed on purpose, not failed.
        self.aborted = False
        #: The timeout of the last watch call that used it, and when that
        #: call ended (loop time), for reaping idle streams.
        self.timeout = None
        self.last_used = asyncio.get_running_loop().time()
        #: The generation of the token it was opened with.
        self.auth_generation = 0
        self._chunks = response.aiter_raw()
        self._buffer = v3proto.MessageBuffer()
        self._reader: Optional['asyncio.Task[None]'] = None
        self._error: Optional[BaseException] = None
        # The future a waiting next_message() sleeps on, and the one the
        # reader sleeps on while a whole message waits to be taken.
        self._waiter: Optional['asyncio.Future[None]'] = None
        self._room: Optional['asyncio.Future[None]'] = None

    def has_message(self):
        """Whether a whole message is received (next_message won't wait)."""
        return self._buffer.has_message()

    async def next_message(self, deadline):
        """The next message, or None if ``deadline`` passes first.

        ``deadline`` is an event loop time (``loop.time()``), or None to
        wait for ever.  Returns None at once after :meth:`abort`.  Raises
        :class:`~etcdwatch.backends.v3proto.StreamEnded` at the end of the
        stream, httpx's errors as they come (untranslated), ValueError for
        a line that is not JSON.
        """
        loop = asyncio.get_running_loop()
        while True:
            message = self._buffer.next()
            if message is not None:
                if not self._buffer.has_line():
                    _settle(self._room)
                return message
            if self.aborted:
                return None
            if self._error is not None:
                raise self._error
            if self._reader is None:
                self._reader = loop.create_task(self._read())
            _settle(self._room)
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return None
            waiter = self._waiter = loop.create_future()
            timer = None if remaining is None else loop.call_at(
                deadline, _settle, waiter)
            try:
                # Settled by the reader (data, the end, an error), by
                # abort(), or by the timer; the loop sees which.
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()

    async def _read(self):
        """Read the body into the buffer, a whole message ahead at most."""
        loop = asyncio.get_running_loop()
        try:
            async for chunk in self._chunks:
                self._buffer.feed(chunk)
                _settle(self._waiter)
                if self._buffer.has_line():
                    room = self._room = loop.create_future()
                    await room
            self._buffer.end()
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: broad; the reader gets it
            self._error = e
        finally:
            _settle(self._waiter)

    def abort(self):
        """Make a :meth:`next_message` waiting in another task return None.

        That caller then closes the stream.  Never raises.
        """
        self.aborted = True
        _settle(self._waiter)

    async def aclose(self):
        """Close the stream and its connection; never raises.

        Finishes even if the caller is cancelled meanwhile (the caller
        still gets its CancelledError).
        """
        reader, self._reader = self._reader, None
        await asyncio.shield(self._close(reader))

    async def _close(self, reader):
        if reader is not None and not reader.done():
            reader.cancel()
            await asyncio.wait({reader})
        for close in (self._chunks.aclose, self.response.aclose):
            try:
                await close()
            except Exception:  # noqa: broad; closing must not fail
                pass


def _settle(future):
    """Wake whoever waits on ``future`` (None, or done: nothing to do)."""
    if future is not None and not future.done():
        future.set_result(None)


class AsyncEtcd3Client(object):
    """An asyncio client for etcd's v3 gateway on several members.

    :param endpoints: the members, as ``'host:port'`` strings (IPv6 in
        brackets) or ``(host, port)`` pairs, or one comma-separated string;
        the first is used first.
    :param protocol: ``'http'`` or ``'https'``.
    :param ca_cert: CA bundle to verify the members with (https; default:
        the system's).
    :param cert_cert: client certificate (https), whose file may hold the
        key too; ``cert_key`` its key.
    :param timeout: seconds every request may take in all (connecting,
        sending, waiting, reading), and every stream to connect.
    :param api_path: the gateway's API path (``'/v3/'``); None asks etcd
        for its version on first use.
    :param transport: an ``httpx.AsyncBaseTransport`` to use instead of
        the network (TLS options then belong to it), such as an in-memory
        etcd.
    :param username: etcd v3 user to authenticate as, with ``password``
        (both or neither): the token goes with every request and stream
        (:meth:`request_headers`), and is renewed once when etcd refuses
        it (:mod:`etcdwatch.backends.v3auth`).  The password is in no
        repr, log line or error.

    :attr:`base_url` is the member in use.  The environment is ignored (no
    proxies, no ``$SSL_CERT_FILE``), as python-etcd and
    FailoverEtcd3Client do.  Connections: unlimited streams, and up to
    :data:`MAX_IDLE_CONNECTIONS` idle ones for unary requests.  Use it in
    one event loop; :meth:`aclose` (or ``async with``) releases it.
    """

    def __init__(self, endpoints: Union[str, Sequence[Any]], *,
                 protocol: str = 'http', ca_cert: Optional[str] = None,
                 cert_cert: Optional[str] = None,
                 cert_key: Optional[str] = None, timeout: float = 10,
                 api_path: Optional[str] = None,
                 transport: Optional[httpx.AsyncBaseTransport] = None,
                 username: Optional[str] = None,
                 password: Optional[str] = None
                 ) -> None:
        #: The credentials and token (:class:`~etcdwatch.backends.v3auth.
        #: Auth`).
        self.auth = v3auth.Auth(username, password)
        self._auth_lock: Optional[asyncio.Lock] = None
        self.endpoints: List[v3proto.Endpoint] = v3proto.parse_endpoints(
            endpoints)
        if protocol not in ('http', 'https'):
            raise ValueError('protocol: %r is neither http nor https'
                             % (protocol,))
        if (ca_cert or cert_cert or cert_key) and protocol != 'https':
            raise ValueError('ca_cert, cert_cert and cert_key need '
                             'protocol=\'https\'')
        if cert_key and not cert_cert:
            raise ValueError('cert_key: given without cert_cert')
        if isinstance(timeout, bool) or not isinstance(
                timeout, (int, float)) or not timeout > 0:
            raise ValueError('timeout: %r is not a number of seconds above 0'
                             % (timeout,))
        self.protocol = protocol
        self.timeout = float(timeout)
        self._api_path = api_path.strip('/') if api_path else None
        self._current = 0
        verify: Union[bool, ssl.SSLContext] = True
        if protocol == 'https' and transport is None:
            verify = _ssl_context(ca_cert, cert_cert, cert_key)
        #: The httpx clients (for the curious; use the methods): unary
        #: requests on a small pool, streams on one of their own.  A pool
        #: is scanned whenever a request starts or ends: a thousand open
        #: watch streams in the unary pool made every heartbeat's read
        #: cost milliseconds of CPU.
        self.http = httpx.AsyncClient(
            verify=verify, timeout=httpx.Timeout(self.timeout),
            limits=httpx.Limits(
                max_connections=None,
                max_keepalive_connections=MAX_IDLE_CONNECTIONS),
            transport=transport, trust_env=False)
        self.streams_http = httpx.AsyncClient(
            verify=verify, timeout=httpx.Timeout(self.timeout),
            limits=httpx.Limits(max_connections=None,
                                max_keepalive_connections=0),
            transport=transport, trust_env=False)

    # -- members --------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``protocol://host:port`` of the member in use."""
        return v3proto.base_url(self.protocol, self.endpoints[self._current])

    def failover(self, failed_url: Optional[str] = None) -> str:
        """Move to the next member; return the new :attr:`base_url`.

        ``failed_url`` is the base URL the failed request went to: if the
        client has already moved on from it, this does nothing, so that one
        failure seen by several requests moves only once.
        """
        if failed_url is None or failed_url == self.base_url:
            self._current = (self._current + 1) % len(self.endpoints)
        return self.base_url

    def translate(self, what: str, url: Optional[str] = None,
                  stream: Optional[MessageStream] = None) -> _Translate:
        """A context manager that turns httpx errors into etcdwatch's.

        On EtcdUnavailable it moves off the member (``url``, the stream's,
        or the one in use), unless ``stream`` was aborted on purpose.
        """
        failed = url or (stream.url if stream is not None else
                         self.base_url)

        def unavailable():
            if stream is None or not stream.aborted:
                self.failover(failed)
        return _Translate(what, unavailable)

    # -- requests -------------------------------------------------------------

    async def request_headers(self) -> Dict[str, str]:
        """Headers for every request and stream to etcd.

        The ``Authorization`` token with credentials (authenticating
        first if there is none), else nothing.  Never logged.
        """
        return (await self.token())[1]

    async def token(self) -> Tuple[int, Dict[str, str]]:
        """``(generation, headers)`` of the token to send.

        Authenticates first if a token is needed (one task at a time);
        raises :class:`~etcdwatch.exceptions.EtcdAuthError` for a wrong
        user or password.
        """
        auth = self.auth
        if not auth.enabled:
            return auth.generation, {}
        if self._auth_lock is None:
            self._auth_lock = asyncio.Lock()
        async with self._auth_lock:
            if auth.needed():
                path, payload, what = auth.authenticate()
                try:
                    auth.authenticated(await self._unary(
                        path, payload, what, None, {}))
                except v3auth.AuthNotEnabled:
                    auth.not_enabled()
                except exceptions.EtcdAuthError as e:
                    raise auth.name(e)
            return auth.generation, auth.headers()

    async def _url(self, path: str) -> str:
        # The member in use can change: the API path is the cluster's, the
        # base URL the member's.  /version needs no token.
        if self._api_path is None:
            resp = await self.http.get(self.base_url + '/version')
            if resp.status_code != 200:
                v3proto.raise_for('etcd version', resp.status_code, None)
            self._api_path = v3proto.api_path(resp.json()['etcdserver'])
        return '%s/%s/%s' % (self.base_url, self._api_path, path.strip('/'))

    async def post(self, path: str, payload: Mapping[str, Any], *,
                   what: Optional[str] = None,
                   timeout: Optional[float] = None) -> Dict[str, Any]:
        """POST one unary request; return the answer's JSON result.

        ``path`` is below the API path, such as ``'kv/range'``; ``what``
        names the request in errors.  Takes at most ``timeout`` seconds,
        or the client's timeout if shorter, in all.  Raises
        :class:`~etcdwatch.exceptions.EtcdUnavailable` (after moving to the
        next member) when the member cannot be reached or does not answer
        in time, and the other errors of
        :func:`~etcdwatch.backends.v3proto.raise_for` for etcd's refusals.
        """
        what = what or path
        for attempt in (1, 2):
            headers = await self.request_headers()
            generation = self.auth.generation
            try:
                return await self._unary(path, payload, what, timeout,
                                         headers)
            except exceptions.BackendError as e:
                if not (isinstance(e, v3auth.TokenRejected) and
                        attempt == 1 and self.auth.enabled):
                    error = self.auth.give_up(e)
                    if error is e:
                        raise
                    raise error from e
                self.auth.rejected(generation)
        raise AssertionError('unreachable')

    async def _unary(self, path, payload, what, timeout, headers):
        timeout = self.timeout if timeout is None else min(timeout,
                                                           self.timeout)
        with self.translate(what):
            try:
                return await asyncio.wait_for(
                    self._post(path, payload, what, timeout, headers),
                    timeout)
            except asyncio.TimeoutError:
                raise exceptions.EtcdUnavailable(
                    '%s: etcd did not answer within %.1fs' % (what, timeout))

    async def _post(self, path, payload, what, timeout, headers):
        url = await self._url(path)
        resp = await self.http.post(url, json=payload, timeout=timeout,
                                    headers=headers)
        try:
            body = resp.json()
        except ValueError:
            body = None
        return v3proto.unary_answer(what, resp.status_code, body)

    async def open_stream(self, path: str, payload: Mapping[str, Any], *,
                          what: Optional[str] = None,
                          wait: Optional[float] = None,
                          headers: Optional[Mapping[str, str]] = None
                          ) -> Optional[MessageStream]:
        """POST a streaming request (a watch); its :class:`MessageStream`.

        Waits up to ``wait`` seconds (None: no limit) for etcd to answer;
        connecting takes at most the client's timeout.  No answer in time
        returns None if ``wait`` is too short to blame etcd for (under
        :data:`~etcdwatch.backends.v3proto.MIN_SILENCE`), else raises
        EtcdUnavailable.  An error answer raises as :meth:`post` (a member
        without a leader: EtcdUnavailable).  The caller owns the stream
        (:meth:`MessageStream.aclose`).
        """
        what = what or path
        url = self.base_url
        connect = self.timeout if wait is None else min(wait, self.timeout)
        token = await self.request_headers()
        generation = self.auth.generation
        with self.translate(what, url):
            all_headers = dict(headers or {})
            all_headers.update(token)
            request = self.streams_http.build_request(
                'POST', await self._url(path), json=payload,
                headers=all_headers,
                timeout=httpx.Timeout(self.timeout, connect=connect,
                                      read=None))
            try:
                response = await asyncio.wait_for(
                    self.streams_http.send(request, stream=True), wait)
            except asyncio.TimeoutError:
                return v3proto.unanswered(what, wait)
            try:
                if response.status_code != 200:
                    try:
                        body = json.loads(await asyncio.wait_for(
                            response.aread(), self.timeout))
                    except ValueError:
                        body = None
                    v3proto.raise_for(what, response.status_code, body)
                stream = MessageStream(response, url)
                stream.auth_generation = generation
                return stream
            except BaseException:
                await asyncio.shield(response.aclose())
                raise

    # -- lifetime -------------------------------------------------------------

    async def aclose(self) -> None:
        """Close every connection (streams included)."""
        await self.http.aclose()
        await self.streams_http.aclose()

    async def __aenter__(self) -> 'AsyncEtcd3Client':
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        user = ('' if self.auth.username is None else
                ' user %s' % self.auth.username)
        return '<AsyncEtcd3Client %s of %s%s>' % (
            self.base_url, ','.join(v3proto.base_url(self.protocol, e)
                                    for e in self.endpoints), user)
