"""etcdwatch's recipes, instrumented the way the baselines are."""

import etcdwatch
from etcdwatch.backends import base
from etcdwatch.backends import v2

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


def _collect_leaves(nodes, items):
    for node in nodes:
        if node.get('dir'):
            _collect_leaves(node.get('nodes', ()), items)
        else:
            items[node['key']] = node.get('value')


class FastReadBackend(v2.V2Backend):
    """PROPOSAL, not etcdwatch: read_tree walks the JSON nodes itself.

    python-etcd's ``result.leaves`` makes an EtcdResult and a generator
    per node; the answer's raw node dicts (``result._children``) hold the
    same keys and values.  Errors, and a missing path, go to etcdwatch's
    own read_tree (which asks again): only the success path is measured.
    """

    def read_tree(self, path):
        try:
            result = self.client.read(path, recursive=True)
        except Exception:
            return super(FastReadBackend, self).read_tree(path)
        items = {}
        if result.dir:
            _collect_leaves(result._children, items)
        else:
            items[result.key] = result.value
        return base.Snapshot(result.etcd_index, items)


class FastReadMixin(etcdwatch.EtcdWatcher):
    """Makes a watcher read its tree through :class:`FastReadBackend`."""

    def refresh_all_data(self):
        if not isinstance(self._backend, FastReadBackend):
            self._backend = FastReadBackend(self.etcd_client)
        super(FastReadMixin, self).refresh_all_data()


class FastReadWatcher(CountingWatcher, FastReadMixin):
    """CountingWatcher reading its tree the proposed way."""


class QuietChangeWatcher(etcdwatch.EtcdChangeWatcher):
    """An EtcdChangeWatcher whose notifications do nothing."""

    def key_change(self, action, key, value):
        pass


_MISSING = object()


class FastDiffChangeWatcher(etcdwatch.EtcdChangeWatcher):
    """PROPOSAL, not etcdwatch: a re-read's diff that skips equal keys.

    Same notifications in the same order as EtcdChangeWatcher.do_all_work
    (gone keys sorted, then changed keys sorted), but equal keys cost one
    dict lookup in a comprehension instead of a sort and a method call.
    """

    def do_all_work(self):
        data, state = self.etcd_data, self.implemented_state
        gone = state.keys() - data.keys()
        changed = [key for key, value in data.items()
                   if state.get(key, _MISSING) != value]
        for key in sorted(gone):
            self._reconcile(key)
        for key in sorted(changed):
            self._reconcile(key)


class QuietFastDiffChangeWatcher(FastDiffChangeWatcher):
    """FastDiffChangeWatcher whose notifications do nothing."""

    def key_change(self, action, key, value):
        pass


#: PROPOSAL (not etcdwatch's values): re-read once the lag exceeds
#: max(TUNED_MIN_LAG, tree size / TUNED_TREE_FRACTION).  On loopback one
#: watch round trip costs about as much as reading 60-100 keys, so a walk
#: of more than ~tree/64 events costs more than one read.  The floor is
#: twice that break-even on small trees: at 8, a follower under sustained
#: writes re-read several times more often and spent more CPU per event.
TUNED_MIN_LAG = 16
TUNED_TREE_FRACTION = 64


class TunedWatcher(CountingWatcher, FastReadMixin):
    """CountingWatcher with the proposed thresholds and read."""

    CATCHUP_MIN_LAG = TUNED_MIN_LAG
    CATCHUP_TREE_FRACTION = TUNED_TREE_FRACTION


class TunedChangeWatcher(RecordingChangeWatcher, FastDiffChangeWatcher,
                         FastReadMixin):
    """RecordingChangeWatcher with every proposal: thresholds, diff, read."""

    CATCHUP_MIN_LAG = TUNED_MIN_LAG
    CATCHUP_TREE_FRACTION = TUNED_TREE_FRACTION
