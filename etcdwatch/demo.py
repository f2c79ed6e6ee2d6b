"""The main job, runnable: three workers elect a leader, the leader's change
watcher reports what a writer does, the leader stops and another takes over.

Runs on the in-memory FakeEtcdClient unless given a real etcd.
"""

import sys
import threading
import time

from etcdwatch import watcher

PREFIX = '/etcdwatch-demo'


class _Printer(object):
    def __init__(self, out):
        self._out = out
        self._start = time.monotonic()
        self._lock = threading.Lock()

    def __call__(self, text):
        with self._lock:
            self._out.write('%6.2fs  %s\n'
                            % (time.monotonic() - self._start, text))
            self._out.flush()


class DemoWorker(watcher.EtcdChangeWatcher):
    """A worker that, while it leads, prints every change it is told of."""

    def __init__(self, client, label, say, heartbeat, prefix):
        self.label = label
        self.say = say
        super(DemoWorker, self).__init__(
            client, 'demo', prefix + '/data',
            election_path=prefix + '/election', wait_until_elected=True,
            recovery_time=heartbeat, heartbeat=heartbeat)

    def added(self, short_key, value):
        self.say('%s sees   %-8s = %s' % (self.label, short_key, value))

    def removed(self, short_key):
        self.say('%s sees   %-8s deleted' % (self.label, short_key))


def _wait_for(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.01)
    return None


def run(client, out=sys.stdout, heartbeat=1.0, prefix=PREFIX):
    """Run the demo on ``client``; returns 0 on success, 1 on a failure."""
    say = _Printer(out)
    data = prefix + '/data'
    for key in ('color', 'size', 'shape'):
        try:
            client.delete('%s/%s' % (data, key))
        except Exception:
            pass
    workers = [DemoWorker(client, 'worker-%d' % n, say, heartbeat, prefix)
               for n in (1, 2, 3)]
    threads = [threading.Thread(target=w.watch_forever, daemon=True)
               for w in workers]
    for thread in threads:
        thread.start()

    def leader():
        return next((w for w in workers if w.synced and
                     w.etcd_elector.is_elected), None)

    try:
        first = _wait_for(leader, 30)
        if first is None:
            say('no worker was elected within 30 s')
            return 1
        say('%s leads (%s)' % (first.label, first.etcd_elector.thread_id))
        for key, value, note in (('color', 'blue', ''),
                                 ('size', 'large', ''),
                                 ('color', 'green', ''),
                                 ('color', 'green',
                                  '  (same value: no notification)')):
            say('writer  sets   %-8s = %s%s' % (key, value, note))
            client.write('%s/%s' % (data, key), value)
            time.sleep(0.2)
        say('writer  deletes size')
        client.delete(data + '/size')
        time.sleep(0.2)

        say('%s stops' % first.label)
        stopped = time.monotonic()
        first.stop()
        second = _wait_for(lambda: (leader() if leader() is not first
                                    else None), 30)
        if second is None:
            say('no worker took over within 30 s')
            return 1
        say('%s leads after a failover of %.2f s'
            % (second.label, time.monotonic() - stopped))
        say('writer  sets   shape    = round')
        client.write(data + '/shape', 'round')
        if not _wait_for(lambda: second.implemented_state.get(
                data + '/shape') == 'round', 10):
            say('the new leader did not see the write')
            return 1
        say('done: one leader at a time, every change seen once')
        return 0
    finally:
        for w in workers:
            w.stop()
        for thread in threads:
            thread.join(heartbeat * 3 + 5)
