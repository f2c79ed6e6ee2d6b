"""Follow every key under an etcd prefix: load it all, then watch.

:class:`EtcdWatcher` keeps ``etcd_data`` equal to etcd's tree under
``watch_path`` and tells a subclass about each change;
:class:`EtcdChangeWatcher` turns that into exactly one notification per real
change, whether it was seen in a watch event or found by a full re-read.

Life of a watcher::

    constructor ─ initial load (skipped until elected, or retried later
    │             if etcd is down) ─ do_all_work()
    watch_forever():
      loop: do_tick() → [wait_until_elected()] → do_watch()
        do_watch(): retry undelivered callbacks, or one watch, or one read
          event        → etcd_data updated → do_work(action, key, value)
          history gone → full re-read      → do_all_work()
          far behind   → full re-read      → do_all_work()
      until stop()

Callbacks run on the thread that runs :meth:`EtcdWatcher.watch_forever`
(and, for the initial load, the one that constructs the watcher), one at a
time, with ``etcd_data_lock`` held.

Actions a callback receives:

``'add'``
    a key appeared (it was not in ``etcd_data`` before);
``'change'``
    a key that was there was written again (for :class:`EtcdWatcher`, even
    with the same value; :class:`EtcdChangeWatcher` skips those);
``'delete'``
    a key went away, however etcd removed it: delete, expiry of its TTL,
    compare-and-delete, or a recursive delete of a directory above it (one
    'delete' per key that was under it).  ``value`` is None.

Directories are not data: they never enter ``etcd_data`` and never reach a
callback.
"""

import abc
from typing import Any, Dict, Iterable, Optional

from oslo_log import log as logging

from etcdwatch import backends
from etcdwatch import driving
from etcdwatch import election
from etcdwatch import exceptions
from etcdwatch import handlers
from etcdwatch.rules import changes
from etcdwatch.rules import mirror
from etcdwatch.rules import requests
from etcdwatch.rules import watcher_base

LOG = logging.getLogger(__name__)

ADD = mirror.ADD
CHANGE = mirror.CHANGE
DELETE = mirror.DELETE


