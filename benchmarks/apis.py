"""The two etcd APIs the benchmarks run on: v2 (python-etcd), v3 (etcd3gw).

An :class:`Api` is what a case needs to speak one API to one etcd: new
clients, a pool of writer processes, a read of a prefix, single writes and
a request counter.  Worker processes use the module functions
(:func:`connect`, :func:`put`, :func:`delete`) with the API's name.

v3 text is sent as UTF-8 (etcd3gw's own helpers encode str as latin-1) and
a prefix ``P`` is the keys from ``P/`` up to ``P0``, as etcdwatch reads it.
"""

import base64
import warnings

import etcd

from benchmarks import common

V2 = 'v2'
V3 = 'v3'
NAMES = (V2, V3)
#: What the report calls each API, and its client library.
TITLES = {V2: 'v2 (python-etcd)', V3: 'v3 (etcd3gw)'}
#: The baseline follower of each API (``benchmarks.baselines.BARE``).
BARE_NAMES = {V2: 'bare python-etcd loop', V3: 'bare etcd3gw loop'}


def _etcd3gw():
    # etcd3gw imports eventlet (through futurist), which warns that it is
    # deprecated: nothing the benchmark can act on.
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message=r'\s*Eventlet is '
                                'deprecated')
        import etcd3gw
    return etcd3gw


def connect(name, host, port, timeout=common.CLIENT_READ_TIMEOUT):
    """A new client of API ``name`` for the etcd at host:port."""
    if name == V2:
        return etcd.Client(host=host, port=port, read_timeout=timeout)
    return _etcd3gw().client(host=host, port=port, timeout=timeout)


def put(name, client, key, value):
    """Write ``key``; return the index (v2) or revision (v3) it made."""
    if name == V2:
        return client.write(key, value).modifiedIndex
    return revision(v3_call(client, 'kv/put',
                            {'key': b64(key), 'value': b64(value)}))


def delete(name, client, key):
    """Delete ``key``; return the index it made, or 0 if it was absent."""
    if name == V2:
        try:
            return client.delete(key).modifiedIndex
        except etcd.EtcdKeyNotFound:
            return 0
    result = v3_call(client, 'kv/deleterange', {'key': b64(key)})
    return revision(result) if int(result.get('deleted', 0)) else 0


# -- v3 through etcd3gw ------------------------------------------------------

def b64(text):
    return base64.b64encode(text.encode('utf-8')).decode('ascii')


def text(value):
    """etcd3gw hands out bytes, the gateway's JSON base64: both to str."""
    if isinstance(value, str):
        value = base64.b64decode(value)
    return (value or b'').decode('utf-8')


def revision(result):
    return int(result['header']['revision'])


def v3_call(client, path, payload):
    """One request to the gateway through etcd3gw; its JSON answer."""
    return client.post(client.get_url(path), json=payload)


def prefix_range(path):
    """The range request of every key below ``path + '/'``."""
    return {'key': b64(path + '/'), 'range_end': b64(path + '0')}


def v3_read_tree(client, path):
    """(revision, {key: value}) of every key below ``path + '/'``.

    etcd3gw's ``get_prefix`` returns no revision, and a watch needs the
    read's revision to start right after it: the range API has both.
    """
    result = v3_call(client, 'kv/range', prefix_range(path))
    return revision(result), {text(kv['key']): text(kv.get('value'))
                              for kv in result.get('kvs', ())}


def v3_watch_one(client, path, start):
    """Open a watch stream at revision ``start``; return at its 1st event."""
    request = dict(prefix_range(path), start_revision=start)
    response = client.session.post(
        client.get_url('watch'), json={'create_request': request},
        stream=True, timeout=common.CLIENT_READ_TIMEOUT)
    try:
        # Not parsed: a probe (see benchmarks.catchup) must not compete for
        # the interpreter with the follower it times.
        for line in response.iter_lines(chunk_size=65536):
            if b'"events"' in line:
                return
    finally:
        response.close()


class Api(object):
    """One API of one etcd server, as the cases use it."""

    def __init__(self, name, server):
        self.name = name
        self.title = TITLES[name]
        self.bare_name = BARE_NAMES[name]
        self.server = server
        self._writer = None

    def client(self):
        return connect(self.name, self.server.host, self.server.port)

    @property
    def writer(self):
        """A pool of writer processes, started on first use."""
        if self._writer is None:
            from benchmarks import writing
            self._writer = writing.Writer(self)
        return self._writer

    def read_tree(self, client, path):
        """(index, {key: value}) of every leaf under ``path``."""
        if self.name == V2:
            return common.read_tree(client, path)
        return v3_read_tree(client, path)

    def make_dir(self, client, path):
        """v2 needs the directory to exist before a watch; v3 has none."""
        if self.name == V2:
            client.write(path, None, dir=True)

    def put(self, client, key, value):
        return put(self.name, client, key, value)

    def watch_one(self, client, path, index):
        """One watch that finds the event at ``index`` (a round trip)."""
        if self.name == V2:
            client.watch(path, index=index, recursive=True)
        else:
            v3_watch_one(client, path, index)

    def count_requests(self, client):
        """A :class:`common.RequestCounter` of ``client``'s requests.

        python-etcd sends every request through ``Client.api_execute``;
        etcd3gw, and etcdwatch's v3 backend with its client, through the
        client's ``requests`` session (a watch stream is one request).
        """
        if self.name == V2:
            return common.RequestCounter(client, 'api_execute')
        return common.RequestCounter(client.session, 'post')

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
