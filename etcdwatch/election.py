"""Leader election on one etcd key with a TTL.

Workers race to create ``<election_path>/master_<name>``, holding their own
id, with a TTL of ``work_time``.  The winner works and renews the key; the
others wait on it and race again as soon as it goes.  Renewal uses etcd's
TTL-only refresh, so it never wakes the followers.
"""

import os
import socket
import time
import uuid
import weakref

from oslo_log import log as logging

from etcdwatch import backends
from etcdwatch import exceptions
from etcdwatch import handlers
from etcdwatch import keys

LOG = logging.getLogger(__name__)

EtcdElectionLost = exceptions.EtcdElectionLost

# Every live elector, so cleanup_electors() can reach them.  Weak, so that
# electors can be collected; each one's finalizer (below) releases its key
# when it is collected or when the interpreter exits, whichever is first.
_live_electors = weakref.WeakSet()


def cleanup_electors():
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
    try:
        backend.delete_if(key, value)
    except exceptions.BackendError:
        LOG.debug('could not release %s at exit', key, exc_info=True)


def _make_id():
    # host:pid tells an operator who leads; the random part keeps two
    # electors of one process apart.
    return '%s:%d:%s' % (socket.gethostname(), os.getpid(),
                         uuid.uuid4().hex[:12])


class EtcdElection(object):
    """One participant in the election of a leader of kind ``name``.

    :param etcd_client: a python-etcd ``etcd.Client`` (or a FakeEtcdClient).
    :param name: what is being led; one leader per name and election_path.
    :param election_path: the etcd directory that holds the election keys.
    :param work_time: seconds the leader may work between two calls to
        :meth:`wait_until_elected` (or :meth:`extend_election`); it is the
        key's TTL, so a leader that stops checking in loses the key within
        ``work_time`` and another worker takes over.
    :param recovery_time: the longest a follower sleeps between two looks
        at the key, in case a watch notification is lost.  A leader that
        dies is replaced within ``work_time`` plus the time etcd takes to
        expire the key (under a second); ``recovery_time`` bounds the delay
        only when the notification goes missing.
    :param multi_worker_ok: what to prefer when etcd cannot be reached.
        False (the default): *at most one* leader.  A worker only believes it
        leads after etcd confirmed it, and stops believing it once the lease
        it last confirmed has run out locally.
        True: *at least one* worker working.  When etcd cannot be reached, a
        worker goes on working (and a new one may start) even though
        another may be doing the same.
    :param handler: the concurrency handler ('threading', 'eventlet', an
        instance, or None for the default chosen from eventlet patching).

    All arguments are checked before anything is sent to etcd; bad ones
    raise ``ValueError`` naming the argument.
    """

    def __init__(self, etcd_client, name, election_path, work_time,
                 recovery_time=5, multi_worker_ok=False, handler=None):
        keys.check_name('name', name)
        self.election_path = keys.check_path('election_path', election_path)
        keys.check_duration('work_time', work_time)
        keys.check_duration('recovery_time', recovery_time)
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

        # Monotonic time after which we no longer believe we lead: when the
        # last confirmed create/refresh was *sent*, plus the TTL, minus a
        # margin for etcd expiring keys early on its own clock.
        self._lease_deadline = None
        self._lease_margin = min(1.0, work_time / 4.0)
        # Whether the key may be ours: shared with the finalizer, which
        # releases it at exit or collection without a reference to self.
        self._held = [False]
        weakref.finalize(self, _release_if_held, self._backend,
                         self.master_key, self.thread_id, self._held)
        #: The etcd index at which this worker last won the election (a
        #: fencing token: it grows with every new term), or None.
        self.fencing_token = None
        _live_electors.add(self)

    # -- what callers ask -------------------------------------------------

    @property
    def is_elected(self):
        """True while etcd confirmed, within the lease, that we lead.

        Never True past the local lease deadline, which falls before the
        key can expire on the server.
        """
        deadline = self._lease_deadline
        return deadline is not None and time.monotonic() < deadline

    def wait_until_elected(self):
        """Return once this worker leads; renew the term if it already does.

        Call it again before each piece of work that takes at most
        ``work_time``.  With ``multi_worker_ok=False`` it returns only after
        etcd confirmed the key holds our id; while etcd is unreachable it
        keeps trying every ``recovery_time``.  With ``multi_worker_ok=True``
        it also returns when etcd cannot be reached (logging a warning).
        """
        self._campaign(stop=None)

    def extend_election(self, duration):
        """Renew our term for ``duration`` seconds.

        Raises :class:`EtcdElectionLost` if the key no longer holds our id.
        If etcd cannot be reached, the term is kept while the lease we last
        confirmed still runs (or always, with ``multi_worker_ok``), and lost
        after that.
        """
        keys.check_duration('duration', duration)
        try:
            if self._renew(duration):
                return
        except exceptions.EtcdUnavailable:
            if self.is_elected or self.multi_worker_ok:
                LOG.warning('%s: could not reach etcd to extend the '
                            'election; still within the lease',
                            self.name, exc_info=True)
                return
            self._lease_deadline = None
        LOG.info('%s: election lost by %s', self.name, self.thread_id)
        raise EtcdElectionLost('%s no longer holds %s'
                               % (self.thread_id, self.master_key))

    def clean(self):
        """Give up the election key if we hold it.

        Called at process exit for every live elector, so the next leader
        need not wait for the TTL.  Idempotent and never raises for etcd
        errors.
        """
        self._lease_deadline = None
        self.fencing_token = None
        self._held[0] = False
        try:
            if self._backend.delete_if(self.master_key, self.thread_id):
                LOG.info('%s: %s resigned', self.name, self.thread_id)
        except exceptions.BackendError:
            LOG.debug('%s: could not release %s', self.name,
                      self.master_key, exc_info=True)

    # -- the campaign -----------------------------------------------------

    def _campaign(self, stop, min_remaining=None):
        """Loop until elected (True) or ``stop`` is set (False).

        With ``min_remaining``, a term with at least that many seconds of
        lease left is taken as is, without a request to etcd.
        """
        if (min_remaining is not None and
                self._lease_remaining() > min_remaining):
            return True
        while stop is None or not stop.is_set():
            try:
                if self._try_lead():
                    return True
                self._wait_for_vacancy()
            except exceptions.BackendError:
                if self.multi_worker_ok:
                    LOG.warning('%s: etcd unreachable; working anyway '
                                '(multi_worker_ok)', self.name,
                                exc_info=True)
                    return True
                self._lease_deadline = None
                LOG.warning('%s: election failed on an etcd error; retrying '
                            'in %ss', self.name, self.recovery_time,
                            exc_info=True)
                self._sleep(stop, self.recovery_time)
        return False

    def _lease_remaining(self):
        deadline = self._lease_deadline
        return 0 if deadline is None else deadline - time.monotonic()

    def _try_lead(self):
        """Renew our key or create it; True if we now lead."""
        if self.fencing_token is not None and self._renew(self.work_time):
            return True
        sent = time.monotonic()
        index = self._backend.create(self.master_key, self.thread_id,
                                     self.work_time)
        if index is not None:
            self._lease_deadline = sent + self.work_time - self._lease_margin
            self.fencing_token = index
            self._held[0] = True
            LOG.info('%s: %s elected at index %s', self.name,
                     self.thread_id, index)
            return True
        # The key exists: it may still be ours from a term we had
        # forgotten (fencing_token is None after clean()).
        return self._renew(self.work_time)

    def _renew(self, ttl):
        sent = time.monotonic()
        if self._backend.refresh(self.master_key, self.thread_id, ttl):
            self._lease_deadline = sent + ttl - self._lease_margin
            self._held[0] = True
            if self.fencing_token is None:
                state, _index = self._backend.read_key(self.master_key)
                if state is not None and state.value == self.thread_id:
                    self.fencing_token = state.created_index
            return True
        self._lease_deadline = None
        self.fencing_token = None
        self._held[0] = False
        return False

    def _wait_for_vacancy(self):
        """Sleep until the key changes, or at most recovery_time."""
        state, index = self._backend.read_key(self.master_key)
        if state is None:
            return
        try:
            self._backend.watch_key(self.master_key, index + 1,
                                    self.recovery_time)
        except exceptions.HistoryGone:
            pass

    def _sleep(self, stop, seconds):
        if stop is None:
            self._handler.sleep(seconds)
        else:
            stop.wait(seconds)
