"""The rules of leader election on one etcd key, without I/O.

:class:`Candidacy` is one candidate's state (its term, the local lease
deadline, when it last showed life, the highest index etcd showed it)
and the rules it follows, as generators that yield
:mod:`~etcdwatch.rules.requests`:

- :meth:`~Candidacy.campaign`: renew or create the key, or wait for it to
  go; back off on errors; hold off after etcd went back in time;
- :meth:`~Candidacy.keepalive`: renew the key while the worker shows life;
- :meth:`~Candidacy.guard`: end the term the moment the key stops being
  ours;
- :meth:`~Candidacy.lease_timer`: end the term at the local lease
  deadline, whatever the I/O of the others is waiting for.

Starting and ending terms involves callbacks and whatever the driver
waits on, so the rules ask the host for them with HOOK requests:
``_begin_term(token, expires)``, ``_end_term(why)``,
``_key_not_ours(why)``, ``_keepalive_running()`` and
``_ensure_keepalive()``.  :class:`etcdwatch.EtcdElection` (threads) and
:class:`etcdwatch.aio.AsyncEtcdElection` (asyncio) are the hosts.
"""

import os
import socket
import time
import uuid
from typing import Any, Callable, Dict, Optional

from oslo_log import log as logging

from etcdwatch.backends import base
from etcdwatch import backoff
from etcdwatch import exceptions
from etcdwatch import keys
from etcdwatch import outage
from etcdwatch.rules import requests

LOG = logging.getLogger('etcdwatch.election')


class Term(object):
    """One term of leadership.

    ``fencing_token`` is the etcd index at which it was won; it grows with
    every new term, so work tagged with it can be told from a stale
    leader's.  ``lost`` is an event set when the term ends, for any reason
    (a threading or eventlet event on the threaded election; an
    ``asyncio.Event``, to ``await term.lost.wait()``, on the asyncio one).
    """

    def __init__(self, fencing_token: int, lost_event: Any) -> None:
        self.fencing_token = fencing_token
        self.lost = lost_event

    def check(self) -> None:
        """Raise :class:`EtcdElectionLost` if the term has ended."""
        if self.lost.is_set():
            raise exceptions.EtcdElectionLost(
                'term %s has ended' % self.fencing_token)

    def __repr__(self) -> str:
        return '<Term %s%s>' % (self.fencing_token,
                                ' lost' if self.lost.is_set() else '')


def check_arguments(name: str, election_path: str, work_time: float,
                    recovery_time: float, on_elected: Any,
                    on_lost: Any) -> str:
    """Refuse bad election arguments, naming each; the normalised path."""
    keys.check_name('name', name)
    path = keys.check_path('election_path', election_path)
    keys.check_duration('work_time', work_time)
    keys.check_duration('recovery_time', recovery_time)
    for argument, value in (('on_elected', on_elected),
                            ('on_lost', on_lost)):
        if value is not None and not callable(value):
            raise ValueError('%s must be callable, not %r'
                             % (argument, value))
    return path


def check_candidate_id(candidate_id: Any) -> None:
    """Refuse a ``candidate_id`` that is not None or a non-empty str."""
    if candidate_id is None:
        return
    if not isinstance(candidate_id, str) or not candidate_id.strip() or \
            not candidate_id.isprintable():
        raise ValueError('candidate_id must be a non-empty printable str, '
                         'not %r' % (candidate_id,))


def make_id() -> str:
    """A candidate's id, ``host:pid:random``.

    host:pid tells an operator who leads; the random part keeps two
    candidates of one process apart.
    """
    return '%s:%d:%s' % (socket.gethostname(), os.getpid(),
                         uuid.uuid4().hex[:12])


