"""Drive etcd through its v2 or v3 API, so one test runs on both backends.

:class:`V2Driver` speaks python-etcd, :class:`V3Driver` etcd3gw; both offer
the same small set of changes and a read-back of a tree, and tell a worker
process (``tests.functional.worker``) which API to use.  ``make_driver``
builds one for a server.
"""

import base64
import threading
import urllib.parse
import urllib.request

import etcd

from tests.helpers import etcd_state

# Generous: a 2-core machine shared with other test runs.
TIMEOUT = 10
#: Where V2Driver.forget_history writes (outside every test's prefix).
HISTORY_FILLER = '/etcdwatch-tests/history-filler'


def v3_client(server, timeout=TIMEOUT):
    return V3Driver.client_at(server.host, server.port, timeout)


def make_driver(name, server):
    """A driver for API ``name`` ('v2' or 'v3') on ``server``."""
    cls = {'v2': V2Driver, 'v3': V3Driver}[name]
    return cls(server, cls.client_for(server))


class Driver(object):
    """Changes etcd the way a user of one API would; reads it back."""

    name = None
    #: Arguments that make a worker process use this API.
    worker_flags = ()
    #: Whether the API has directories (v2) or only keys (v3).
    has_directories = False

    def __init__(self, server, client):
        self.server = server
        #: The client to give the recipes.
        self.client = client

    @classmethod
    def client_for(cls, server):
        return cls.client_at(server.host, server.port)

    @classmethod
    def client_at(cls, host, port, timeout=TIMEOUT):
        """A client of this API for whatever listens at host:port."""
        raise NotImplementedError

    def new_client(self):
        """A client of its own (a second process would have one)."""
        return self.client_for(self.server)

    def reconnect(self):
        """Give this driver a new client (after etcd restarted)."""
        self.client = self.new_client()

    @property
    def address(self):
        """HOST:PORT, as a worker process takes it."""
        return '%s:%d' % (self.server.host, self.server.port)

    def worker_args(self, mode, *args):
        """The arguments of a worker process in ``mode`` on this server."""
        return [mode, self.address] + list(args) + list(self.worker_flags)

    def put_in_threads(self, keys, value, threads=8):
        """Write ``value`` to every key, from ``threads`` clients at once."""
        chunks = [keys[i::threads] for i in range(threads)]

        def write(chunk):
            writer = self.__class__(self.server, self.new_client())
            for key in chunk:
                writer.put(key, value)
        workers = [threading.Thread(target=write, args=(c,)) for c in chunks]
        for t in workers:
            t.start()
        for t in workers:
            t.join(300)


class V2Driver(Driver):
    name = 'v2'
    has_directories = True
    #: etcd v2 keeps this many events of history.
    HISTORY = 1000

    @classmethod
    def client_for(cls, server):
        return server.client(read_timeout=TIMEOUT)

    @classmethod
    def client_at(cls, host, port, timeout=TIMEOUT):
        return etcd.Client(host=host, port=port, read_timeout=timeout)

    def make_dir(self, path):
        self.client.write(path, None, dir=True)

    def put(self, key, value, ttl=None):
        self.client.write(key, value, ttl=ttl)

    def put_many(self, items):
        # v2 has no transactions: one index per key.
        for key, value in sorted(items.items()):
            self.client.write(key, value)

    def get(self, key):
        """The value of ``key``, or None."""
        try:
            return self.client.read(key).value
        except etcd.EtcdKeyNotFound:
            return None

    def create(self, key, value):
        """Create ``key`` if absent; whether it was."""
        try:
            self.client.write(key, value, prevExist=False)
            return True
        except etcd.EtcdAlreadyExist:
            return False

    def cas(self, key, old, new):
        """Compare-and-swap; whether the value was ``old``."""
        try:
            self.client.write(key, new, prevValue=old)
            return True
        except (etcd.EtcdCompareFailed, etcd.EtcdKeyNotFound):
            return False

    def delete(self, key):
        """Delete ``key``; a key that is not there is no error."""
        try:
            self.client.delete(key)
        except etcd.EtcdKeyNotFound:
            pass

    def cad(self, key, value):
        """Compare-and-delete; whether the value was ``value``."""
        try:
            self.client.delete(key, prevValue=value)
            return True
        except (etcd.EtcdCompareFailed, etcd.EtcdKeyNotFound):
            return False

    def delete_prefix(self, path):
        """Delete everything under ``path``; nothing there is no error."""
        try:
            self.client.delete(path, recursive=True)
        except etcd.EtcdKeyNotFound:
            pass

    def state(self, path):
        return etcd_state(self.client, path)

    def put_raw(self, key, value):
        """Write as a tool other than python-etcd would: the key quoted.

        (python-etcd does not quote keys: it could not write ``q?x``.)
        """
        url = '%s/v2/keys%s' % (self.server.client_url,
                                urllib.parse.quote(key, safe='/'))
        request = urllib.request.Request(
            url, data=urllib.parse.urlencode({'value': value}).encode(),
            method='PUT')
        urllib.request.urlopen(request, timeout=TIMEOUT).read()

    def forget_history(self, events_written):
        """Make the last ``events_written`` events' start unreachable.

        v2 keeps the last :data:`HISTORY` events: pad with writes to a
        scratch key until a watch from before them is refused.
        """
        for i in range(self.HISTORY + 1 - events_written):
            self.client.write(HISTORY_FILLER, str(i))


