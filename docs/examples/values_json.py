"""JSON values, written and watched (docs/values.rst)."""

import logging

from etcdwatch.codecs import EtcdWriter
from etcdwatch.codecs import JsonCodec
from etcdwatch import EtcdChangeWatcher
from etcdwatch.testing import FakeEtcdClient

client = FakeEtcdClient()         # or an etcd.Client

writer = EtcdWriter(client, JsonCodec())
writer.write('/agents/host1/ports/p1', {'mac': 'fa:16:3e:00:00:01'})
assert writer.read('/agents/host1/ports/p1').value == {
    'mac': 'fa:16:3e:00:00:01'}


class PortWatcher(EtcdChangeWatcher):
    def __init__(self, *args, **kwargs):
        self.ports = {}
        self.refused = []
        super(PortWatcher, self).__init__(*args, **kwargs)

    def added(self, short_key, value):         # value is a dict
        self.ports[short_key] = value

    def removed(self, short_key):
        del self.ports[short_key]

    def value_unparsable(self, key, value, error):
        self.refused.append((key, value))      # optional, see below


watcher = PortWatcher(client, 'ports', '/agents/host1/ports',
                      codec=JsonCodec())
assert watcher.ports == {'p1': {'mac': 'fa:16:3e:00:00:01'}}


# A value that does not decode ("A value that does not decode", below).
class ListHandler(logging.Handler):
    def __init__(self):
        super(ListHandler, self).__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


log = ListHandler()                            # the application's log
logging.getLogger('etcdwatch').addHandler(log)

client.write('/agents/host1/ports/p1', 'not JSON')     # another tool
watcher.do_watch()              # one step of watch_forever(), for the test
assert watcher.ports == {}                     # reported removed
assert watcher.refused == [('/agents/host1/ports/p1', 'not JSON')]
assert watcher.stats()['unparsable'] == 1
assert any('/agents/host1/ports/p1' in m for m in log.messages), log.messages
try:
    writer.read('/agents/host1/ports/p1').value
    raise AssertionError('a value that is not JSON was decoded')
except ValueError as e:
    assert '/agents/host1/ports/p1' in str(e), e

writer.write('/agents/host1/ports/p1', {'mac': 'fa:16:3e:00:00:02'})
watcher.do_watch()
assert watcher.ports == {'p1': {'mac': 'fa:16:3e:00:00:02'}}   # added again
print(watcher.ports)
