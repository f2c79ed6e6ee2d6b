"""A codec that signs values (docs/values.rst, "Writing a codec")."""

import hashlib
import hmac
import logging

from etcdwatch import codecs
from etcdwatch.codecs import EtcdWriter
from etcdwatch.codecs import JsonCodec
from etcdwatch import EtcdChangeWatcher
from etcdwatch.testing import FakeEtcdClient


class SignedCodec(object):
    def __init__(self, inner, secret):
        self.inner, self.secret = inner, secret

    def _mac(self, text):
        return hmac.new(self.secret, text.encode(),
                        hashlib.sha256).hexdigest()

    def encode(self, value):
        text = self.inner.encode(value)
        return 'hmac-sha256:%s:%s' % (self._mac(text), text)

    def decode(self, text):
        if not text.startswith('hmac-sha256:'):
            raise ValueError('not signed')
        mac, _, payload = text[len('hmac-sha256:'):].partition(':')
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise ValueError('bad signature')
        return self.inner.decode(payload)


class PortWatcher(EtcdChangeWatcher):
    def __init__(self, *args, **kwargs):
        self.ports = {}
        self.refused = []
        super(PortWatcher, self).__init__(*args, **kwargs)

    def added(self, short_key, value):
        self.ports[short_key] = value

    def removed(self, short_key):
        del self.ports[short_key]

    def value_unparsable(self, key, value, error):
        self.refused.append((key, str(error)))


client = FakeEtcdClient()
# A refused value is also logged, as a warning with the codec's error;
# this example keeps its log quiet.
logging.getLogger('etcdwatch').addHandler(logging.NullHandler())

codec = SignedCodec(JsonCodec(), secret=b'...')
writer = EtcdWriter(client, codec)
writer.write('/agents/host1/ports/p1', {'mac': 'fa:16:3e:00:00:01'})
watcher = PortWatcher(client, 'ports', '/agents/host1/ports', codec=codec)
assert watcher.ports == {'p1': {'mac': 'fa:16:3e:00:00:01'}}

# Without the secret, no value gets through: a forged signature, or none.
forger = EtcdWriter(client, SignedCodec(JsonCodec(), secret=b'guess'))
forger.write('/agents/host1/ports/p2', {'mac': 'fa:16:3e:00:00:66'})
client.write('/agents/host1/ports/p3', '{"mac":"fa:16:3e:00:00:67"}')
watcher.do_watch()              # one step of watch_forever(), for the test
watcher.do_watch()
assert watcher.ports == {'p1': {'mac': 'fa:16:3e:00:00:01'}}
assert watcher.refused == [('/agents/host1/ports/p2', 'bad signature'),
                           ('/agents/host1/ports/p3', 'not signed')]

# etcdwatch.codecs.SignedCodec stores the very same strings.
assert (codecs.SignedCodec(JsonCodec(), b'...').encode({'a': [1]}) ==
        codec.encode({'a': [1]}))
print(sorted(watcher.ports))
