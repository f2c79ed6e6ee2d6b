"""etcd v3 authentication, without the I/O (sans-IO).

The rules both v3 transports (:mod:`etcdwatch.backends.v3`,
:mod:`etcdwatch.backends.v3_async`) follow when etcd has authentication
enabled:

- :class:`Auth` holds a user's name, password and current token.  Before a
  request, a transport that has no token runs :meth:`Auth.authenticate`
  (``POST auth/authenticate {"name", "password"}``) and then sends
  :meth:`Auth.headers` (``Authorization: <token>``) with every request
  and watch stream.
- :func:`error_for` recognises etcd's auth answers (etcd 3.5.1, through
  its JSON gateway):

  ======================================  =====  ====  ==================
  etcd's message                          HTTP   gRPC  meaning
  ======================================  =====  ====  ==================
  ``etcdserver: invalid auth token``      401    16    token expired or
                                                       unknown: get a new
                                                       one, retry once
  ``etcdserver: user name is empty``      400    3     no token sent
  ``etcdserver: authentication failed,    400    3     wrong user or
  invalid user ID or password``                        password
  ``etcdserver: permission denied``       403    7     the user's roles do
                                                       not cover the key
  ``etcdserver: authentication is not     400    9     etcd has auth off:
  enabled``                                            go on without token
  ======================================  =====  ====  ==================

- A watch is never refused by an error answer: etcd 3.5 answers 200,
  ``created`` and ``canceled`` at once, with ``cancel_reason`` ``rpc
  error: code = PermissionDenied desc = etcdserver: permission denied``,
  for an expired, unknown or missing token and for a missing permission
  alike.  So a watch refused that way (:class:`WatchRefused`) is opened
  again once with a new token; refused again, it is
  :class:`~etcdwatch.exceptions.EtcdPermissionDenied`.  A stream already
  open is not touched when its token expires (etcd checks a watch's
  permission only when it is created).
- Lease keepalives need no token on etcd 3.5.1; they are sent with one
  anyway, and a 401 is handled as on any request.

A token is retried once: :meth:`Auth.rejected` forgets the token the
failed request carried (by its :attr:`Auth.generation`, so that threads
that saw the same expiry authenticate only once), the request is sent
again with a new one, and a second rejection is an
:class:`~etcdwatch.exceptions.EtcdAuthError`.

The password is never in a log line, a repr or an exception: only
:meth:`Auth.authenticate`'s request body holds it.
"""

from etcdwatch import exceptions

__all__ = ['Auth', 'TokenRejected', 'WatchRefused', 'error_for',
           'watch_refusal', 'AUTHENTICATE_PATH']

#: The gateway path (below the API path) that hands out tokens.
AUTHENTICATE_PATH = 'auth/authenticate'

GRPC_INVALID_ARGUMENT = 3
GRPC_PERMISSION_DENIED = 7
GRPC_UNAUTHENTICATED = 16

_TOKEN_INVALID = 'invalid auth token'
_NO_USER = 'user name is empty'
_AUTH_FAILED = 'authentication failed'
_DENIED = 'permission denied'
_NOT_ENABLED = 'authentication is not enabled'


class TokenRejected(exceptions.BackendError):
    """etcd refused the token a request carried (or that it had none).

    Internal to the transports: they authenticate again and retry once,
    then raise :class:`~etcdwatch.exceptions.EtcdAuthError`.
    """

    def __init__(self, what, reason):
        super(TokenRejected, self).__init__('%s: %s' % (what, reason))
        self.what = what
        self.reason = reason


class WatchRefused(TokenRejected):
    """etcd canceled a new watch for want of permission or of a token.

    Ambiguous on etcd 3.5 (see the module's doc): the transport opens the
    watch again once with a new token, then raises
    :class:`~etcdwatch.exceptions.EtcdPermissionDenied`.
    """


class AuthNotEnabled(exceptions.BackendError):
    """etcd has authentication off: requests go without a token."""


