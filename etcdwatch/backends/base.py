"""The small interface between the recipes and an etcd client.

Everything etcdwatch does to etcd goes through these few operations, in the
library's own terms: a tree of leaf keys read at an index, changes that are
either a *put* or a *delete*, and create / refresh / delete conditioned on
who owns a key.  A backend module (``v2`` for python-etcd, ``v3`` for
etcd3gw) is the only place that knows its API's vocabulary and exceptions,
and it translates those exceptions into :mod:`etcdwatch.exceptions` here.
"""

import abc
import collections

#: A key was created or given a new value.
PUT = 'put'
#: A key, or with ``is_dir`` a whole directory, went away (deleted, expired,
#: compare-and-deleted).
DELETE = 'delete'

Event = collections.namedtuple(
    'Event', ['kind', 'key', 'value', 'index', 'is_dir', 'current_index'])
Event.__doc__ = """One change under a watched key or prefix.

``kind`` is PUT or DELETE; ``value`` is None for deletes and directories;
``index`` is the change's own index (watch again from ``index + 1``;
on v3 several events can share an index, and asking from ``index + 1``
right after one of them continues with the others);
``is_dir`` marks a directory node (a DELETE of a directory removes every key
below it); ``current_index`` is etcd's index when the watch began, or None:
for an event found in etcd's history that is the newest index, so
``current_index - index`` measures how far behind we are (for a watch that
waited, it is below ``index``).
"""

Snapshot = collections.namedtuple('Snapshot', ['index', 'items'])
Snapshot.__doc__ = """Every leaf key under a path at one index.

``items`` maps full key to value (directories are not data and never
appear); the tree is exactly as of ``index``, so a watch from ``index + 1``
misses nothing.
"""

#: Upper bound, in seconds, on :meth:`Backend.check_current`'s read (or
#: the client's own timeout, if shorter).  A quorum read takes milliseconds
#: on a healthy cluster; a member without a quorum answers only when etcd's
#: own request timeout (7 s with default flags) runs out.  Giving up sooner
#: moves a watcher off such a member sooner.
CHECK_TIMEOUT = 3.0

KeyState = collections.namedtuple(
    'KeyState', ['value', 'created_index', 'modified_index'])

QueueEntry = collections.namedtuple(
    'QueueEntry', ['key', 'value', 'created_index'])
QueueEntry.__doc__ = """One key of a queue (:meth:`Backend.read_queue`)."""

Queue = collections.namedtuple('Queue', ['index', 'entries'])
Queue.__doc__ = """The keys directly below a prefix, oldest first.

``entries`` is a list of :class:`QueueEntry`, sorted by ``created_index``;
``index`` is etcd's index of the read, so a watch of any of the keys from
``index + 1`` misses nothing.
"""


