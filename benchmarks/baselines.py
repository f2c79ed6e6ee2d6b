"""The baselines every watcher figure is compared with.

:class:`SeedWalker` re-implements the original module's watcher (the
"seed approach": one ``client.watch(path, index=i, recursive=True)`` call
per event, a full re-read only when etcd says the index was cleared) with
its change-watcher's notifications.  :class:`BareFollower` is the floor on
v2: the least code that follows a prefix with python-etcd;
:class:`BareV3Follower` the same on v3 with etcd3gw.  :data:`BARE` picks
the bare follower of an API.
"""

import etcd

from benchmarks import apis
from benchmarks import common

_REMOVALS = frozenset(['delete', 'expire', 'compareAndDelete'])


class _Follower(object):
    """What both baselines share: a loop of steps and progress reports."""

    def __init__(self, client, path, heartbeat, progress=None):
        self.client = client
        self.path = path
        self.heartbeat = heartbeat
        self.progress = progress or common.Progress()
        self.tick = None
        self.data = None
        self.closed = False

    def step(self):
        raise NotImplementedError

    def run(self, stop):
        """Step until the threading.Event ``stop`` is set (or closed)."""
        while not stop.is_set() and not self.closed:
            self.step()

    def close(self):
        """Stop following; a step blocked in another thread returns soon.

        On v2 that is within one heartbeat (the watch's timeout).
        """
        self.closed = True


class BareFollower(_Follower):
    """Read the prefix once, then watch from the next index, forever."""

    def __init__(self, client, path, heartbeat, progress=None,
                 on_event=None):
        super(BareFollower, self).__init__(client, path, heartbeat,
                                           progress)
        self.on_event = on_event
        self.load()

    def load(self):
        index, self.data = common.read_tree(self.client, self.path)
        self.tick = index + 1
        self.progress.update(self.tick, read=True)

    def step(self):
        try:
            event = self.client.watch(self.path, index=self.tick,
                                      recursive=True,
                                      timeout=self.heartbeat)
        except etcd.EtcdEventIndexCleared:
            self.load()
            return
        except etcd.EtcdWatchTimedOut:
            return
        if event.action in _REMOVALS:
            self.data.pop(event.key, None)
        elif not event.dir:
            self.data[event.key] = event.value
        self.tick = event.modifiedIndex + 1
        self.progress.update(self.tick)
        if self.on_event is not None:
            self.on_event(event.key, event.value)


class BareV3Follower(_Follower):
    """The same on v3: one range read, then one etcd3gw watch stream.

    The least correct code with etcd3gw: read the prefix with the range
    API (``get_prefix`` does not say at which revision it read), then
    ``client.watch_prefix(path + '/', start_revision=revision + 1)`` and
    apply each event it yields.  etcd3gw reads the stream in a thread of
    its own and queues the events; its watch has no timeout, so
    ``heartbeat`` is unused and :meth:`close` cancels the stream.  (Like
    etcd3gw's watch, it would wait forever if etcd compacted the revision
    it needs: nothing here compacts.)
    """

    def __init__(self, client, path, heartbeat, progress=None,
                 on_event=None):
        super(BareV3Follower, self).__init__(client, path, heartbeat,
                                             progress)
        self.on_event = on_event
        self._events = self._cancel = None
        self.load()

    def load(self):
        index, self.data = apis.v3_read_tree(self.client, self.path)
        self.tick = index + 1
        self.progress.update(self.tick, read=True)

    def step(self):
        if self._events is None:
            self._events, self._cancel = self.client.watch_prefix(
                self.path + '/', start_revision=self.tick)
        try:
            event = next(self._events)
        except StopIteration:       # closed
            return
        kv = event['kv']
        key = apis.text(kv['key'])
        if event.get('type') == 'DELETE':
            value = None
            self.data.pop(key, None)
        else:
            value = apis.text(kv.get('value'))
            self.data[key] = value
        self.tick = int(kv['mod_revision']) + 1
        self.progress.update(self.tick)
        if self.on_event is not None:
            self.on_event(key, value)

    def close(self):
        super(BareV3Follower, self).close()
        if self._cancel is not None:
            self._cancel()


class SeedWalker(_Follower):
    """The seed's EtcdChangeWatcher loop, without eventlet.

    ``key_change(action, key, value)`` is called as the seed called it:
    for every watch event (a rewrite with the same value included), and
    for the differences after a full read.
    """

    def __init__(self, client, path, heartbeat, progress=None,
                 key_change=None):
        super(SeedWalker, self).__init__(client, path, heartbeat, progress)
        self.implemented_state = {}
        self.key_change = key_change or (lambda action, key, value: None)
        self.refresh_all_data()

    def refresh_all_data(self):
        result = self.client.read(self.path, recursive=True)
        self.data = {}
        for node in result.children:
            self.data[node.key] = node.value
        self.do_all_work()
        self.tick = result.etcd_index + 1
        self.progress.update(self.tick, read=True)

    def do_all_work(self):
        in_keys = set(self.data)
        impl_keys = set(self.implemented_state)
        for key in impl_keys - in_keys:
            self.do_work('delete', key, None)
        for key in in_keys - impl_keys:
            self.do_work('add', key, self.data[key])
        for key in in_keys & impl_keys:
            if self.implemented_state[key] != self.data[key]:
                self.do_work('change', key, self.data[key])

    def do_work(self, action, key, value):
        self.key_change(action, key, value)
        if action == 'delete':
            self.implemented_state.pop(key, None)
        else:
            self.implemented_state[key] = value

    def step(self):
        try:
            event = self.client.watch(self.path, recursive=True,
                                      index=self.tick,
                                      timeout=self.heartbeat)
        except etcd.EtcdEventIndexCleared:
            self.refresh_all_data()
            return
        except etcd.EtcdWatchTimedOut:
            return
        if event.action == 'delete':
            del self.data[event.key]
        else:
            self.data[event.key] = event.value
        self.do_work(event.action, event.key, event.value)
        self.tick = event.modifiedIndex + 1
        self.progress.update(self.tick)


#: The bare follower of each API.
BARE = {apis.V2: BareFollower, apis.V3: BareV3Follower}