class EtcdWatcher(watcher_base.WatcherBase, metaclass=abc.ABCMeta):
    """Watch every key under ``watch_path``; subclass to act on changes.

    :param etcd_client: a python-etcd ``etcd.Client`` (etcd's v2 API), an
        etcd3gw client (its v3 API; see :doc:`/v3`), or a FakeEtcdClient.
    :param name: a name for logs, and the election's name when elected.
    :param watch_path: the etcd directory to follow.  It need not exist
        yet: a missing path is an empty tree.
    :param election_path: where to elect, with ``wait_until_elected``.
    :param wait_until_elected: only the elected worker among those with the
        same name and election_path watches and runs callbacks.  It loads
        the whole tree when it wins, and stops delivering when it loses.
    :param recovery_time: the election's recovery_time.
    :param data: anything; kept as ``self.data`` for the subclass.
    :param heartbeat: the longest one watch call waits for a change, so
        ``do_tick()`` runs at least that often and :meth:`stop` takes
        effect within it.
    :param handler: the concurrency handler ('threading', 'eventlet', an
        instance, or None for the default chosen from eventlet patching).
    :param codec: turns etcd's strings into the values callbacks see (an
        object with ``decode(value)``, such as
        :class:`etcdwatch.codecs.JsonCodec`); None passes strings through.
        A value it cannot decode is logged, reported to
        :meth:`value_unparsable`, and treated as absent, so the key is
        neither dropped silently nor delivered with a garbage value.

    Promise: once writes stop, ``etcd_data`` equals what etcd holds under
    ``watch_path``, and every change has been delivered to a callback that
    returned without raising.  A callback that raises is logged and retried
    with capped exponential backoff; later events wait behind it (in order)
    and are never dropped.  etcd errors are logged and retried with
    jittered backoff from ``DANGER_PAUSE`` up to ``DANGER_PAUSE_MAX``
    seconds (an outage is logged once, not per retry).

    Faults of a cluster: a watch that stays silent for a whole heartbeat
    is followed by a quorum read (:meth:`Backend.check_current
    <etcdwatch.backends.base.Backend.check_current>`), so a member cut off
    from its cluster, or paused, is left for another within a heartbeat
    plus the client's timeout; and an etcd whose index went back (wiped,
    restored from a snapshot, replaced) is re-read in full, so keys it no
    longer holds are reported deleted.
    """

    def __init__(self, etcd_client: Any, name: str, watch_path: str,
                 election_path: Optional[str] = None,
                 wait_until_elected: bool = False,
                 recovery_time: float = 5, data: Any = None,
                 heartbeat: float = 60,
                 handler: election.HandlerArg = None,
                 codec: Any = None) -> None:
        self._check_arguments(name, watch_path, election_path,
                              wait_until_elected, recovery_time, heartbeat,
                              codec)
        self._backend = backends.for_client(etcd_client)
        self._handler = handlers.get_handler(handler)
        self.etcd_client = etcd_client
        self.etcd_elector: Optional[election.EtcdElection] = None
        if wait_until_elected:
            assert election_path is not None    # checked above
            self.etcd_elector = election.EtcdElection(
                etcd_client, name, election_path, handler=self._handler,
                **self._election_settings(heartbeat, recovery_time))
        self._init_state(name, data, heartbeat, codec)

        #: Held while etcd_data changes and while callbacks run.  Reentrant,
        #: so a callback may take it again.
        self.etcd_data_lock = self._handler.rlock()

        self._stop = self._handler.event()
        self._synced = self._handler.event()
        self._term: Optional[int] = None
        # Whether a callback runs now, and so whether stop() must leave
        # the release of an election to the loop (guarded by the lock).
        self._handover_lock = self._handler.lock()
        self._in_callback = False
        # The task of start(), if any.
        self._task: Any = None

        if self.etcd_elector is None:
            # The seed's contract: the tree is loaded (and do_all_work run)
            # by the constructor.  If etcd is down, watch_forever retries.
            try:
                self.refresh_all_data()
            except exceptions.EtcdUnavailable as e:
                self._mirror.outage.failed(e, self.DANGER_PAUSE)
            except exceptions.BackendError:
                LOG.warning('%s: initial load of %s failed; will retry',
                            self.name, self.watch_path, exc_info=True)

    # -- hooks for subclasses ---------------------------------------------

    def do_work(self, action: str, key: str, value: Any) -> None:
        """Act on one change ('add', 'change' or 'delete') of ``key``.

        ``etcd_data`` already reflects the change, and every other change
        etcd sent in the same watch message (on v3, up to 1,000 revisions
        while catching up; usually just this one when following live),
        and does not move during the call.  The default calls
        :meth:`do_all_work`.
        """
        self.do_all_work()

    @abc.abstractmethod
    def do_all_work(self) -> None:
        """Act on the whole of ``etcd_data``.

        Called after every full (re-)read: at start, when etcd's history no
        longer reaches back far enough, and when catching up by one read is
        cheaper than walking the missed events.
        """

    def do_tick(self) -> None:
        """Background work; runs at least once per ``heartbeat``."""

    def init_resync_start(self) -> Optional[Iterable[str]]:
        """Called once, before the first full load.

        Return the short keys the application still holds from before a
        restart (or None for no clean-up); :meth:`init_resync_end` then
        removes those etcd no longer has.
        """
        return None

    def init_resync_end(self, short_keys: Iterable[str]) -> None:
        """Called once, after the first full load was delivered.

        ``short_keys`` iterates the short keys etcd holds.  The default
        calls ``self.removed(k)`` for each key that
        :meth:`init_resync_start` returned and etcd no longer has.
        """
        if self.expected_keys is None:
            return
        for short_key in sorted(set(self.expected_keys) - set(short_keys)):
            self.removed(short_key)

    def removed(self, key: str) -> None:
        """A key went away (see :class:`EtcdChangeWatcher`).

        ``key`` is the short key (below ``watch_path + '/'``); the
        parameter keeps networking-vpp's name.
        """

    # -- running ----------------------------------------------------------

    def watch_forever(self) -> None:
        """Watch until :meth:`stop`; never raises for etcd or callbacks.

        Errors pause the loop (``DANGER_PAUSE`` at first, growing with
        consecutive errors, jittered), so a dead etcd cannot spin the CPU.
        An outage (etcd unreachable) is logged when
        it starts, every minute while it lasts, and when it ends (each
        attempt at DEBUG); any other error is logged with its traceback.
        Returns within one ``heartbeat`` (plus one callback) of
        :meth:`stop`.  An elected watcher releases the election on return.
        Ctrl-C (KeyboardInterrupt) while it runs in the foreground ends it
        quietly, as :meth:`stop` would.
        """
        try:
            self._watch_until_stopped()
        except KeyboardInterrupt:
            self._stop.set()
            LOG.info('%s: interrupted; stopped watching %s', self.name,
                     self.watch_path)

    def _watch_until_stopped(self):
        try:
            while not self._stop.is_set():
                try:
                    self.do_tick()
                    if self.etcd_elector is not None:
                        if not self._wait_until_elected():
                            break
                    with self._pass():
                        self.do_watch()
                    self._mirror.succeeded()
                except Exception as e:
                    self._stop.wait(self._mirror.failed(
                        e, *self._danger_pauses()))
        finally:
            if self.etcd_elector is not None:
                self.etcd_elector.clean()
            # A stream opened in a race with stop() must not outlive us.
            self._backend.close()

    def start(self) -> 'EtcdWatcher':
        """Run :meth:`watch_forever` in the background; return the watcher.

        On a thread, or a green thread with the eventlet handler.  Once
        per watcher; :meth:`close` stops it and waits for it.
        """
        if self._task is not None:
            raise RuntimeError('%s: start() was called already' % self.name)
        self._task = self._handler.spawn(self.watch_forever)
        return self

    def close(self, timeout: Optional[float] = None) -> bool:
        """Stop, and wait (up to ``timeout`` s) until watching has ended.

        Returns True if it ended in time (or never started).  An elected
        watcher has released the election when this returns True.
        """
        self.stop()
        if self._task is None:
            return True
        self._task.join(timeout)
        return not self._task.is_alive()

    def __enter__(self) -> 'EtcdWatcher':
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def stop(self) -> None:
        """Ask :meth:`watch_forever` to return (within one heartbeat).

        Returns at once.  No callback starts after it.  An elected watcher
        resigns as soon as no callback of its runs: at once if none does,
        else right after the running one returns (also when stop() is
        called from inside that callback).  So another worker takes over
        without waiting for this one's watch to time out, and never while
        this one still acts on a change.
        """
        self._stop.set()
        if self.etcd_elector is not None:
            with self._handover_lock:
                busy = self._in_callback
            if not busy:
                self.etcd_elector.resign()
        # Wakes a watch blocked in the backend (v3 streams), so the loop
        # returns now rather than after its heartbeat.
        self._backend.close()

    def wait_synced(self, timeout: Optional[float] = None) -> bool:
        """Wait until :attr:`synced`; returns it."""
        return self._synced.wait(timeout)

    def do_watch(self) -> None:
        """One step: retry undelivered callbacks, or one watch, or one read.

        Called by :meth:`watch_forever`'s loop, the watch goes on with the
        next message while messages keep coming, for up to a
        ``heartbeat``; called on its own, it watches once.  Raises
        :class:`~etcdwatch.exceptions.BackendError` for etcd errors.
        """
        self._drive(self._mirror.step(self.heartbeat,
                                      self.CALLBACK_RETRY_MIN,
                                      self.CALLBACK_RETRY_MAX,
                                      self._follow))

    def refresh_all_data(self) -> None:
        """Re-read the whole tree, then call :meth:`do_all_work`.

        The first load also calls :meth:`init_resync_start` before and
        :meth:`init_resync_end` after.  Raises
        :class:`~etcdwatch.exceptions.BackendError` if etcd fails; a
        callback that raises is logged and retried by :meth:`do_watch`.
        """
        self._drive(self._mirror.reload())

    # -- internals --------------------------------------------------------

    def _wait_until_elected(self):
        """Campaign (interruptibly); on a new term, start from a re-read.

        Also the check-in that keeps the election's keepalive renewing: one
        pass of the loop (a watch of at most a heartbeat) fits in the
        elector's work_time, and each callback checks in as it starts (a
        watch message can bring a thousand).
        """
        if not self.etcd_elector._campaign(self._stop):
            return False
        term = self.etcd_elector.fencing_token
        if term != self._term:
            LOG.info('%s: elected (term %s); loading %s', self.name, term,
                     self.watch_path)
            with self.etcd_data_lock:
                self._term = term
                self._mirror.new_term()
        return True

    def _drive(self, rule):
        try:
            return driving.drive(rule, self._backend, self,
                                 lock=self.etcd_data_lock,
                                 run_callback=self._run_callback,
                                 sleep=self._stop.wait,
                                 run_each=self._run_each)
        finally:
            if self._mirror.synced and not self._synced.is_set():
                self._synced.set()

    def _deliver(self):
        """Run queued callbacks in order; stop at the first that raises."""
        return self._drive(self._mirror.deliver())

    def _run_callback(self, name, args):
        with self._handover_lock:
            if self._stop.is_set():
                return requests.NOT_RUN
            self._in_callback = True
        try:
            return getattr(self, name)(*args)
        finally:
            self._callback_returned()

    def _run_each(self, name, items, proceed, done):
        # _run_callback for a run of callbacks: one handover for the run,
        # and stop() still lets no callback start after it.
        if self.etcd_elector is None:
            # Nothing to hand over: stop() resigns nothing.
            return requests.run_each(getattr(self, name), items, proceed,
                                     done, self._stop.is_set)
        with self._handover_lock:
            if self._stop.is_set():
                return 0, None
            self._in_callback = True
        try:
            return requests.run_each(getattr(self, name), items, proceed,
                                     done, self._stop.is_set)
        finally:
            self._callback_returned()

    def _callback_returned(self):
        with self._handover_lock:
            self._in_callback = False
            stopping = self._stop.is_set()
        if stopping and self.etcd_elector is not None:
            # stop() came while the callback ran and left the release to
            # us: only now may another worker act as leader.
            self.etcd_elector.resign()


