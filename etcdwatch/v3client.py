"""An etcd3gw client that knows every member of an etcd cluster.

etcd3gw talks to one host.  :class:`FailoverEtcd3Client` *is* an etcd3gw
``Etcd3Client`` (code that uses etcd3gw directly keeps working, against
the member in use) that also holds the cluster's other members: when the
v3 backend cannot reach the member in use, it moves the client on to the
next, so the election and the watchers carry on through the loss of a
member, as python-etcd's ``allow_reconnect`` does on v2.

Example::

    from etcdwatch import v3client

    client = v3client.client(['10.0.0.1:2379', '10.0.0.2:2379',
                              '10.0.0.3:2379'], timeout=10)

etcd3gw is imported with this module: import it only if you use v3.
"""

import json as jsonlib
import threading
from typing import Any, List, Optional, Sequence, Union

from etcd3gw.client import Etcd3Client
import etcd3gw.exceptions

from etcdwatch.backends import v3auth
from etcdwatch.backends import v3proto
from etcdwatch import exceptions

Endpoint = v3proto.Endpoint

__all__ = ['FailoverEtcd3Client', 'client']


# One parser of members for every v3 client (this one, the async one).
_endpoint = v3proto.parse_endpoint


class FailoverEtcd3Client(Etcd3Client):
    """An ``Etcd3Client`` over several members of one cluster.

    :param endpoints: the members, as ``'host:port'`` strings (IPv6 in
        brackets) or ``(host, port)`` pairs; the first is used first.
    :param username: etcd v3 user to authenticate as, with ``password``
        (both or neither).  The token (``Authorization`` header) goes with
        every request of the v3 backend and of this client's own etcd3gw
        methods (``get``, ``put``, ``lease``...; not etcd3gw's ``watch``
        helpers), and is renewed once when etcd refuses it.  One token for
        all members: etcd's tokens are valid on every member.  The
        password is in no repr, log line or error.
    :param kwargs: every other ``Etcd3Client`` argument (``protocol``,
        ``ca_cert``, ``cert_key``, ``cert_cert``, ``timeout``, ...), shared
        by all members.

    ``host`` and ``port`` are those of the member in use.  :meth:`failover`
    moves to the next member (round robin); the v3 backend calls it when
    a request to the member in use finds it unavailable.  Thread-safe.

    Unlike a bare etcd3gw client: a ``cert_cert`` without ``cert_key`` is
    taken to hold its key too (etcd3gw would drop it), and the session it
    makes ignores the environment (requests would let
    ``$REQUESTS_CA_BUNDLE`` override ``ca_cert``, and use proxies from the
    environment), as python-etcd does.  A ``session`` you pass is used as
    it is.
    """

    def __init__(self, endpoints: Sequence[Union[str, Sequence[Any]]],
                 username: Optional[str] = None,
                 password: Optional[str] = None,
                 **kwargs: Any) -> None:
        #: The credentials and token (:class:`~etcdwatch.backends.v3auth.
        #: Auth`), shared with the v3 backends on this client.
        self.auth = v3auth.Auth(username, password)
        #: Held while authenticating (one thread at a time).
        self.auth_lock = threading.Lock()
        parsed = v3proto.parse_endpoints(endpoints)
        for name in ('host', 'port'):
            if name in kwargs:
                raise TypeError('%s: give the members as endpoints' % name)
        self.endpoints: List[Endpoint] = parsed
        self._current = 0
        self._failover_lock = threading.Lock()
        if kwargs.get('cert_cert') and not kwargs.get('cert_key'):
            kwargs['cert_key'] = kwargs['cert_cert']
        own_session = kwargs.get('session') is None
        host, port = parsed[0]
        super(FailoverEtcd3Client, self).__init__(host=host, port=port,
                                                  **kwargs)
        if own_session:
            self.session.trust_env = False

    def failover(self, failed_url: Optional[str] = None) -> str:
        """Move to the next member; return the new ``base_url``.

        ``failed_url`` is the ``base_url`` the failed request went to: if
        another thread has already moved on from it, this does nothing, so
        that one failure seen by several requests moves only once.
        """
        with self._failover_lock:
            if failed_url is None or failed_url == self.base_url:
                self._current = (self._current + 1) % len(self.endpoints)
                self.host, self.port = self.endpoints[self._current]
            return self.base_url

    def post(self, url: str, *args: Any, json: Any = None,
             **kwargs: Any) -> Any:
        """etcd3gw's POST, with the token (renewed once if refused)."""
        auth = self.auth
        if not auth.enabled:
            return super(FailoverEtcd3Client, self).post(
                url, *args, json=json, **kwargs)
        extra = dict(kwargs.pop('headers', None) or {})
        for attempt in (1, 2):
            with self.auth_lock:
                if auth.needed():
                    self._authenticate()
                generation, token = auth.generation, auth.headers()
            try:
                return super(FailoverEtcd3Client, self).post(
                    url, *args, json=json, headers=dict(extra, **token),
                    **kwargs)
            except etcd3gw.exceptions.Etcd3Exception as e:
                if attempt == 2 or not isinstance(
                        _auth_error(e), v3auth.TokenRejected):
                    raise
                with self.auth_lock:
                    auth.rejected(generation)

    def _authenticate(self) -> None:
        # Lock held.  The answer's text never holds the password.
        path, payload, what = self.auth.authenticate()
        try:
            answer = super(FailoverEtcd3Client, self).post(
                self.get_url('/' + path), json=payload)
        except etcd3gw.exceptions.Etcd3Exception as e:
            error = _auth_error(e)
            if isinstance(error, v3auth.AuthNotEnabled):
                self.auth.not_enabled()
                return
            if isinstance(error, exceptions.EtcdAuthError):
                raise self.auth.name(error) from None
            raise
        self.auth.authenticated(answer)

    def __repr__(self) -> str:
        user = ('' if self.auth.username is None else
                ' user %s' % self.auth.username)
        return '<FailoverEtcd3Client %s of %s%s>' % (
            self.base_url, ','.join('%s:%d' % e for e in self.endpoints),
            user)


def _auth_error(error: Exception) -> Any:
    """What an etcd3gw error's body means for auth (None: nothing)."""
    try:
        body = jsonlib.loads(getattr(error, 'detail_text', None) or '')
    except ValueError:
        return None
    code, message = v3proto.gateway_error(body)
    return v3auth.error_for('etcd3gw request', code, message)


def client(endpoints: Sequence[Union[str, Sequence[Any]]],
           **kwargs: Any) -> FailoverEtcd3Client:
    """A :class:`FailoverEtcd3Client` (the same arguments)."""
    return FailoverEtcd3Client(endpoints, **kwargs)
