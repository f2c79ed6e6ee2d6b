"""Leader election on one etcd key with a TTL.

Workers race to create ``<election_path>/master_<name>``, holding their own
id, with a TTL of ``work_time`` (on v2 the key's own TTL; on v3 a lease the
key is bound to).  The winner leads: a background keepalive renews it (v2:
a TTL-only refresh; v3: a lease keepalive; neither wakes anybody) for as
long as the worker shows life.  The others wait on the key and race again
as soon as it goes.
"""

import contextlib
import queue
import threading
import time
import weakref
from typing import Any, Callable, Iterator, Optional, TypeVar, Union

from oslo_log import log as logging

from etcdwatch import backends
from etcdwatch import driving
from etcdwatch import exceptions
from etcdwatch import handlers
from etcdwatch import keys
from etcdwatch import registry
from etcdwatch.rules import candidacy

LOG = logging.getLogger(__name__)

EtcdElectionLost = exceptions.EtcdElectionLost

_T = TypeVar('_T')
#: What ``handler=`` accepts: a Handler, its name, or None.
HandlerArg = Union[None, str, handlers.Handler]

# Every live elector, so cleanup_electors() can reach them.  Weak, so that
# electors can be collected; each one's finalizer (below) releases its key
# when it is collected or when the interpreter exits, whichever is first.
_live_electors: 'weakref.WeakSet[EtcdElection]' = weakref.WeakSet()


def cleanup_electors() -> None:
    """Release every election this process still holds.

    Runs by itself at interpreter exit (and when an elector that leads is
    garbage collected); callable explicitly too.
    """
    for elector in list(_live_electors):
        elector.clean()


def _release_if_held(backend, key, value, held):
    # A finalizer: must not refer to the elector itself.
    if not held[0]:
        return
    held[0] = False
    if threading.main_thread().is_alive():
        # Collected as garbage.  The collector runs in whichever thread
        # happened to allocate, maybe in the middle of a call to this very
        # client (holding a lock the release needs: a FakeEtcdClient's
        # deadlocked so): release from a thread of its own.  Not a daemon:
        # an interpreter that is exiting waits for it.
        threading.Thread(target=_release, args=(backend, key, value),
                         name='etcdwatch-release').start()
    else:
        # At exit (every other thread has been joined): here and now.
        _release(backend, key, value)


def _release(backend, key, value):
    try:
        backend.delete_if(key, value)
    except exceptions.BackendError:
        LOG.debug('could not release %s', key, exc_info=True)


_make_id = candidacy.make_id


#: One term of leadership (see :class:`etcdwatch.rules.candidacy.Term`).
Term = candidacy.Term


