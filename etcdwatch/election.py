"""Leader election on one etcd key with a TTL.

Workers race to create ``<election_path>/master_<name>``, holding their own
id, with a TTL of ``work_time`` (on v2 the key's own TTL; on v3 a lease the
key is bound to).  The winner leads: a background keepalive renews it (v2:
a TTL-only refresh; v3: a lease keepalive; neither wakes anybody) for as
long as the worker shows life.  The others wait on the key and race again
as soon as it goes.
"""

import contextlib
import os
import socket
import threading
import time
import uuid
import weakref
from typing import Any, Callable, Iterator, Optional, TypeVar, Union

from oslo_log import log as logging

from etcdwatch import backends
from etcdwatch.backends import base
from etcdwatch import backoff
from etcdwatch import exceptions
from etcdwatch import handlers
from etcdwatch import keys
from etcdwatch import outage

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


def _make_id():
    # host:pid tells an operator who leads; the random part keeps two
    # electors of one process apart.
    return '%s:%d:%s' % (socket.gethostname(), os.getpid(),
                         uuid.uuid4().hex[:12])


class Term(object):
    """One term of leadership.

    ``fencing_token`` is the etcd index at which it was won; it grows with
    every new term, so work tagged with it can be told from a stale
    leader's.  ``lost`` is an event set when the term ends, for any reason.
    """

    def __init__(self, fencing_token: int, lost_event: Any) -> None:
        self.fencing_token = fencing_token
        self.lost = lost_event

    def check(self) -> None:
        """Raise :class:`EtcdElectionLost` if the term has ended."""
        if self.lost.is_set():
            raise EtcdElectionLost('term %s has ended' % self.fencing_token)

    def __repr__(self) -> str:
        return '<Term %s%s>' % (self.fencing_token,
                                ' lost' if self.lost.is_set() else '')


