"""What the threaded and the asyncio watchers share, without I/O.

:class:`WatcherBase` holds a watcher's tunables, checks its arguments,
keeps its state in a :class:`~etcdwatch.rules.mirror.Mirror`, and has the
hooks that are plain functions whichever way it runs (decoding values,
short keys).  :class:`etcdwatch.EtcdWatcher` and
:class:`etcdwatch.aio.AsyncEtcdWatcher` add the I/O and the waiting.
"""

import contextlib
import time
import warnings
from typing import Any, Dict, Iterable, Optional

from oslo_log import log as logging

from etcdwatch import exceptions
from etcdwatch import keys
from etcdwatch import registry
from etcdwatch.rules import mirror

LOG = logging.getLogger('etcdwatch.watcher')


class WatcherBase(object):
    """Tunables, arguments, state and plain hooks of a watcher.

    A subclass sets ``_backend`` (whose catch-up defaults apply) and
    ``etcd_elector`` (None, or an election whose ``is_elected`` says
    whether callbacks may run).
    """

    _backend: Any
    _stop: Any
    etcd_elector: Any = None
    #: While the loop runs a pass: when it ends (time.monotonic()).
    _pass_ends: Optional[float] = None

    #: Ceiling of the first wait after an etcd error; each consecutive
    #: error doubles it up to DANGER_PAUSE_MAX, and each wait is drawn at
    #: random from the upper half of its ceiling, so watchers that failed
    #: together (an etcd restart) do not all come back together.
    DANGER_PAUSE: float = 2
    #: The largest ceiling; None (the default) is 8 * DANGER_PAUSE.  An
    #: elected watcher never waits longer than DANGER_PAUSE (its term's
    #: work_time counts on it).
    DANGER_PAUSE_MAX: Optional[float] = None
    #: First and longest wait before retrying a callback that raised.
    CALLBACK_RETRY_MIN: float = 0.1
    CALLBACK_RETRY_MAX: float = 10.0
    #: Re-read the whole tree instead of walking the missed events when
    #: etcd is more than CATCHUP_MIN_LAG events ahead (or more than
    #: 1/CATCHUP_TREE_FRACTION of the tree's size, whichever is more).
    #: None (the default) takes the API's own values, measured in
    #: docs/performance.rst: on v2 (16, 64), for a walk costs one round
    #: trip per event and a read about one per 60-100 keys; on v3 (1000,
    #: 1), for a stream delivers missed events in batches.
    CATCHUP_MIN_LAG: Optional[int] = None
    CATCHUP_TREE_FRACTION: Optional[int] = None

    #: Attributes the constructor assigns: a subclass that set one before
    #: calling it would lose its value silently (docs/guide.rst, "Names in
    #: a subclass").
    _ASSIGNED = ('codec', 'data', 'etcd_client', 'etcd_elector',
                 'heartbeat', 'name', 'watch_path')

    def _check_arguments(self, name, watch_path, election_path,
                         wait_until_elected, recovery_time, heartbeat,
                         codec):
        """Refuse bad arguments, each error naming its argument."""
        taken = sorted(set(vars(self)) & set(self._ASSIGNED))
        if taken:
            message = ('%s set %s before the watcher\'s constructor, which '
                       'assigns %s itself: the value is lost (pass data= '
                       'for data, or use names of your own; see "Names in '
                       'a subclass" in the guide)'
                       % (type(self).__name__, ', '.join(
                           'self.' + n for n in taken),
                          'it' if len(taken) == 1 else 'them'))
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            LOG.warning('%s', message)
        if codec is not None and not callable(getattr(codec, 'decode',
                                                      None)):
            raise ValueError('codec must have a decode(value) method, not %r'
                             % (codec,))
        self.watch_path = keys.check_path('watch_path', watch_path)
        keys.check_duration('heartbeat', heartbeat)
        keys.check_duration('recovery_time', recovery_time)
        if wait_until_elected:
            if election_path is None:
                raise ValueError('election_path is required with '
                                 'wait_until_elected')
            keys.check_path('election_path', election_path)
            keys.check_name('name', name)

    def _init_state(self, name, data, heartbeat, codec):
        self.codec = codec
        self.name = name
        self.data = data
        self.heartbeat = heartbeat
        # The rules (etcdwatch.rules.mirror): the tree, the index, the
        # callbacks owed; subclasses do the I/O and the waiting.
        self._mirror = mirror.Mirror(
            name, self.watch_path, self,
            plain_values=(codec is None and type(self).decode_value is
                          WatcherBase.decode_value),
            catchup=self._catchup, leading=self._leading)
        registry.add_watcher(self)     # for etcdwatch.metrics

    def _election_settings(self, heartbeat: float,
                           recovery_time: float) -> Dict[str, Any]:
        """work_time and recovery_time of an elected watcher's election.

        One pass of the loop (a watch of at most a heartbeat, a pause
        after an error, callbacks) must fit in the term's work_time.
        """
        return {'work_time': heartbeat + self.DANGER_PAUSE + recovery_time,
                'recovery_time': recovery_time}

    # -- state, kept by the rules -----------------------------------------

    @property
    def etcd_data(self) -> Optional[Dict[str, Any]]:
        """Every leaf key under watch_path -> its value, or None."""
        return self._mirror.data

    @etcd_data.setter
    def etcd_data(self, value: Optional[Dict[str, Any]]) -> None:
        self._mirror.data = value

    @property
    def tick(self) -> Optional[int]:
        """The next etcd index to watch from; None means "re-read all".

        During a ``do_work`` call, the index after that call's event (a
        watch message's later events are applied already, but ``tick``
        says where this callback stands).
        """
        return self._mirror.visible_tick()

    @tick.setter
    def tick(self, value: Optional[int]) -> None:
        self._mirror.tick = value

    @property
    def expected_keys(self) -> Optional[Iterable[str]]:
        """What :meth:`init_resync_start` returned (None before)."""
        return self._mirror.expected_keys

    @expected_keys.setter
    def expected_keys(self, value: Optional[Iterable[str]]) -> None:
        self._mirror.expected_keys = value

    @property
    def _stats(self) -> Dict[str, Any]:
        return self._mirror.stats

    @property
    def synced(self) -> bool:
        """True once the initial load has been delivered to callbacks."""
        return self._mirror.synced

    # -- plain hooks --------------------------------------------------------

    def decode_value(self, key: str, value: str) -> Any:
        """Return what callbacks see for etcd's string ``value`` of ``key``.

        The default applies ``codec``; raise to refuse the value.
        """
        if self.codec is None:
            return value
        return self.codec.decode(value)

    def value_unparsable(self, key: str, value: str,
                         error: Exception) -> None:
        """``key`` holds ``value``, which :meth:`decode_value` refused.

        Called with ``etcd_data_lock`` held.  The key counts as absent
        until a decodable value arrives (a change watcher that had reported
        it reports it deleted).  The default does nothing more: the failure
        is already logged and counted in ``stats()['unparsable']``.
        """

    def make_short_key(self, key: str) -> Optional[str]:
        """The part of ``key`` below ``watch_path + '/'``, or None."""
        prefix = self.watch_path + '/'
        if key.startswith(prefix) and len(key) > len(prefix):
            return key[len(prefix):]
        return None

    def stats(self) -> Dict[str, Any]:
        """Counters, as a new dict.

        events, resyncs, errors, callback_errors, unparsable (values the
        codec refused), checks (quorum reads after a silent heartbeat),
        rewinds (re-reads because etcd's index went back), index (the
        last index applied), etcd_index (the newest index etcd showed:
        in a watch answer, a read or a check), lag (etcd_index - index:
        how far behind the watcher is, as far as it knows), last_event_time
        (time.time() of the last event applied), synced, pending
        (callbacks waiting for a retry).
        """
        result = dict(self._mirror.stats)
        result['index'] = None if self.tick is None else self.tick - 1
        result['lag'] = self._mirror.lag()
        result['synced'] = self.synced
        result['pending'] = len(self._mirror.queue)
        return result

    # -- what the rules ask -------------------------------------------------

    def _danger_pauses(self):
        # From the attributes as they are now: tests and subclasses set
        # DANGER_PAUSE on the instance after construction.
        initial = self.DANGER_PAUSE
        if self.etcd_elector is not None:
            return initial, initial
        return initial, self.DANGER_PAUSE_MAX or 8 * initial

    def _leading(self):
        """Whether callbacks may run now; an elected watcher shows life.

        Asked before each callback.  Each one that starts shows life, so
        a long run of quick callbacks (a watch message of a thousand
        events) is progress, as one callback per pass of the loop was; a
        callback that hangs still lets the term end after work_time.
        """
        elector = self.etcd_elector
        if elector is None:
            return True
        if not elector.is_elected:
            return False
        try:
            elector.check_in()
        except exceptions.EtcdElectionLost:
            return False
        return True

    @contextlib.contextmanager
    def _pass(self):
        """The loop's call of do_watch: it may follow for a heartbeat."""
        self._pass_ends = time.monotonic() + self.heartbeat
        try:
            yield
        finally:
            self._pass_ends = None

    def _follow(self):
        """Seconds this pass of the loop may still wait for a message.

        0 ends the pass (outside the loop, once stopped, once the term is
        lost, or a ``heartbeat`` after the pass began).  A watcher that
        follows a busy prefix then runs ``do_tick`` and checks its term
        once per heartbeat, not once per watch message.
        """
        ends = self._pass_ends
        if ends is None or self._stop.is_set() or not self._leading():
            return 0
        return ends - time.monotonic()

    def _catchup(self):
        min_lag, fraction = self.CATCHUP_MIN_LAG, self.CATCHUP_TREE_FRACTION
        if min_lag is None:
            min_lag = self._backend.catchup_min_lag
        if fraction is None:
            fraction = self._backend.catchup_tree_fraction
        return min_lag, fraction