class EtcdElection(candidacy.CandidateBase):
    """One participant in the election of a leader of kind ``name``.

    :param etcd_client: a python-etcd ``etcd.Client`` (etcd's v2 API), an
        etcd3gw client (its v3 API; see :doc:`/v3`), or a FakeEtcdClient.
    :param name: what is being led; one leader per name and election_path.
    :param election_path: the etcd directory that holds the election keys.
    :param work_time: the key's TTL, and the longest a leader may go without
        showing life (calling :meth:`wait_until_elected`,
        :meth:`check_in` or :meth:`extend_election`).  While it shows life,
        a background keepalive renews the key every ``work_time / 3``; a
        leader that hangs stops being renewed and loses the key within
        ``2 * work_time``.
    :param recovery_time: the longest a follower sleeps between two looks
        at the key, in case a watch notification is lost.  A follower is
        normally woken the moment the key goes.  After an etcd error a
        candidate retries after a random wait in the upper half of
        ``recovery_time``, doubling with each consecutive error up to
        ``2 * recovery_time``.
    :param multi_worker_ok: what to prefer when etcd cannot be reached.
        False (the default): *at most one* leader.  A worker only believes it
        leads after etcd confirmed it, and stops believing it once the lease
        it last confirmed has run out locally, which is before the key can
        expire on the server.
        True: *at least one* worker working.  When etcd cannot be reached, a
        worker goes on working (and a new one may start) even though
        another may be doing the same.
    :param handler: the concurrency handler ('threading', 'eventlet', an
        instance, or None for the default chosen from eventlet patching).
    :param on_elected: called with the new :class:`Term` when this worker
        wins a term, on the thread that won it.
    :param on_lost: called with the ended :class:`Term` when a term ends for
        any reason (lost, expired, resigned), on the thread that noticed:
        often the keepalive's.  Keep both callbacks short.
    :param candidate_id: the value this candidate writes into the
        election key, which :meth:`leader` returns (a str; default: a new
        ``host:pid:random`` id).  Give one to tell other processes who
        leads in terms of your own (a service's member id, say), with
        something unique per candidate in it: two live candidates with
        one id are taken for one, and both believe they lead.

    All arguments are checked before anything is sent to etcd; bad ones
    raise ``ValueError`` naming the argument.
    """

    # The longest a thread that noticed a loss second waits for the
    # on_lost that the first is running.
    _CALLBACK_WAIT = 10.0

    def __init__(self, etcd_client: Any, name: str, election_path: str,
                 work_time: float, recovery_time: float = 5,
                 multi_worker_ok: bool = False, handler: HandlerArg = None,
                 on_elected: Optional[Callable[[Term], Any]] = None,
                 on_lost: Optional[Callable[[Term], Any]] = None,
                 candidate_id: Optional[str] = None) -> None:
        self._setup(etcd_client, name, election_path, work_time,
                    recovery_time, multi_worker_ok, on_elected, on_lost,
                    candidate_id)
        self._backend = backends.for_client(etcd_client)
        self._handler = handlers.get_handler(handler)
        self._lock = self._handler.rlock()
        # Set by cancel(); cleared by each wait_until_elected().
        self._cancelled = self._handler.event()
        # Whether the key may be ours: shared with the finalizer, which
        # releases it at exit or collection without a reference to self.
        self._held = self._candidacy.held
        weakref.finalize(self, _release_if_held, self._backend,
                         self.master_key, self.thread_id, self._held)
        _live_electors.add(self)
        registry.add_election(self)    # for etcdwatch.metrics

    # -- settings and state, kept by the rules -----------------------------

    work_time = property(
        lambda self: self._candidacy.work_time,
        lambda self, value: setattr(self._candidacy, 'work_time', value),
        doc='The key\'s TTL, and how long showing life lasts.')
    recovery_time = property(
        lambda self: self._candidacy.recovery_time,
        lambda self, value: setattr(self._candidacy, 'recovery_time', value),
        doc='The longest wait for a vacancy.')
    multi_worker_ok = property(
        lambda self: self._candidacy.multi_worker_ok,
        lambda self, value: setattr(self._candidacy, 'multi_worker_ok',
                                    bool(value)),
        doc='Prefer at least one worker to at most one.')
    term = property(
        lambda self: self._candidacy.term,
        lambda self, value: setattr(self._candidacy, 'term', value),
        doc='The current :class:`Term`, or None.')
    _lease_deadline = property(
        lambda self: self._candidacy.lease_deadline,
        lambda self, value: setattr(self._candidacy, 'lease_deadline',
                                    value))

    # -- what callers ask -------------------------------------------------

    def wait_until_elected(self, timeout: Optional[float] = None) -> bool:
        """Return True once this worker leads; counts as showing life.

        With ``timeout`` (seconds), returns False if not elected by then;
        :meth:`cancel` from another thread makes it return False too.
        Either way the candidate then withdraws: it does not take the key
        later unless asked to campaign again.

        A leader calls it again before each piece of work that takes at
        most ``work_time``; while the keepalive holds the lease that costs
        no request.  With ``multi_worker_ok=False`` it returns only after
        etcd confirmed the key holds our id; while etcd is unreachable it
        keeps trying (after jittered waits from ``recovery_time`` up to
        twice it).  After etcd went back in time (wiped or restored) it
        waits ``work_time`` before taking the key.  With
        ``multi_worker_ok=True``
        it also returns when etcd cannot be reached (logging a warning).
        """
        if timeout is not None:
            keys.check_duration('timeout', timeout)
        self._cancelled.clear()
        if timeout is None:
            won = self._drive(self._candidacy.campaign(
                self._cancelled.is_set), sleep=self._cancelled.wait)
        else:
            deadline = time.monotonic() + timeout

            def time_left():
                return deadline - time.monotonic()

            def stopped():
                return self._cancelled.is_set() or time_left() <= 0

            def sleep(seconds):
                return self._cancelled.wait(max(0.0, min(seconds,
                                                         time_left())))
            won = self._drive(self._candidacy.campaign(stopped, time_left),
                              sleep=sleep)
        if won and not self._cancelled.is_set():
            return True
        self._withdraw()
        return False

    def cancel(self) -> None:
        """Make a pending :meth:`wait_until_elected` return False.

        From any thread.  On v3 the campaign returns at once; on v2 within
        its current wait for the key (at most ``recovery_time``).  A key
        the campaign took in the meantime is given back.  A later call of
        wait_until_elected() campaigns again.  A leader that is not
        campaigning is not affected: use :meth:`resign`.
        """
        self._cancelled.set()
        # Wakes a wait for the key (v3 streams) in the campaigning thread.
        self._backend.close()

    def extend_election(self, duration: float) -> None:
        """Renew our term now for ``duration`` seconds.

        Counts as showing life for ``duration`` seconds.  Raises
        :class:`EtcdElectionLost` if the key no longer holds our id.  If
        etcd cannot be reached, the term is kept while the lease we last
        confirmed still runs (or always, with ``multi_worker_ok``), and lost
        after that.
        """
        keys.check_duration('duration', duration)
        if self._drive(self._candidacy.extend(duration)):
            return
        raise EtcdElectionLost('%s no longer holds %s'
                               % (self.thread_id, self.master_key))

    def leader(self) -> Optional[str]:
        """The id of the current leader, or None; never campaigns."""
        state, _index = self._backend.read_key(self.master_key)
        return None if state is None else state.value

    def observe(self, on_change: Callable[[Optional[str]], Any]
                ) -> 'Observer':
        """Call ``on_change(leader_id or None)`` on each change of leader.

        The current leader first, then each new one as it happens (a watch
        on the key; it never campaigns), on a thread (or green thread) of
        the handler.  Returns an :class:`Observer`; its ``stop()`` ends it.
        """
        if not callable(on_change):
            raise ValueError('on_change must be callable, not %r'
                             % (on_change,))
        return Observer(self, on_change)

    def leaders(self) -> Iterator[Optional[str]]:
        """Yield the current leader's id (or None), then each new one.

        Blocks between changes; closing the generator stops the watch.
        """
        changes: 'queue.Queue[Optional[str]]' = queue.Queue()
        observer = self.observe(changes.put)
        try:
            while True:
                yield changes.get()
        finally:
            observer.stop()

    def resign(self) -> None:
        """Give up leadership now: delete the key if it is ours.

        A follower waiting on the key takes over at once.  Idempotent;
        never raises for etcd errors (the key then expires by its TTL).
        """
        self._end_term('resigned')
        self._held[0] = False
        try:
            if self._backend.delete_if(self.master_key, self.thread_id):
                LOG.info('%s: %s resigned', self.name, self.thread_id)
        except exceptions.BackendError:
            LOG.warning('%s: could not delete %s; it will expire',
                        self.name, self.master_key, exc_info=True)
        self._backend.close()

    def clean(self) -> None:
        """Release the election key if we hold it (see :meth:`resign`).

        A leader's key is also released at process exit and when its
        elector is garbage collected, so a clean exit hands over at once.
        """
        self.resign()

    @contextlib.contextmanager
    def leadership(self) -> Iterator[Optional[Term]]:
        """Campaign, then run the ``with`` body as leader; resign after.

        Yields the :class:`Term`; the body should call :meth:`check_in`
        (or ``term.check()``) between pieces of work and stop when
        ``term.lost`` is set.
        """
        self.wait_until_elected()
        term = self.term
        try:
            yield term
        finally:
            self.resign()

    def run(self, func: Callable[..., _T], *args: Any,
            **kwargs: Any) -> _T:
        """Call ``func(*args, **kwargs)`` as leader; resign when it returns.

        Blocks until elected first.  Returns what ``func`` returns.
        """
        with self.leadership():
            return func(*args, **kwargs)

    # -- running the rules -------------------------------------------------

    def _withdraw(self):
        """A campaign was cut short: leave no key and no term behind."""
        if self.term is not None:
            self.resign()
            return
        try:
            self._backend.delete_if(self.master_key, self.thread_id)
        except exceptions.BackendError:
            LOG.warning('%s: could not withdraw from %s; a key created '
                        'just now will expire', self.name, self.master_key,
                        exc_info=True)

    def _campaign(self, stop):
        """Loop until elected (True) or ``stop`` is set (False)."""
        if stop is None:
            return self._drive(self._candidacy.campaign(lambda: False),
                               sleep=self._handler.sleep)
        return self._drive(self._candidacy.campaign(stop.is_set),
                           sleep=stop.wait)

    def _drive(self, rule, sleep=None):
        return driving.drive(rule, self._backend, self, lock=self._lock,
                             hooks_locked=False, sleep=sleep)

    # -- what the rules ask (HOOK requests) --------------------------------

    def _begin_term(self, token, expires):
        with self._lock:
            term = self._candidacy.begin_term(token, expires,
                                              self._handler.event)
        if term is not None:
            self._callback(self.on_elected, term)

    def _end_term(self, why):
        """End the current term, if any; on_lost has run when this returns.

        The keepalive, the guard and the caller's own thread can each
        notice a loss.  Whichever comes second waits for the first's
        on_lost to return, so that, for instance, extend_election() raises
        EtcdElectionLost only after on_lost ran (unless on_lost itself is
        what is running here).
        """
        me = threading.get_ident()
        with self._lock:
            term, ended = self._candidacy.end_term(me, self._handler.event)
        if term is None:
            if ended is not None and ended[1] != me:
                # Bounded: a callback that never returns must not hang us.
                ended[2].wait(self._CALLBACK_WAIT)
            return
        try:
            self._candidacy.log_lost(term, why)
            self._callback(self.on_lost, term)
        finally:
            ended[2].set()

    def _callback(self, func, term):
        if func is None:
            return
        try:
            func(term)
        except Exception:
            LOG.exception('%s: election callback %r failed', self.name, func)

    def _keepalive_running(self):
        """Whether the keepalive, guard and lease timer serve this term.

        A task of an ended term exits by itself (it waits on that term's
        ``lost``), but may still be alive just after a new term began.
        """
        with self._lock:
            term = self.term
            return term is not None and all(
                task is not None and task_term is term and task.is_alive()
                for task_term, task in (self._keepalive, self._guard,
                                        self._timer))

    def _ensure_keepalive(self):
        with self._lock:
            term = self.term
            if term is None:
                return
            ref = weakref.ref(self)
            for attribute, rule in (('_keepalive', 'keepalive'),
                                    ('_guard', 'guard'),
                                    ('_timer', 'lease_timer')):
                task_term, task = getattr(self, attribute)
                if task_term is not term or task is None or \
                        not task.is_alive():
                    setattr(self, attribute, (term, self._handler.spawn(
                        _run_while_leading, ref, rule, term)))

    def _key_not_ours(self, why):
        self._candidacy.refused = True
        self._end_term(why)