class EtcdElection(object):
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
                 on_lost: Optional[Callable[[Term], Any]] = None) -> None:
        keys.check_name('name', name)
        self.election_path = keys.check_path('election_path', election_path)
        keys.check_duration('work_time', work_time)
        keys.check_duration('recovery_time', recovery_time)
        for argument, value in (('on_elected', on_elected),
                                ('on_lost', on_lost)):
            if value is not None and not callable(value):
                raise ValueError('%s must be callable, not %r'
                                 % (argument, value))
        self._backend = backends.for_client(etcd_client)
        self._handler = handlers.get_handler(handler)

        self.etcd_client = etcd_client
        self.name = name
        #: This worker's id, the value it writes into the election key.
        self.thread_id = _make_id()
        self.work_time = work_time
        self.recovery_time = recovery_time
        self.multi_worker_ok = bool(multi_worker_ok)
        self.master_key = self.election_path + '/master_' + name
        self.on_elected = on_elected
        self.on_lost = on_lost

        self._lock = self._handler.rlock()
        self._campaign_outage = outage.OutageLog(
            LOG, '%s: campaigning for %s' % (name, self.master_key))
        # Candidates that failed together (an etcd restart) must not all
        # come back together: jittered, growing to twice recovery_time.
        self._campaign_backoff = backoff.Backoff(recovery_time,
                                                 2 * recovery_time)
        #: The current :class:`Term`, or None.
        self.term: Optional[Term] = None
        # Monotonic time after which we no longer believe we lead: when the
        # last confirmed create/refresh was *sent*, plus the TTL, minus a
        # margin for etcd expiring keys early on its own clock.
        self._lease_deadline: Optional[float] = None
        self._lease_margin = min(1.0, work_time / 4.0)
        # Monotonic time until which the worker has shown life; the
        # keepalive renews the key only before it.
        self._alive_until = 0.0
        # (term, task) of the keepalive and of the guard (_guard_loop).
        self._keepalive: Any = (None, None)
        self._guard: Any = (None, None)
        # The highest etcd index seen, and until when (monotonic) not to
        # campaign because etcd's index went back below it.
        self._seen_index: Optional[int] = None
        self._hold_until = 0.0
        # (term, thread, event set once its on_lost returned) of the term
        # that ended last.
        self._ending: Optional[Any] = None
        # True once etcd said the key is someone else's (not merely that
        # it could not be reached); cleared by a new term.
        self._refused = False
        # Whether the key may be ours: shared with the finalizer, which
        # releases it at exit or collection without a reference to self.
        self._held = [False]
        weakref.finalize(self, _release_if_held, self._backend,
                         self.master_key, self.thread_id, self._held)
        _live_electors.add(self)

    # -- what callers ask -------------------------------------------------

    @property
    def is_elected(self) -> bool:
        """True while etcd confirmed, within the lease, that we lead.

        Never True past the local lease deadline: the monotonic time the
        last successful create or refresh was sent, plus the TTL, minus a
        margin (a quarter of the TTL, at most 1 s).  That falls before the
        key can expire on the server, so another worker can only be elected
        after this turns False.
        """
        deadline = self._lease_deadline
        return deadline is not None and time.monotonic() < deadline

    @property
    def fencing_token(self) -> Optional[int]:
        """The etcd index at which the current term was won, or None."""
        term = self.term
        return None if term is None else term.fencing_token

    def wait_until_elected(self) -> None:
        """Return once this worker leads; counts as showing life.

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
        self._campaign(stop=None)

    def check_in(self) -> None:
        """Show life without blocking; raise if no longer elected.

        Raises :class:`EtcdElectionLost` if the term has ended (with
        ``multi_worker_ok``, only if etcd said the key is not ours).
        """
        self._alive_until = time.monotonic() + self.work_time
        if self.is_elected:
            return
        if self.multi_worker_ok and not self._refused:
            return
        raise EtcdElectionLost('%s does not hold %s'
                               % (self.thread_id, self.master_key))

    def extend_election(self, duration: float) -> None:
        """Renew our term now for ``duration`` seconds.

        Counts as showing life for ``duration`` seconds.  Raises
        :class:`EtcdElectionLost` if the key no longer holds our id.  If
        etcd cannot be reached, the term is kept while the lease we last
        confirmed still runs (or always, with ``multi_worker_ok``), and lost
        after that.
        """
        keys.check_duration('duration', duration)
        now = time.monotonic()
        self._alive_until = max(self._alive_until, now + duration)
        try:
            if self._renew(duration):
                self._ensure_keepalive()
                return
        except exceptions.EtcdUnavailable:
            if self.is_elected or self.multi_worker_ok:
                LOG.warning('%s: could not reach etcd to extend the '
                            'election; still within the lease',
                            self.name, exc_info=True)
                return
            self._end_term('etcd unreachable past the lease')
        LOG.info('%s: election lost by %s', self.name, self.thread_id)
        raise EtcdElectionLost('%s no longer holds %s'
                               % (self.thread_id, self.master_key))

    def leader(self) -> Optional[str]:
        """The id of the current leader, or None; never campaigns."""
        state, _index = self._backend.read_key(self.master_key)
        return None if state is None else state.value

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

    # -- the campaign -----------------------------------------------------

    def _campaign(self, stop):
        """Loop until elected (True) or ``stop`` is set (False)."""
        self._alive_until = time.monotonic() + self.work_time
        if self.is_elected and self._keepalive_running():
            return True
        while stop is None or not stop.is_set():
            try:
                if self._holding_off(stop):
                    continue
                won = self._try_lead()
                self._campaign_outage.succeeded()
                self._campaign_backoff.succeeded()
                if won:
                    self._alive_until = time.monotonic() + self.work_time
                    self._ensure_keepalive()
                    return True
                self._wait_for_vacancy()
            except exceptions.ClusterRewound as e:
                self._rewound(e)
            except exceptions.BackendError as e:
                if self.multi_worker_ok:
                    LOG.warning('%s: etcd unreachable; working anyway '
                                '(multi_worker_ok)', self.name,
                                exc_info=True)
                    return True
                if not self.is_elected:
                    self._end_term('etcd unreachable past the lease')
                pause = self._campaign_backoff.failed()
                if isinstance(e, exceptions.EtcdUnavailable):
                    # Once per outage, not once per retry.
                    self._campaign_outage.failed(e, round(pause, 1))
                else:
                    LOG.warning('%s: election failed on an etcd error; '
                                'retrying in %.1fs', self.name, pause,
                                exc_info=True)
                self._sleep(stop, pause)
        return False

    def _try_lead(self):
        """Renew our key or create it; True if we now lead."""
        if self.term is not None and self._renew(self.work_time):
            return True
        sent = time.monotonic()
        index = self._backend.create(self.master_key, self.thread_id,
                                     self.work_time)
        if index is not None and self._went_back(index):
            # Won on an etcd that forgot its past: give the key back and
            # hold off (see _rewound).
            self._backend.delete_if(self.master_key, self.thread_id)
            return False
        if index is not None:
            self._begin_term(index, sent + self.work_time)
            return True
        # The key exists: it may still be ours from a term we had
        # forgotten (after a restart of the keepalive, say).
        return self._renew(self.work_time)

    def _renew(self, ttl, term=None):
        """Refresh the key's TTL if it is ours; False if it is not.

        ``term``: renew for that term only (the keepalive's).  A term that
        ended while its refresh was on its way (the guard saw the key
        taken, or the lease deadline passed) is not revived by it; only a
        caller's own campaign or extend_election() takes up a key that is
        ours but belongs to no term we hold.
        """
        sent = time.monotonic()
        if self._backend.refresh(self.master_key, self.thread_id, ttl):
            with self._lock:
                self._held[0] = True
                if self.term is not None and (term is None or
                                              self.term is term):
                    self._lease_deadline = sent + ttl - self._lease_margin
                    return True
            if term is not None:
                return False
            # Ours, but from a term we did not record: take it up, unless
            # etcd went back in time (a restore can bring back our key
            # from then, while another leads now): then give it back.
            state, index = self._backend.read_key(self.master_key)
            if self._went_back(index) or self._hold_until > time.monotonic():
                self._backend.delete_if(self.master_key, self.thread_id)
                return False
            if state is not None and state.value == self.thread_id:
                self._begin_term(state.created_index, sent + ttl)
                return True
            return False
        self._refused = True
        self._end_term('the key is no longer ours')
        return False

    def _begin_term(self, token, expires):
        with self._lock:
            self._lease_deadline = expires - self._lease_margin
            self._held[0] = True
            self._refused = False
            if self.term is not None and self.term.fencing_token == token:
                return
            self.term = Term(token, self._handler.event())
        LOG.info('%s: %s elected at index %s', self.name, self.thread_id,
                 token)
        self._callback(self.on_elected, self.term)

    def _end_term(self, why):
        """End the current term, if any; on_lost has run when this returns.

        The keepalive, the guard and the caller's own thread can each
        notice a loss.  Whichever comes second waits for the first's
        on_lost to return, so that, for instance, extend_election() raises
        EtcdElectionLost only after on_lost ran (unless on_lost itself is
        what is running here).
        """
        with self._lock:
            term, self.term = self.term, None
            self._lease_deadline = None
            if term is None:
                ended = self._ending
            else:
                term.lost.set()
                self._ending = ended = (term, threading.get_ident(),
                                        self._handler.event())
        if term is None:
            if ended is not None and ended[1] != threading.get_ident():
                # Bounded: a callback that never returns must not hang us.
                ended[2].wait(self._CALLBACK_WAIT)
            return
        try:
            level = logging.INFO if why == 'resigned' else logging.WARNING
            LOG.log(level, '%s: %s no longer leads (term %s): %s',
                    self.name, self.thread_id, term.fencing_token, why)
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

    def _wait_for_vacancy(self):
        """Sleep until the key changes, or at most recovery_time."""
        state, index = self._backend.read_key(self.master_key)
        if self._went_back(index) or state is None:
            return
        try:
            event = self._backend.watch_key(self.master_key, index + 1,
                                            self.recovery_time)
        except exceptions.ClusterRewound:
            raise
        except exceptions.HistoryGone:
            return
        if event is not None:
            self._went_back(event.index)

    # -- etcd going back in time ------------------------------------------

    def _went_back(self, index):
        """Note an index etcd answered with; True if it went back.

        Only for the answers of one thread's requests in the order it made
        them (the campaign's): answers that cross in flight prove nothing.
        """
        if index is None:
            return False
        with self._lock:
            seen = self._seen_index
            self._seen_index = index if seen is None else max(seen, index)
            if seen is None or index >= seen:
                return False
        self._rewound(exceptions.ClusterRewound(
            'etcd answered at index %d, below %d seen before' % (index, seen),
            index))
        return True

    def _rewound(self, exc):
        """etcd was wiped, restored or replaced: hold off for work_time.

        The rewound etcd no longer holds the key of whoever led before, so
        the key is free at once, while that leader still believes it leads
        until its local lease deadline, at most ``work_time`` after it last
        reached etcd.  Waiting that long before taking the key keeps terms
        from overlapping.
        """
        with self._lock:
            self._seen_index = exc.current_index
            self._hold_until = time.monotonic() + self.work_time
        LOG.warning('%s: %s; not campaigning for %ss, until any leader of '
                    'the etcd before has seen its term end', self.name, exc,
                    self.work_time)

    def _holding_off(self, stop):
        """Sleep out a hold after a rewind; True if there was one."""
        remaining = self._hold_until - time.monotonic()
        if remaining <= 0 or self.term is not None:
            return False
        self._sleep(stop, remaining)
        return True

    def _sleep(self, stop, seconds):
        if stop is None:
            self._handler.sleep(seconds)
        else:
            stop.wait(seconds)

    # -- the keepalive ----------------------------------------------------

    def _keepalive_running(self):
        """Whether the keepalive and the guard both serve the current term.

        A task of an ended term exits by itself (it waits on that term's
        ``lost``), but may still be alive just after a new term began.
        """
        with self._lock:
            term = self.term
            return term is not None and all(
                task is not None and task_term is term and task.is_alive()
                for task_term, task in (self._keepalive, self._guard))

    def _ensure_keepalive(self):
        with self._lock:
            term = self.term
            if term is None:
                return
            ref = weakref.ref(self)
            task_term, task = self._keepalive
            if task_term is not term or task is None or not task.is_alive():
                self._keepalive = (term, self._handler.spawn(
                    _keepalive_loop, ref, term))
            task_term, task = self._guard
            if task_term is not term or task is None or not task.is_alive():
                self._guard = (term, self._handler.spawn(
                    _guard_loop, ref, term))

    def _key_not_ours(self, why):
        self._refused = True
        self._end_term(why)


def _keepalive_loop(elector_ref, term):
    """Renew the key of ``term`` while its worker shows life.

    Holds the elector only weakly between renewals, so a leader that is
    dropped is collected (and its finalizer releases the key).
    """
    while not term.lost.is_set():
        elector = elector_ref()
        if elector is None:
            return
        interval = elector.work_time / 3.0
        now = time.monotonic()
        if now >= elector._alive_until:
            # The worker has not shown life for work_time: stop renewing
            # and let the key expire, as the seed's election did.
            if not elector.is_elected:
                elector._end_term('the worker stopped checking in')
                return
        else:
            try:
                elector._renew(elector.work_time, term)
            except exceptions.BackendError:
                if not elector.is_elected and not elector.multi_worker_ok:
                    elector._end_term('etcd unreachable past the lease')
                    return
                LOG.warning('%s: keepalive could not reach etcd; retrying',
                            elector.name, exc_info=True)
                interval /= 3.0
        wait = term.lost.wait
        del elector
        wait(interval)


def _guard_loop(elector_ref, term):
    """End ``term`` the moment it stops being ours.

    Watches the election key, so a key deleted or taken by someone else
    (an operator, a restore) ends the term within one round trip, not at
    the next renewal up to ``work_time / 3`` later.  And ends the term
    when its lease deadline passes unconfirmed (unless multi_worker_ok):
    a renewal sent to a member cut off from its cluster can block for
    the client's whole timeout, and ``on_lost`` must fire before the key
    can expire on the server, not after another worker was elected.
    Holds the elector only weakly between watches, as the keepalive does.
    """
    index = None
    while not term.lost.is_set():
        elector = elector_ref()
        if elector is None:
            return
        deadline = elector._lease_deadline
        now = time.monotonic()
        if deadline is None or now >= deadline:
            if not elector.multi_worker_ok:
                elector._end_term(
                    'the worker stopped checking in' if
                    now >= elector._alive_until else
                    'the lease ran out before etcd confirmed a renewal')
                return
            deadline = now + elector.recovery_time
        wait = min(deadline - now, elector.recovery_time)
        backend, key, me = elector._backend, elector.master_key, \
            elector.thread_id
        del elector
        why = None
        try:
            if index is None:
                # Not fed to _went_back: an answer that arrives after the
                # campaign saw a newer index is not etcd going back.
                state, index = backend.read_key(key)
                if state is None or state.value != me:
                    why = _holder(state)
            else:
                event = backend.watch_key(key, index + 1, wait)
                if event is None:
                    # Only a close() returns early: do not spin.
                    term.lost.wait(max(0.0, now + wait - time.monotonic()))
                else:
                    index = event.index
                    if event.kind == base.DELETE or event.value != me:
                        why = _holder(None if event.kind == base.DELETE
                                      else event)
        except exceptions.ClusterRewound as e:
            index = None
            elector = elector_ref()
            if elector is not None:
                elector._rewound(e)
            del elector
        except exceptions.HistoryGone:
            index = None
        except exceptions.BackendError:
            # The deadline above decides; look again soon.
            term.lost.wait(min(1.0, wait))
        if why is not None and not term.lost.is_set():
            elector = elector_ref()
            if elector is not None and elector.term is term:
                elector._key_not_ours(why)
            return


def _holder(state):
    if state is None:
        return 'the key was deleted'
    return 'the key was taken by %s' % (state.value,)
