"""FakeEtcd3Server: the fake etcd v3 with its clients wired to it.

requests (for etcd3gw) and httpx are imported on first use: either alone
is enough for the clients that use it.
"""

from etcdwatch.testing.fake_v3 import core


class FakeEtcd3Server(core.FakeEtcd3):
    """An in-memory etcd 3.5 member and the clients that reach it.

    Everything :class:`~etcdwatch.testing.fake_v3.core.FakeEtcd3` takes
    (``clock``, ``token_ttl``, ``min_lease_ttl``, ...), plus ``host`` and
    ``port``: the address its clients believe they talk to (nothing
    listens there).

    - :meth:`session`: a ``requests.Session`` answered by the fake;
    - :meth:`client`: an ``etcd3gw`` client on such a session (watches
      included);
    - :meth:`httpx_transport` / :meth:`async_httpx_transport`: transports
      for ``httpx.Client`` / ``httpx.AsyncClient`` (httpx must be
      installed).
    """

    def __init__(self, host='fake-etcd', port=2379, **kwargs):
        super(FakeEtcd3Server, self).__init__(**kwargs)
        self.host = host
        self.port = port

    @property
    def base_url(self):
        return 'http://%s:%d' % (self.host, self.port)

    def adapter(self):
        """A ``requests`` transport adapter answering from this fake."""
        from etcdwatch.testing.fake_v3 import transport
        return transport.RequestsAdapter(self)

    def session(self):
        """A new ``requests.Session`` whose requests this fake answers.

        Only the fake's base URL (http and https) is mounted: a request
        anywhere else goes to the network as usual.
        """
        import requests
        session = requests.Session()
        session.trust_env = False
        adapter = self.adapter()
        for scheme in ('http', 'https'):
            session.mount('%s://%s:%d' % (scheme, self.host, self.port),
                          adapter)
        return session

    def client(self, **kwargs):
        """A new ``etcd3gw.client.Etcd3Client`` talking to this fake."""
        from etcd3gw.client import Etcd3Client
        kwargs.setdefault('session', self.session())
        return Etcd3Client(host=self.host, port=self.port, **kwargs)

    def httpx_transport(self):
        """An ``httpx.BaseTransport`` answering from this fake."""
        from etcdwatch.testing.fake_v3 import httpx_transport
        return httpx_transport.HTTPXTransport(self)

    def async_httpx_transport(self):
        """An ``httpx.AsyncBaseTransport`` answering from this fake."""
        from etcdwatch.testing.fake_v3 import httpx_transport
        return httpx_transport.AsyncHTTPXTransport(self)

    def __repr__(self):
        return '<FakeEtcd3Server %s revision %d>' % (
            self.base_url, self.revision)