class Backend(abc.ABC):
    """What the recipes need from etcd.

    Every method raises :class:`~etcdwatch.exceptions.EtcdUnavailable` when
    etcd cannot be reached in time and
    :class:`~etcdwatch.exceptions.BackendError` for any other failure.

    ``catchup_min_lag`` and ``catchup_tree_fraction``: a watcher more than
    ``max(catchup_min_lag, tree size // catchup_tree_fraction)`` events
    behind re-reads the tree rather than walk the events, on this API
    (what each costs differs: see docs/performance.rst).
    """

    #: Defaults for a watcher's CATCHUP_MIN_LAG / CATCHUP_TREE_FRACTION.
    catchup_min_lag = 16
    catchup_tree_fraction = 64

    def __init__(self, client):
        self.client = client

    @abc.abstractmethod
    def read_tree(self, path):
        """Return a :class:`Snapshot` of every leaf key under ``path``.

        A path that does not exist is an empty tree, not an error.
        """

    @abc.abstractmethod
    def watch_tree(self, path, from_index, timeout):
        """Return the first :class:`Event` under ``path`` from an index on.

        Waits up to ``timeout`` seconds for an event at ``from_index`` or
        later.  Returns None when nothing happened in time.  Raises
        :class:`~etcdwatch.exceptions.HistoryGone` when etcd no longer holds
        the events from ``from_index`` on.  Events that share an index come
        one per call: asking from ``index + 1`` right after one of them
        continues with the next, after a :meth:`read_tree` it does not.
        """

    def watch_tree_events(self, path, from_index, timeout):
        """Like :meth:`watch_tree`, but every event at hand: a list.

        The events under ``path`` from ``from_index`` on that have arrived
        (at least one; on v3, a whole watch message of up to 1,000
        revisions), in order, ending at the end of a revision: watching
        again from the last one's ``index + 1`` misses nothing and repeats
        nothing.  None when nothing happened in ``timeout`` seconds;
        HistoryGone as :meth:`watch_tree`.  The default returns
        :meth:`watch_tree`'s one event, which suits an API with one event
        per index (v2) and any backend of the user's own.
        """
        event = self.watch_tree(path, from_index, timeout)
        return None if event is None else [event]

    @abc.abstractmethod
    def read_key(self, key):
        """Return ``(KeyState or None, current_index)`` for one key."""

    @abc.abstractmethod
    def watch_key(self, key, from_index, timeout):
        """Like :meth:`watch_tree`, for one key."""

    @abc.abstractmethod
    def create(self, key, value, ttl):
        """Create ``key`` only if it is absent, expiring after ``ttl`` s.

        Returns the index it was created at, or None if it existed.
        """

    @abc.abstractmethod
    def refresh(self, key, value, ttl):
        """Renew ``key``'s TTL if it still holds ``value``.

        Renewing must not look like a change to anyone watching the key.
        Returns True if renewed, False if the key is absent or not ours.
        """

    @abc.abstractmethod
    def delete_if(self, key, value):
        """Delete ``key`` if it still holds ``value``; True if deleted."""

    def replace(self, key, old, new, ttl):
        """Write ``new`` into ``key`` if it still holds ``old``.

        The key keeps expiring (v2: its TTL set to ``ttl`` again; v3: on
        the lease it has).  Watchers see one change of value.  Returns
        True if written, False if the key is absent or holds another
        value.  The default says the backend cannot.
        """
        raise NotImplementedError('%s cannot replace a value'
                                  % type(self).__name__)

    def create_unique(self, prefix, value, ttl):
        """Create a new key below ``prefix``, expiring after ``ttl`` s.

        The key's name is chosen by the backend, unique and never reused
        (v2: an in-order key, ``POST``; v3: ``prefix/<random id>`` on a
        lease of its own).  Returns ``(key, index)``: the key and the index
        it was created at, which orders it among the others
        (:meth:`read_queue`).  :meth:`refresh` and :meth:`delete_if` with
        ``value`` renew and delete it.
        """
        raise NotImplementedError('%s has no create_unique'
                                  % type(self).__name__)

    def read_queue(self, prefix):
        """Return a :class:`Queue` of the keys directly below ``prefix``.

        Oldest first (by creation index).  A prefix with no keys (or that
        does not exist) is an empty queue, not an error.
        """
        raise NotImplementedError('%s has no read_queue'
                                  % type(self).__name__)

    @abc.abstractmethod
    def check_current(self, path, index):
        """Prove that etcd is alive, in a quorum, and not behind ``index``.

        A watcher calls it after a watch of ``path`` saw nothing for a whole
        heartbeat: a member cut off from its cluster (or paused) can keep a
        watch open and silent forever, and a wiped or restored etcd can
        wait for an index it will not reach for a long time.

        Makes one linearizable (quorum) read, bounded by
        :data:`CHECK_TIMEOUT` (or the client's timeout, if shorter), and
        returns etcd's current index.  Raises
        :class:`~etcdwatch.exceptions.EtcdUnavailable` if the member cannot
        show a quorum in time (a client that knows other members is moved
        to the next one first), and
        :class:`~etcdwatch.exceptions.ClusterRewound` if etcd's index is
        below ``index``, or its cluster ID changed.
        """

    def close(self):
        """Release what the backend keeps open between calls.

        For a backend that keeps watch streams open (v3), this closes them;
        a watch blocked in another thread returns None at once.  Safe from
        any thread, any number of times; never raises.  The backend stays
        usable: a later call opens what it needs again.  The default does
        nothing.
        """