class Observer(object):
    """A running :meth:`EtcdElection.observe`; :meth:`stop` ends it."""

    def __init__(self, elector: EtcdElection,
                 on_change: Callable[[Optional[str]], Any]) -> None:
        self._on_change = on_change
        self._name = elector.name
        self._stop = elector._handler.event()
        # A backend of its own: closing it to stop must not disturb the
        # elector's requests.
        self._backend = backends.for_client(elector.etcd_client)
        rule = elector._candidacy.observe(self._stop.is_set)
        self._task = elector._handler.spawn(self._run, rule)

    def _run(self, rule):
        try:
            driving.drive(rule, self._backend, self, sleep=self._stop.wait)
        finally:
            self._backend.close()

    def _observed(self, leader):
        if self._stop.is_set():
            return
        try:
            self._on_change(leader)
        except Exception:
            LOG.exception('%s: observer %r failed', self._name,
                          self._on_change)

    def stop(self) -> None:
        """End the observation: at once on v3, within recovery_time on v2.

        No ``on_change`` starts after it returns.
        """
        self._stop.set()
        self._backend.close()

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait until it has ended; True if it did within ``timeout``."""
        self._task.join(timeout)
        return not self._task.is_alive()


class _ElectorGone(Exception):
    """The elector a keepalive or guard served was collected."""


class _WeakHost(object):
    """An elector's hooks, reached through a weak reference.

    So a keepalive or guard thread does not keep a dropped leader alive:
    once it is collected (and its finalizer released the key), the next
    hook the rule asks for ends the thread.
    """

    def __init__(self, ref):
        self._ref = ref

    def __getattr__(self, name):
        elector = self._ref()
        if elector is None:
            raise _ElectorGone(name)
        return getattr(elector, name)


def _run_while_leading(elector_ref, which, term):
    """Run the keepalive, guard or lease timer of ``term`` on this thread.

    Its sleeps end when the term is lost.
    """
    elector = elector_ref()
    if elector is None:
        return
    rule = getattr(elector._candidacy, which)(term)
    backend, lock = elector._backend, elector._lock
    del elector
    try:
        driving.drive(rule, backend, _WeakHost(elector_ref), lock=lock,
                      hooks_locked=False, sleep=term.lost.wait)
    except _ElectorGone:
        pass
