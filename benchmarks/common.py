"""What every benchmark case shares: statistics, results, clients."""

import collections
import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
import threading
import time

import etcd

#: Seconds a benchmark client waits for etcd before giving up.
CLIENT_READ_TIMEOUT = 30

now = time.perf_counter


def median(values):
    return statistics.median(values) if values else float('nan')


def percentile(values, fraction):
    """The nearest-rank percentile (``fraction`` in [0, 1]) of values."""
    if not values:
        return float('nan')
    ordered = sorted(values)
    rank = max(1, int(round(fraction * len(ordered) + 0.5)))
    return ordered[min(rank, len(ordered)) - 1]


def ratio(numerator, denominator):
    if not denominator:
        return float('nan')
    return numerator / denominator


class Row(collections.namedtuple('Row', [
        'case', 'param', 'metric', 'unit', 'ours', 'baseline_name',
        'baseline', 'ratio_name', 'ratio', 'goal', 'met', 'note'])):
    """One line of the results table.

    ``ours`` is etcdwatch's figure, ``baseline`` the comparison's;
    ``ratio`` is defined by ``ratio_name`` (e.g. "speed-up" or
    "ours/bare"); ``met`` is True, False or None (no goal on this line).
    """

    __slots__ = ()


def row(case, param, metric, unit, ours, baseline_name=None, baseline=None,
        ratio_name='', ratio_value=None, goal='', met=None, note=''):
    return Row(case, param, metric, unit, ours, baseline_name, baseline,
               ratio_name, ratio_value, goal, met, note)


def machine_info(servers):
    """The facts a reader needs to judge the figures.

    ``servers`` maps each API measured to the etcd that served it.
    """
    load = os.getloadavg()
    return {
        'cores': os.cpu_count(),
        'python': platform.python_version(),
        'implementation': platform.python_implementation(),
        'etcd': ', '.join(sorted({s.version for s in servers.values()})),
        'servers': '; '.join(
            '%s: %s' % (api, 'an etcd of its own, v2 API disabled'
                        if not server.enable_v2 else
                        'an etcd of its own, ``--enable-v2``')
            for api, server in sorted(servers.items())),
        'python_etcd': getattr(etcd, '__version__', '0.4.5'),
        'etcd3gw': _version('etcd3gw'),
        'source': _source(),
        'platform': platform.platform(),
        'load_at_start': '%.2f %.2f %.2f' % load,
        'argv': ' '.join(sys.argv),
    }


def _version(distribution):
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return 'not installed'


def _source():
    """The commit measured, and whether etcdwatch/ differed from it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(
            ['git', 'rev-parse', '--short', 'HEAD'], cwd=root, check=True,
            capture_output=True, text=True).stdout.strip()
        changed = subprocess.run(
            ['git', 'status', '--porcelain', '--', 'etcdwatch'], cwd=root,
            check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return 'not a git checkout'
    return commit + (' with uncommitted changes in etcdwatch/'
                     if changed else '')


class RequestCounter(object):
    """Counts the calls of ``owner.method``: a client's HTTP requests.

    An instance attribute of the same name shadows the method (see
    :meth:`benchmarks.apis.Api.count_requests` for which one each client
    sends its requests through).
    """

    def __init__(self, owner, method):
        self.count = 0
        inner = getattr(owner, method)

        def counting(*args, **kwargs):
            self.count += 1
            return inner(*args, **kwargs)
        setattr(owner, method, counting)


def read_tree(client, path):
    """(etcd index, {key: value}) of every leaf under ``path``."""
    try:
        result = client.read(path, recursive=True)
    except etcd.EtcdKeyNotFound:
        return None, {}
    return result.etcd_index, {
        node.key: node.value for node in result.leaves if not node.dir}


def start_thread(target, *args):
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def value_of_size(index, size):
    """A value of ``size`` characters that differs for every ``index``."""
    head = '%d:' % index
    return head + 'x' * max(0, size - len(head))


class Progress(object):
    """How far a follower got, and when it reached a target index.

    Followers call :meth:`update` with their next index (etcdwatch's
    ``tick``) after each event or read they applied.
    """

    def __init__(self):
        self.index = None
        self.events = 0
        self.reads = 0
        self._target = None
        self.reached_at = None
        self.reached = threading.Event()

    def update(self, next_index, read=False):
        self.index = next_index - 1
        if read:
            self.reads += 1
        else:
            self.events += 1
        target = self._target
        if target is not None and self.index >= target:
            if not self.reached.is_set():
                self.reached_at = time.time()
                self.reached.set()

    def aim(self, target):
        """Note the time :meth:`update` first reaches ``target``."""
        self.reached.clear()
        self.reached_at = None
        self._target = target
        if self.index is not None and self.index >= target:
            self.reached_at = time.time()
            self.reached.set()
