"""Errors etcdwatch raises, in the library's own terms.

Backends translate their client's exceptions into these at one boundary
(``raise ... from`` keeps the original as ``__cause__``), so recipes never
catch a python-etcd or etcd3gw class.
"""


class EtcdWatchError(Exception):
    """Base class of every error etcdwatch raises on its own account."""


class EtcdElectionLost(EtcdWatchError):
    """This worker does not (or no longer) hold the election key."""


class BackendError(EtcdWatchError):
    """etcd answered, but not in a way the operation can use."""


class EtcdUnavailable(BackendError):
    """etcd could not be reached, or did not answer in time."""


class HistoryGone(BackendError):
    """etcd no longer holds the events from the requested index on.

    Raised by a backend's watch; the watcher answers with a full re-read.
    """

    def __init__(self, message=None, current_index=None):
        super(HistoryGone, self).__init__(message or 'history gone')
        #: etcd's index when it said so, if it told us.
        self.current_index = current_index


class ClusterRewound(HistoryGone):
    """etcd went back below an index we saw, or is another cluster.

    The data was wiped, or restored from an older snapshot, on the same
    address, or the client now talks to a different cluster.  Every index
    known from before means nothing there: a watcher re-reads the whole
    tree (it is a :class:`HistoryGone`), so keys the new etcd lacks are
    reported deleted and restored values changed.
    """