class CandidateBase(object):
    """What the threaded and the asyncio elections share, without I/O.

    Arguments, identity, the :class:`Candidacy`, and what callers read
    from it.  Hosts set ``_backend`` and run the rules.
    """

    def _setup(self, etcd_client: Any, name: str, election_path: str,
               work_time: float, recovery_time: float,
               multi_worker_ok: bool, on_elected: Any,
               on_lost: Any, candidate_id: Optional[str] = None) -> None:
        self.election_path = check_arguments(
            name, election_path, work_time, recovery_time, on_elected,
            on_lost)
        check_candidate_id(candidate_id)
        self.etcd_client = etcd_client
        self.name = name
        #: This worker's id, the value it writes into the election key.
        self.thread_id = make_id() if candidate_id is None else candidate_id
        self.master_key = self.election_path + '/master_' + name
        self.on_elected = on_elected
        self.on_lost = on_lost
        # The rules and this candidate's state; subclasses run them.
        self._candidacy = Candidacy(
            name, self.master_key, self.thread_id, work_time, recovery_time,
            bool(multi_worker_ok))
        # (term, task) of the keepalive, the guard and the lease timer.
        self._keepalive: Any = (None, None)
        self._guard: Any = (None, None)
        self._timer: Any = (None, None)

    @property
    def is_elected(self) -> bool:
        """True while etcd confirmed, within the lease, that we lead.

        Never True past the local lease deadline: the monotonic time the
        last successful create or refresh was sent, plus the TTL, minus a
        margin (a quarter of the TTL, at most 1 s).  That falls before the
        key can expire on the server, so another worker can only be
        elected after this turns False.
        """
        return self._candidacy.is_elected()

    @property
    def fencing_token(self) -> Optional[int]:
        """The etcd index at which the current term was won, or None."""
        term = self._candidacy.term
        return None if term is None else term.fencing_token

    def check_in(self) -> None:
        """Show life without blocking; raise if no longer elected.

        Raises :class:`~etcdwatch.exceptions.EtcdElectionLost` if the term
        has ended (with ``multi_worker_ok``, only if etcd said the key is
        not ours).
        """
        if self._candidacy.checked_in():
            return
        raise exceptions.EtcdElectionLost('%s does not hold %s'
                                          % (self.thread_id, self.master_key))

    def stats(self) -> Dict[str, Any]:
        """Counters and state, as a new dict.

        Terms won and lost, renewals and failed renewals, time spent
        campaigning, whether elected, the term, seconds since etcd last
        answered (see :meth:`Candidacy.report`).
        """
        return self._candidacy.report()


def holder_of(state: Any) -> str:
    """Why a key read or watched is not ours any more, for logs."""
    if state is None:
        return 'the key was deleted'
    return 'the key was taken by %s' % (state.value,)