def error_for(what, code, message):
    """The auth error an error answer means, or None if none.

    ``code`` is the gRPC code (or None), ``message`` etcd's message.
    Returns (does not raise) a :class:`TokenRejected`,
    :class:`~etcdwatch.exceptions.EtcdAuthError`,
    :class:`~etcdwatch.exceptions.EtcdPermissionDenied` or
    :class:`AuthNotEnabled`; their user is filled in by the transport.
    """
    message = message or ''
    if _TOKEN_INVALID in message or code == GRPC_UNAUTHENTICATED:
        return TokenRejected(what, message)
    if _NO_USER in message:
        return TokenRejected(what, message)
    if _AUTH_FAILED in message:
        return exceptions.EtcdAuthError(what, message)
    if _DENIED in message or code == GRPC_PERMISSION_DENIED:
        return exceptions.EtcdPermissionDenied(what, message)
    if _NOT_ENABLED in message:
        return AuthNotEnabled('%s: %s' % (what, message))
    return None


def watch_refusal(what, reason):
    """The error a watch canceled with ``reason`` means, or None."""
    reason = reason or ''
    if _DENIED in reason or _TOKEN_INVALID in reason or _NO_USER in reason:
        return WatchRefused(what, reason)
    return None


def check_credentials(username, password):
    """Raise ValueError unless both or neither are non-empty str.

    The error names the argument, never the password's value.
    """
    for name, value in (('username', username), ('password', password)):
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError('%s: must be a non-empty str' % name)
    if (username is None) != (password is None):
        missing = 'password' if password is None else 'username'
        raise ValueError('%s: needed with %s' % (
            missing, 'username' if missing == 'password' else 'password'))


class Auth(object):
    """One user's credentials and token, shared by a client's backends.

    Not locked: a threaded transport serialises :meth:`authenticate` and
    :meth:`authenticated` itself (one authentication at a time).

    ``username`` None: no credentials; :meth:`headers` is empty and
    nothing ever authenticates.
    """

    def __init__(self, username=None, password=None):
        check_credentials(username, password)
        self.username = username
        self._password = password
        self.token = None
        #: Bumped on every new token (and on every forgotten one).
        self.generation = 0
        #: Tokens obtained so far (for tests and stats).
        self.authentications = 0
        #: etcd said its authentication is off.
        self.disabled = False

    @property
    def enabled(self):
        """Whether there are credentials."""
        return self.username is not None

    def needed(self):
        """Whether the next request must authenticate first."""
        return self.enabled and self.token is None and not self.disabled

    def headers(self):
        """The headers that carry the token (empty without one)."""
        if self.token is None:
            return {}
        return {'Authorization': self.token}

    def authenticate(self):
        """``(path, payload, what)`` of the authenticate request.

        The payload holds the password: never log it.
        """
        return (AUTHENTICATE_PATH,
                {'name': self.username, 'password': self._password},
                'authenticate as %s' % self.username)

    def authenticated(self, body):
        """Take the answer of :meth:`authenticate`'s request."""
        token = body.get('token') if isinstance(body, dict) else None
        if not token or not isinstance(token, str):
            raise exceptions.EtcdAuthError(
                'authenticate', 'etcd answered without a token',
                user=self.username)
        self.token = token
        self.disabled = False
        self.generation += 1
        self.authentications += 1

    def not_enabled(self):
        """etcd has authentication off: send no token (until it asks)."""
        self.token = None
        self.disabled = True
        self.generation += 1

    def rejected(self, generation):
        """The token of ``generation`` was refused: forget it.

        Nothing happens if a newer token replaced it meanwhile.
        """
        if generation == self.generation:
            self.token = None
            self.disabled = False
            self.generation += 1

    def give_up(self, error):
        """The error to raise when a fresh token was refused too.

        For a :class:`WatchRefused`: EtcdPermissionDenied; for another
        :class:`TokenRejected`: EtcdAuthError (or, without credentials,
        "etcd requires authentication"); anything else comes back with
        its user filled in.
        """
        if isinstance(error, WatchRefused):
            return self.name(exceptions.EtcdPermissionDenied(
                error.what, error.reason))
        if isinstance(error, TokenRejected):
            if not self.enabled:
                return exceptions.EtcdAuthError(
                    error.what, 'etcd requires authentication (%s); give '
                    'a username and password' % error.reason)
            return self.name(exceptions.EtcdAuthError(
                error.what, 'etcd refused a new token too: %s'
                % error.reason))
        return self.name(error)

    def name(self, error):
        """Fill in the user of an EtcdAuthError; return it."""
        if isinstance(error, exceptions.EtcdAuthError) and (
                error.user is None):
            error.user = self.username
        return error

    def __repr__(self):
        return '<Auth user=%s token=%s>' % (
            self.username, 'yes' if self.token else 'no')