class AsyncBackend(abc.ABC):
    """What the asyncio recipes need from etcd: :class:`Backend`, awaited.

    Every method is a coroutine with the same arguments, return values,
    exceptions and timing as its :class:`Backend` namesake (read there);
    :meth:`aclose` is :meth:`Backend.close`.  Timeouts are seconds, as
    there, and bound the whole call.

    Cancellation: a call may be cancelled at any ``await``; the backend
    stays usable and consistent.  A cancelled watch keeps its stream and
    every event or part of a message received so far (nothing is read
    twice or lost), or closes the stream; the next call carries on from
    where the cursor stands.  A cancelled write (:meth:`create`,
    :meth:`refresh`, :meth:`delete_if`) may or may not have reached etcd,
    as with a timeout: read the key to know.

    One backend serves one event loop; it is not thread-safe.
    """

    catchup_min_lag = Backend.catchup_min_lag
    catchup_tree_fraction = Backend.catchup_tree_fraction

    def __init__(self, client):
        self.client = client

    @abc.abstractmethod
    async def read_tree(self, path):
        """A :class:`Snapshot` of every leaf key under ``path``."""

    @abc.abstractmethod
    async def watch_tree(self, path, from_index, timeout):
        """The first :class:`Event` under ``path`` from ``from_index`` on.

        None after ``timeout`` seconds without one; HistoryGone as
        :meth:`Backend.watch_tree`.
        """

    async def watch_tree_events(self, path, from_index, timeout):
        """:meth:`Backend.watch_tree_events`, awaited: a list, or None."""
        event = await self.watch_tree(path, from_index, timeout)
        return None if event is None else [event]

    @abc.abstractmethod
    async def read_key(self, key):
        """``(KeyState or None, current_index)`` for one key."""

    @abc.abstractmethod
    async def watch_key(self, key, from_index, timeout):
        """Like :meth:`watch_tree`, for one key."""

    @abc.abstractmethod
    async def create(self, key, value, ttl):
        """Create ``key`` if absent; its index, or None if it existed."""

    @abc.abstractmethod
    async def refresh(self, key, value, ttl):
        """Renew ``key``'s TTL if it still holds ``value``; True if so.

        Unseen by anyone watching the key.
        """

    async def replace(self, key, old, new, ttl):
        """:meth:`Backend.replace`, awaited."""
        raise NotImplementedError('%s cannot replace a value'
                                  % type(self).__name__)

    @abc.abstractmethod
    async def delete_if(self, key, value):
        """Delete ``key`` if it still holds ``value``; True if deleted."""

    async def create_unique(self, prefix, value, ttl):
        """A new unique key below ``prefix``: ``(key, index)``.

        As :meth:`Backend.create_unique`.
        """
        raise NotImplementedError('%s has no create_unique'
                                  % type(self).__name__)

    async def read_queue(self, prefix):
        """The :class:`Queue` below ``prefix``: :meth:`Backend.read_queue`."""
        raise NotImplementedError('%s has no read_queue'
                                  % type(self).__name__)

    @abc.abstractmethod
    async def check_current(self, path, index):
        """One quorum read within :data:`CHECK_TIMEOUT`: etcd's index.

        As :meth:`Backend.check_current`: EtcdUnavailable without a quorum
        in time, ClusterRewound below ``index`` or on a new cluster ID.
        """

    async def aclose(self):
        """Release what the backend keeps open between calls.

        As :meth:`Backend.close`: closes watch streams (a watch waiting in
        another task returns None at once), never raises, and leaves the
        backend usable.  The default does nothing.
        """
