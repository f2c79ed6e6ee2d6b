"""etcdwatch's recipes, instrumented the way the baselines are."""

import sys

import etcdwatch

from benchmarks import common


class CountingWatcher(etcdwatch.EtcdWatcher):
    """An EtcdWatcher whose callbacks only report progress.

    ``on_event(key, value)``, if given, runs for every event.
    """

    def __init__(self, *args, **kwargs):
        self.progress = kwargs.pop('progress', None) or common.Progress()
        self.on_event = kwargs.pop('on_event', None)
        super(CountingWatcher, self).__init__(*args, **kwargs)

    def do_work(self, action, key, value):
        self.progress.update(self.tick)
        if self.on_event is not None:
            self.on_event(key, value)

    def do_all_work(self):
        self.progress.update(self.tick, read=True)


class RecordingChangeWatcher(etcdwatch.EtcdChangeWatcher):
    """An EtcdChangeWatcher that keeps every notification it gets."""

    def __init__(self, *args, **kwargs):
        self.progress = kwargs.pop('progress', None) or common.Progress()
        self.notifications = []
        super(RecordingChangeWatcher, self).__init__(*args, **kwargs)

    def key_change(self, action, key, value):
        self.notifications.append((action, key, value))

    def do_work(self, action, key, value):
        super(RecordingChangeWatcher, self).do_work(action, key, value)
        self.progress.update(self.tick)

    def do_all_work(self):
        super(RecordingChangeWatcher, self).do_all_work()
        self.progress.update(self.tick, read=True)


class QuietChangeWatcher(etcdwatch.EtcdChangeWatcher):
    """An EtcdChangeWatcher whose notifications do nothing."""

    def key_change(self, action, key, value):
        pass


class WalkingChangeWatcher(RecordingChangeWatcher):
    """A RecordingChangeWatcher that never re-reads to catch up.

    It walks every missed event (re-reading only when etcd's history is
    gone), so that catch-up on v3, where nothing else stops a walk, shows
    what etcdwatch's re-read threshold (``CATCHUP_MIN_LAG`` /
    ``CATCHUP_TREE_FRACTION``) saves or costs there.
    """

    CATCHUP_MIN_LAG = sys.maxsize
