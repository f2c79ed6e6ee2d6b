"""Drive etcd through its v2 or v3 API, so one test runs on both backends.

:class:`V2Driver` speaks python-etcd, :class:`V3Driver` etcd3gw; both offer
the same small set of changes and a read-back of a tree.
"""

import base64

import etcd3gw

from tests.helpers import etcd_state

# Generous: a 2-core machine shared with other test runs.
TIMEOUT = 10


def v3_client(server, **kwargs):
    kwargs.setdefault('timeout', TIMEOUT)
    return etcd3gw.client(host=server.host, port=server.port, **kwargs)


class Driver(object):
    """Changes etcd the way a user of one API would; reads it back."""

    name = None

    def __init__(self, server, client):
        self.server = server
        #: The client to give the recipes.
        self.client = client

    def new_client(self):
        raise NotImplementedError


class V2Driver(Driver):
    name = 'v2'

    def new_client(self):
        return self.server.client(read_timeout=TIMEOUT)

    def put(self, key, value, ttl=None):
        self.client.write(key, value, ttl=ttl)

    def put_many(self, items):
        # v2 has no transactions: one index per key.
        for key, value in sorted(items.items()):
            self.client.write(key, value)

    def cas(self, key, old, new):
        self.client.write(key, new, prevValue=old)

    def delete(self, key):
        self.client.delete(key)

    def cad(self, key, value):
        self.client.delete(key, prevValue=value)

    def delete_prefix(self, path):
        self.client.delete(path, recursive=True)

    def state(self, path):
        return etcd_state(self.client, path)


class V3Driver(Driver):
    """etcd3gw, with text as UTF-8 bytes (etcd3gw encodes str as latin-1)."""

    name = 'v3'

    def new_client(self):
        return v3_client(self.server)

    def put(self, key, value, ttl=None):
        lease = self.client.lease(ttl) if ttl else None
        self.client.put(_utf8(key), _utf8(value), lease=lease)

    def put_many(self, items):
        # One transaction: every event at the same revision.
        ops = [{'request_put': {'key': _b64(k), 'value': _b64(v)}}
               for k, v in sorted(items.items())]
        assert self.client.transaction(
            {'compare': [], 'success': ops, 'failure': []})['succeeded']

    def cas(self, key, old, new):
        assert self.client.replace(_utf8(key), _utf8(old), _utf8(new))

    def delete(self, key):
        self.client.delete(_utf8(key))

    def cad(self, key, value):
        result = self.client.transaction({
            'compare': [{'key': _b64(key), 'target': 'VALUE',
                         'result': 'EQUAL', 'value': _b64(value)}],
            'success': [{'request_delete_range': {'key': _b64(key)}}],
            'failure': []})
        assert result.get('succeeded')

    def delete_prefix(self, path):
        self.client.post(self.client.get_url('/kv/deleterange'),
                         json={'key': _b64(path + '/'),
                               'range_end': _b64(path + '0')})

    def state(self, path):
        return v3_state(self.client, path)

    def compact(self):
        """Compact etcd's history up to now; returns that revision."""
        return compact(self.client)


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
