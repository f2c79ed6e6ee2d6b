"""Small tools shared by the test modules."""

import os
import subprocess
import threading
import time

import etcd

from etcdwatch import EtcdChangeWatcher
from etcdwatch.testing.server import find_etcd_tool


def wait_until(predicate, timeout=10.0, interval=0.005, message=None):
    """Poll ``predicate`` until it returns something true; fail on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(message or 'condition not met within %ss: %r'
                                 % (timeout, predicate))
        time.sleep(interval)


class FlakyClient(object):
    """Wraps a client; raises chosen errors from chosen methods on demand.

    ``flaky.fail('watch', etcd.EtcdConnectionFailed('down'), times=2)`` makes
    the next two watch calls raise.  ``flaky.down = True`` makes every call
    raise EtcdConnectionFailed until set back.  ``flaky.calls`` counts calls
    per method name.
    """

    def __init__(self, client):
        self._client = client
        self._failures = {}
        self._lock = threading.Lock()
        self.down = False
        self.calls = {}

    def fail(self, method, exc, times=1):
        with self._lock:
            self._failures.setdefault(method, []).extend([exc] * times)

    def __getattr__(self, name):
        target = getattr(self._client, name)
        if name not in ('read', 'write', 'watch', 'delete'):
            return target

        def call(*args, **kwargs):
            with self._lock:
                self.calls[name] = self.calls.get(name, 0) + 1
                queued = self._failures.get(name)
                exc = queued.pop(0) if queued else None
            if self.down:
                raise etcd.EtcdConnectionFailed('etcd is down (test)')
            if exc is not None:
                raise exc
            return target(*args, **kwargs)
        return call


class HangingRefresh(object):
    """Wraps a client; while ``hanging``, TTL refreshes block.

    A refresh (a write with ``refresh=True``) waits until ``release`` is
    set (at most 30 s): what a leader sees of a member cut off from its
    cluster.  Everything else goes straight through.
    """

    def __init__(self, client, hanging=True):
        self._client = client
        self.hanging = hanging
        self.release = threading.Event()

    def __getattr__(self, name):
        target = getattr(self._client, name)
        if name != 'write':
            return target

        def write(*args, **kwargs):
            if kwargs.get('refresh') and self.hanging:
                self.release.wait(30)
            return target(*args, **kwargs)
        return write


class Runner(object):
    """Runs ``watcher.watch_forever`` in a thread; stops it on exit."""

    def __init__(self, watcher, join_timeout=15.0):
        self.watcher = watcher
        self.join_timeout = join_timeout
        self.thread = threading.Thread(target=watcher.watch_forever,
                                       daemon=True)

    def __enter__(self):
        self.thread.start()
        return self.watcher

    def __exit__(self, *exc):
        self.watcher.stop()
        self.thread.join(self.join_timeout)
        assert not self.thread.is_alive(), 'watch_forever did not return'


def etcd_state(client, path):
    """Every leaf key under ``path`` -> value, read from etcd itself."""
    try:
        result = client.read(path, recursive=True)
    except etcd.EtcdKeyNotFound:
        return {}
    return {n.key: n.value for n in result.leaves if not n.dir}


def fold_changes(changes):
    """What a sequence of (action, key, value) notifications adds up to.

    Fails on an 'add' of a known key, a 'change' or 'delete' of an unknown
    one, and a 'change' to the value already reported: a change watcher
    must never send those.
    """
    state = {}
    for action, key, value in changes:
        if action == 'delete':
            assert key in state, 'delete of unreported key %s' % key
            del state[key]
        else:
            assert (action == 'add') == (key not in state), (
                '%s of %s' % (action, key))
            assert action == 'add' or state[key] != value, (
                'change of %s to the value it had: %r' % (key, value))
            state[key] = value
    return state


class ChangeRecorder(EtcdChangeWatcher):
    """A change watcher that records every key_change call in ``changes``."""

    def __init__(self, *args, **kwargs):
        self.changes = []
        super(ChangeRecorder, self).__init__(*args, **kwargs)

    def key_change(self, action, key, value):
        self.changes.append((action, key, value))

    def reported(self):
        """What the notifications add up to: key -> value."""
        return fold_changes(self.changes)


def campaign_in_thread(elector):
    """Run ``elector.wait_until_elected`` in a daemon thread.

    Returns ``(elected, times, thread)``: an Event set once elected, a list
    that gets the ``time.monotonic()`` of that moment, and the thread.
    """
    elected = threading.Event()
    times = []

    def campaign():
        elector.wait_until_elected()
        times.append(time.monotonic())
        elected.set()

    thread = threading.Thread(target=campaign, daemon=True)
    thread.start()
    return elected, times, thread


def converged(watcher, driver, path):
    """Whether a ChangeRecorder's data and notifications equal etcd's."""
    truth = driver.state(path)
    return (watcher.etcd_data == truth and
            fold_changes(watcher.changes) == truth)


def etcdctl(server, *args, user=None):
    """Run etcdctl (v3) against ``server``; ``user`` is "name:password"."""
    argv = [find_etcd_tool('etcdctl', server.binary),
            '--endpoints', server.client_url]
    if user:
        argv += ['--user', user]
    subprocess.run(argv + list(args), env=dict(os.environ, ETCDCTL_API='3'),
                   check=True, timeout=30, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)