class EtcdChangeWatcher(EtcdWatcher):
    """Exactly one notification per real change of a key.

    ``key_change(action, key, value)`` is called with 'add', 'change' or
    'delete' whenever etcd's value for ``key`` differs from the one last
    delivered successfully (recorded in ``implemented_state``), whether the
    difference came from a watch event or a full re-read.  A rewrite with
    the same value is not a change; a key never reported is never reported
    deleted.  After a full re-read, changes arrive in key order.

    The default :meth:`key_change` calls :meth:`added` with the short key
    and value for 'add' and 'change', and :meth:`removed` for 'delete';
    keys outside ``watch_path + '/'`` are ignored.  Override either level.
    """

    def __init__(self, etcd_client: Any, name: str, watch_path: str,
                 election_path: Optional[str] = None,
                 wait_until_elected: bool = False,
                 recovery_time: float = 5, data: Any = None,
                 heartbeat: float = 60,
                 handler: election.HandlerArg = None,
                 codec: Any = None) -> None:
        #: key -> the value last delivered to key_change without error.
        self.implemented_state: Dict[str, Any] = {}
        self._ledger = changes.ChangeLedger(self.implemented_state)
        super(EtcdChangeWatcher, self).__init__(
            etcd_client, name, watch_path, election_path,
            wait_until_elected, recovery_time, data, heartbeat,
            handler=handler, codec=codec)

    def do_all_work(self) -> None:
        """Deliver what differs between etcd_data and implemented_state.

        Costs one comparison per key; only the keys that differ are
        sorted and reconciled (deletes first, then the rest in key order).
        """
        data = self.etcd_data or {}
        self._reconcile(self._ledger.keys_to_reconcile(data), data)

    def do_work(self, action: str, key: str, value: Any) -> None:
        self._ledger.state = self.implemented_state
        self._ledger.report(action, key, value, self.key_change)

    def _reconcile(self, keys, data):
        # The attribute, as it is now: a subclass may have replaced it.
        self._ledger.state = self.implemented_state
        driving.drive(self._ledger.reconcile(keys, data), None, self)

    def key_change(self, action: str, key: str, value: Any) -> None:
        """Called once per real change; see the class docstring."""
        short_key = self.make_short_key(key)
        if short_key is None:
            return
        if action == DELETE:
            self.removed(short_key)
        else:
            self.added(short_key, value)

    def added(self, key: str, value: Any) -> None:
        """A key appeared or took a new value (``key`` is the short key)."""

    def removed(self, key: str) -> None:
        """A key went away (``key`` is the short key)."""