class Candidacy(object):
    """One candidate for ``key``: its state and its rules.

    :param name: for log lines.
    :param key: the election key.
    :param me: this candidate's id, the value it writes.
    :param work_time: the key's TTL, and how long showing life lasts.
    :param recovery_time: the longest wait for a vacancy, and the first
        ceiling of the backoff after an error (up to twice it).
    :param multi_worker_ok: prefer at least one worker to at most one.
    :param clock: monotonic seconds (a test may pass its own).
    """

    def __init__(self, name: str, key: str, me: str, work_time: float,
                 recovery_time: float, multi_worker_ok: bool,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.key = key
        self.me = me
        self.work_time = work_time
        self.recovery_time = recovery_time
        self.multi_worker_ok = multi_worker_ok
        self.clock = clock
        #: The current :class:`Term`, or None.
        self.term: Optional[Term] = None
        # When the last confirmed create/refresh was *sent*, plus the TTL,
        # minus a margin for etcd expiring keys early on its own clock.
        self.lease_deadline: Optional[float] = None
        self.lease_margin = min(1.0, work_time / 4.0)
        # Until when the worker has shown life; renewals only before it.
        self.alive_until = 0.0
        # The highest etcd index seen, and until when not to campaign
        # because etcd's index went back below it.
        self.seen_index: Optional[int] = None
        self.hold_until = 0.0
        # (term, owner, event set once its on_lost returned) of the term
        # that ended last.
        self.ending: Optional[Any] = None
        # True once etcd said the key is someone else's (not merely that
        # it could not be reached); cleared by a new term.
        self.refused = False
        # Whether the key may be ours: shared with the host's finalizer.
        self.held = [False]
        self.outage = outage.OutageLog(
            LOG, '%s: campaigning for %s' % (name, key))
        # Candidates that failed together (an etcd restart) must not all
        # come back together: jittered, growing to twice recovery_time.
        self.backoff = backoff.Backoff(recovery_time, 2 * recovery_time)
        #: Counters and times for stats(): see EtcdElection.stats.
        self.stats: Dict[str, Any] = {
            'terms_won': 0, 'terms_lost': 0, 'renewals': 0,
            'failed_renewals': 0, 'campaign_seconds': 0.0}
        # Monotonic time of etcd's last answer to us, or None.
        self.last_contact: Optional[float] = None

    def _ask(self, name: str, *args: Any):
        """One backend request; notes when etcd last answered."""
        return requests.ask(self, name, *args)

    # -- state ------------------------------------------------------------

    def is_elected(self) -> bool:
        """Whether etcd confirmed, within the local lease, that we lead."""
        deadline = self.lease_deadline
        return deadline is not None and self.clock() < deadline

    def show_life(self, duration: Optional[float] = None) -> None:
        """The worker is alive for ``duration`` (default work_time) more."""
        until = self.clock() + (self.work_time if duration is None
                                else duration)
        self.alive_until = max(self.alive_until, until) \
            if duration is not None else until

    def begin_term(self, token: int, expires: float,
                   make_event: Callable[[], Any]) -> Optional[Term]:
        """Etcd confirmed the key is ours until ``expires`` (monotonic).

        Returns the new :class:`Term`, or None if it is the current one.
        """
        self.lease_deadline = expires - self.lease_margin
        self.held[0] = True
        self.refused = False
        if self.term is not None and self.term.fencing_token == token:
            return None
        self.term = Term(token, make_event())
        self.stats['terms_won'] += 1
        LOG.info('%s: %s elected at index %s', self.name, self.me, token)
        return self.term

    def end_term(self, owner: Any, make_event: Callable[[], Any]):
        """Take the current term away; return ``(term or None, ending)``.

        ``ending`` is ``(term, owner, done)`` of the last term to end:
        whoever ended it (``owner``, a thread or task) sets ``done`` once
        its on_lost returned, and a second noticer waits for that.
        """
        term, self.term = self.term, None
        self.lease_deadline = None
        if term is None:
            return None, self.ending
        term.lost.set()
        self.stats['terms_lost'] += 1
        self.ending = (term, owner, make_event())
        return term, self.ending

    def log_lost(self, term: Term, why: str) -> None:
        LOG.log(20 if why == 'resigned' else 30,
                '%s: %s no longer leads (term %s): %s', self.name, self.me,
                term.fencing_token, why)

    def report(self) -> Dict[str, Any]:
        """The candidate's counters and state, as a new dict.

        terms_won, terms_lost, renewals, failed_renewals (a refresh
        refused or not answered), campaign_seconds (time spent campaigning
        in all), elected, term (the fencing token, or None),
        seconds_since_contact (since etcd last answered, or None).
        """
        result = dict(self.stats)
        result['elected'] = self.is_elected()
        result['term'] = None if self.term is None else \
            self.term.fencing_token
        result['seconds_since_contact'] = (
            None if self.last_contact is None else
            self.clock() - self.last_contact)
        return result

    def checked_in(self) -> bool:
        """Show life; whether the caller may go on working."""
        self.alive_until = self.clock() + self.work_time
        if self.is_elected():
            return True
        return self.multi_worker_ok and not self.refused

    # -- etcd going back in time ------------------------------------------

    def went_back(self, index: Optional[int]) -> bool:
        """Note an index etcd answered with; True if it went back.

        Only for the answers of one task's requests in the order it made
        them (the campaign's): answers that cross in flight prove nothing.
        """
        if index is None:
            return False
        seen = self.seen_index
        self.seen_index = index if seen is None else max(seen, index)
        if seen is None or index >= seen:
            return False
        self.rewound(exceptions.ClusterRewound(
            'etcd answered at index %d, below %d seen before' % (index, seen),
            index))
        return True

    def rewound(self, exc: exceptions.ClusterRewound) -> None:
        """etcd was wiped, restored or replaced: hold off for work_time.

        The rewound etcd no longer holds the key of whoever led before, so
        the key is free at once, while that leader still believes it leads
        until its local lease deadline, at most ``work_time`` after it last
        reached etcd.  Waiting that long before taking the key keeps terms
        from overlapping.
        """
        self.seen_index = exc.current_index
        self.hold_until = self.clock() + self.work_time
        LOG.warning('%s: %s; not campaigning for %ss, until any leader of '
                    'the etcd before has seen its term end', self.name, exc,
                    self.work_time)

    # -- the campaign -----------------------------------------------------

    def campaign(self, stopped: Callable[[], bool],
                 time_left: Optional[Callable[[], float]] = None):
        """Loop until elected (True) or ``stopped()`` (False).

        ``time_left()``, if given, bounds each wait for a vacancy (the
        caller's deadline; ``stopped()`` says when it passed).
        """
        self.alive_until = self.clock() + self.work_time
        if self.is_elected() and (yield requests.hook('_keepalive_running')):
            return True
        started = self.clock()
        try:
            return (yield from self._campaign(stopped, time_left))
        finally:
            self.stats['campaign_seconds'] += self.clock() - started

    def _campaign(self, stopped, time_left):
        while not stopped():
            try:
                remaining = self.hold_until - self.clock()
                if remaining > 0 and self.term is None:
                    yield requests.sleep(remaining)
                    continue
                won = yield from self.try_lead()
                self.outage.succeeded()
                self.backoff.succeeded()
                if won:
                    self.alive_until = self.clock() + self.work_time
                    yield requests.hook('_ensure_keepalive')
                    return True
                if stopped():
                    break
                yield from self.wait_for_vacancy(
                    self.recovery_time if time_left is None else
                    max(0.01, min(self.recovery_time, time_left())))
            except exceptions.ClusterRewound as e:
                self.rewound(e)
            except exceptions.BackendError as e:
                if self.multi_worker_ok:
                    LOG.warning('%s: etcd unreachable; working anyway '
                                '(multi_worker_ok)', self.name,
                                exc_info=True)
                    return True
                if not self.is_elected():
                    yield requests.hook('_end_term',
                                        'etcd unreachable past the lease')
                pause = self.backoff.failed()
                if isinstance(e, exceptions.EtcdUnavailable):
                    # Once per outage, not once per retry.
                    self.outage.failed(e, round(pause, 1))
                else:
                    LOG.warning('%s: election failed on an etcd error; '
                                'retrying in %.1fs', self.name, pause,
                                exc_info=True)
                yield requests.sleep(pause)
        return False

    def try_lead(self):
        """Renew our key or create it; True if we now lead."""
        if self.term is not None and (yield from self.renew(self.work_time)):
            return True
        sent = self.clock()
        index = yield from self._ask('create', self.key, self.me,
                                     self.work_time)
        if index is not None and self.went_back(index):
            # Won on an etcd that forgot its past: give the key back and
            # hold off (see rewound).
            yield from self._ask('delete_if', self.key, self.me)
            return False
        if index is not None:
            yield requests.hook('_begin_term', index, sent + self.work_time)
            return True
        # The key exists: it may still be ours from a term we had
        # forgotten (after a restart of the keepalive, say).
        return (yield from self.renew(self.work_time))

    def renew(self, ttl: float, term: Optional[Term] = None):
        """Refresh the key's TTL if it is ours; False if it is not.

        ``term``: renew for that term only (the keepalive's).  A term that
        ended while its refresh was on its way (the guard saw the key
        taken, or the lease deadline passed) is not revived by it; only a
        caller's own campaign or extend_election() takes up a key that is
        ours but belongs to no term we hold.
        """
        sent = self.clock()
        if (yield from requests.refresh(self, self.key, self.me, ttl)):
            self.held[0] = True
            if self.term is not None and (term is None or
                                          self.term is term):
                self.lease_deadline = sent + ttl - self.lease_margin
                return True
            if term is not None:
                return False
            # Ours, but from a term we did not record: take it up, unless
            # etcd went back in time (a restore can bring back our key
            # from then, while another leads now): then give it back.
            state, index = yield from self._ask('read_key', self.key)
            if self.went_back(index) or self.hold_until > self.clock():
                yield from self._ask('delete_if', self.key, self.me)
                return False
            if state is not None and state.value == self.me:
                yield requests.hook('_begin_term', state.created_index,
                                    sent + ttl)
                return True
            return False
        self.refused = True
        yield requests.hook('_end_term', 'the key is no longer ours')
        return False

    def extend(self, duration: float):
        """Renew now for ``duration``; True, or False if the key is gone.

        While etcd cannot be reached, the term is kept within the lease
        (or always, with multi_worker_ok) and ended after it.
        """
        self.show_life(duration)
        try:
            if (yield from self.renew(duration)):
                yield requests.hook('_ensure_keepalive')
                return True
        except exceptions.EtcdUnavailable:
            if self.is_elected() or self.multi_worker_ok:
                LOG.warning('%s: could not reach etcd to extend the '
                            'election; still within the lease',
                            self.name, exc_info=True)
                return True
            yield requests.hook('_end_term',
                                'etcd unreachable past the lease')
        LOG.info('%s: election lost by %s', self.name, self.me)
        return False

    def wait_for_vacancy(self, longest: Optional[float] = None):
        """Sleep until the key changes, or at most ``longest`` seconds.

        ``longest`` is recovery_time by default.
        """
        state, index = yield from self._ask('read_key', self.key)
        if self.went_back(index) or state is None:
            return
        try:
            event = yield from self._ask(
                'watch_key', self.key, index + 1,
                self.recovery_time if longest is None else longest)
        except exceptions.ClusterRewound:
            raise
        except exceptions.HistoryGone:
            return
        if event is not None:
            self.went_back(event.index)

    # -- watching who leads ------------------------------------------------

    def observe(self, stopped: Callable[[], bool]):
        """Report each new leader: a ``_observed(leader_id or None)`` HOOK.

        The current leader first, then each change as it happens, from a
        watch on the key (etcd's Election.Observe, client-go's
        OnNewLeader).  Never campaigns.  Re-reads when history is gone or
        etcd went back in time; etcd errors are retried with backoff from
        ``recovery_time`` (logged at DEBUG).  Ends when ``stopped()``.
        """
        unknown = object()
        reported: Any = unknown
        index: Optional[int] = None
        errors = backoff.Backoff(self.recovery_time, 2 * self.recovery_time)
        while not stopped():
            try:
                if index is None:
                    state, index = yield from self._ask('read_key',
                                                        self.key)
                    leader = None if state is None else state.value
                else:
                    event = yield from self._ask(
                        'watch_key', self.key, index + 1, self.recovery_time)
                    if event is None:
                        continue
                    index = event.index
                    leader = None if event.kind == base.DELETE else \
                        event.value
                errors.succeeded()
            except exceptions.HistoryGone:
                index = None        # ClusterRewound included: re-read
                continue
            except exceptions.BackendError as e:
                index = None
                pause = errors.failed()
                LOG.debug('%s: observing %s failed (%s); retrying in %.1fs',
                          self.name, self.key, e, pause)
                yield requests.sleep(pause)
                continue
            if leader != reported:
                reported = leader
                yield requests.hook('_observed', leader)

    # -- while leading ----------------------------------------------------

    def keepalive(self, term: Term):
        """Renew the key of ``term`` while its worker shows life.

        Sleeps (SLEEP requests) are meant to end early when ``term.lost``
        is set.
        """
        while not term.lost.is_set():
            interval = self.work_time / 3.0
            if self.clock() >= self.alive_until:
                # The worker has not shown life for work_time: stop
                # renewing and let the key expire, as the seed did.
                if not self.is_elected():
                    yield requests.hook('_end_term',
                                        'the worker stopped checking in')
                    return
            else:
                try:
                    yield from self.renew(self.work_time, term)
                except exceptions.BackendError:
                    if not self.is_elected() and not self.multi_worker_ok:
                        yield requests.hook(
                            '_end_term', 'etcd unreachable past the lease')
                        return
                    LOG.warning('%s: keepalive could not reach etcd; '
                                'retrying', self.name, exc_info=True)
                    interval /= 3.0
            yield requests.sleep(interval)

    def lease_timer(self, term: Term):
        """End ``term`` when its local lease deadline passes unconfirmed.

        Unless multi_worker_ok.  No I/O: a renewal sent to a member cut
        off from its cluster, or a read of the guard's, can block for the
        client's whole timeout, and on_lost must fire before the key can
        expire on the server, not after another worker was elected.
        Sleeps end early when ``term.lost`` is set.
        """
        while not term.lost.is_set():
            deadline = self.lease_deadline
            now = self.clock()
            if deadline is None or now >= deadline:
                if not self.multi_worker_ok:
                    yield requests.hook(
                        '_end_term', 'the worker stopped checking in' if
                        now >= self.alive_until else
                        'the lease ran out before etcd confirmed a renewal')
                    return
                deadline = now + self.recovery_time
            yield requests.sleep(deadline - now)

    def guard(self, term: Term):
        """End ``term`` the moment the key stops being ours.

        Watches the election key from the index the term was won at, so a
        key deleted or taken by someone else (an operator, a restore) ends
        the term within one round trip, not at the next renewal up to
        ``work_time / 3`` later.  (The lease deadline is
        :meth:`lease_timer`'s.)  Sleeps end early when ``term.lost`` is
        set.
        """
        index: Optional[int] = term.fencing_token
        while not term.lost.is_set():
            wait = self.recovery_time
            started = self.clock()
            why = None
            try:
                if index is None:
                    # Not fed to went_back: an answer that arrives after
                    # the campaign saw a newer index is not etcd going
                    # back.
                    state, index = yield from self._ask('read_key',
                                                        self.key)
                    if state is None or state.value != self.me:
                        why = holder_of(state)
                else:
                    event = yield from self._ask('watch_key', self.key,
                                                 index + 1, wait)
                    if event is None:
                        # Only a close() returns early: do not spin.
                        yield requests.sleep(
                            max(0.0, started + wait - self.clock()))
                    else:
                        index = event.index
                        if event.kind == base.DELETE or \
                                event.value != self.me:
                            why = holder_of(None if event.kind ==
                                            base.DELETE else event)
            except exceptions.ClusterRewound as e:
                index = None
                self.rewound(e)
            except exceptions.HistoryGone:
                index = None
            except exceptions.BackendError:
                # The lease timer decides; look again soon.
                yield requests.sleep(min(1.0, wait))
            if why is not None and not term.lost.is_set():
                if self.term is term:
                    yield requests.hook('_key_not_ours', why)
                return
