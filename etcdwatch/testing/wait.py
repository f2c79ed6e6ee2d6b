"""Wait until a watcher has caught up with etcd (for tests).

:func:`wait_caught_up` is what a test calls between writing to etcd and
checking what its watcher did.
"""

import time
from typing import Any, Optional

from etcdwatch import backends
from etcdwatch import exceptions

#: How long a look at etcd's history under the prefix waits before "no
#: event" counts as an answer: at least _PROBE_MIN seconds, and at least
#: _PROBE_RTTS times what etcd took to answer the call's first read (a
#: watch on v3 opens a stream first, which takes a few round trips; on a
#: loaded machine, more).  Only a call made when the last write was outside
#: the watcher's prefix pays it.
_PROBE_MIN = 0.5
_PROBE_RTTS = 20
#: Between two looks at the watcher's counters (seconds).
_POLL = 0.005


def wait_caught_up(watcher: Any, client: Any,
                   timeout: float = 10.0) -> int:
    """Wait until ``watcher`` has applied what etcd holds under its prefix.

    "What etcd holds" is taken once, when the call is made: etcd's current
    index ``N`` (one quorum read through ``client``).  The watcher has
    caught up when its ``etcd_data`` reflects every change under its
    ``watch_path`` up to ``N`` and the callbacks for them have returned
    without raising (none is waiting for a retry).  Changes elsewhere in
    etcd count for nothing: when the last write before the call was
    outside the prefix, the watcher's own index stays below ``N``, and
    etcd's history is asked whether any change under the prefix lies
    between the two: a watch from the watcher's index that shows nothing
    for half a second (or twenty times etcd's answer time to the call's
    first read, if longer) means no change, so such a call takes that much
    longer.

    Works with every client a watcher takes: python-etcd (v2), etcd3gw
    (v3) and :class:`~etcdwatch.testing.FakeEtcdClient`.  ``client`` may be
    the watcher's own or another one on the same etcd; the watcher must be
    running (``watch_forever()`` in a thread, or a test calling
    ``do_watch()`` meanwhile), and, if elected, leading.

    Returns ``N``.  Raises :class:`TimeoutError` if the watcher has not
    caught up within ``timeout`` seconds (the message says where it is),
    so a test needs no ``assert`` around the call.
    """
    started = time.monotonic()
    deadline = started + timeout
    backend = backends.for_client(client, 'client')
    try:
        target = backend.check_current(watcher.watch_path, 0)
        probe = max(_PROBE_MIN, _PROBE_RTTS * (time.monotonic() - started))
        while True:
            applied, pending = _position(watcher)
            if (applied is not None and not pending
                    and _nothing_new(backend, watcher.watch_path, applied,
                                     target, probe, deadline)):
                return target
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    '%s has not caught up with etcd index %d within %ss: it '
                    'applied up to index %s under %s and has %d callback(s) '
                    'waiting for a retry'
                    % (getattr(watcher, 'name', watcher), target, timeout,
                       applied, watcher.watch_path, pending))
            time.sleep(_POLL)
    finally:
        backend.close()


def _position(watcher):
    # Under the lock the watcher holds while it applies a change and runs
    # its callbacks: the index and the callbacks owed are read together.
    with watcher.etcd_data_lock:
        if not watcher.synced:
            return None, 0
        stats = watcher.stats()
    return stats['index'], stats['pending']


def _nothing_new(backend: Any, path: str, applied: int, target: int,
                 probe: float, deadline: float) -> bool:
    """Whether no change under ``path`` lies in ``(applied, target]``."""
    if applied >= target:
        return True
    wait = min(probe, deadline - time.monotonic())
    if wait <= 0:
        return False
    try:
        event: Optional[Any] = backend.watch_tree(path, applied + 1, wait)
    except exceptions.HistoryGone:
        # etcd no longer holds what came after the watcher's index; the
        # watcher finds out too and re-reads everything, at an index of
        # at least ``target``.
        return False
    except exceptions.BackendError:
        return False
    if event is None:
        # Silence proves nothing unless etcd had the whole probe to speak.
        return wait >= probe
    return event.index > target