class V3Driver(Driver):
    """etcd3gw, with text as UTF-8 bytes (etcd3gw encodes str as latin-1)."""

    name = 'v3'
    worker_flags = ('--v3',)

    @classmethod
    def client_at(cls, host, port, timeout=TIMEOUT):
        import etcd3gw      # only here: it imports eventlet (via futurist)
        return etcd3gw.client(host=host, port=port, timeout=timeout)

    def put(self, key, value, ttl=None):
        lease = self.client.lease(ttl) if ttl else None
        self.client.put(_utf8(key), _utf8(value), lease=lease)

    def put_many(self, items):
        # One transaction: every event at the same revision.
        ops = [{'request_put': {'key': _b64(k), 'value': _b64(v)}}
               for k, v in sorted(items.items())]
        assert self._txn([], ops)

    def get(self, key):
        """The value of ``key``, or None."""
        values = self.client.get(_utf8(key))
        return values[0].decode('utf-8') if values else None

    def create(self, key, value):
        """Create ``key`` if absent; whether it was."""
        return self._txn(
            [{'key': _b64(key), 'target': 'CREATE', 'result': 'EQUAL',
              'create_revision': 0}],
            [{'request_put': {'key': _b64(key), 'value': _b64(value)}}])

    def cas(self, key, old, new):
        """Compare-and-swap; whether the value was ``old``."""
        return bool(self.client.replace(_utf8(key), _utf8(old), _utf8(new)))

    def delete(self, key):
        """Delete ``key``; a key that is not there is no error."""
        self.client.delete(_utf8(key))

    def cad(self, key, value):
        """Compare-and-delete; whether the value was ``value``."""
        return self._txn(
            [{'key': _b64(key), 'target': 'VALUE', 'result': 'EQUAL',
              'value': _b64(value)}],
            [{'request_delete_range': {'key': _b64(key)}}])

    def _txn(self, compare, success):
        result = self.client.transaction(
            {'compare': compare, 'success': success, 'failure': []})
        return bool(result.get('succeeded'))

    def delete_prefix(self, path):
        self.client.post(self.client.get_url('/kv/deleterange'),
                         json={'key': _b64(path + '/'),
                               'range_end': _b64(path + '0')})

    def state(self, path):
        return v3_state(self.client, path)

    def put_raw(self, key, value):
        """Any key is bytes on v3: other tools write as we do."""
        self.put(key, value)

    def compact(self):
        """Compact etcd's history up to now; returns that revision."""
        return compact(self.client)

    def forget_history(self, events_written):
        """v3 keeps history until compacted: compact it."""
        self.compact()


def _utf8(text):
    return text.encode('utf-8')


def _b64(text):
    return base64.b64encode(_utf8(text)).decode('ascii')


def v3_state(client, path):
    """Every key below ``path + '/'`` -> value, read with etcd3gw."""
    result = client.post(client.get_url('/kv/range'),
                         json={'key': _b64(path + '/'),
                               'range_end': _b64(path + '0')})
    return {base64.b64decode(kv['key']).decode('utf-8'):
            base64.b64decode(kv.get('value', '')).decode('utf-8')
            for kv in result.get('kvs', ())}


def revision(client):
    """etcd's current revision."""
    return int(client.status()['header']['revision'])


def compact(client):
    """Compact (physically) up to the current revision; return it."""
    rev = revision(client)
    client.post(client.get_url('/kv/compaction'),
                json={'revision': rev, 'physical': True})
    return rev
