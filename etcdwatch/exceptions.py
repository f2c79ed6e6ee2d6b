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


class EtcdAuthError(BackendError):
    """etcd refused our credentials: a wrong user or password.

    Raised by the v3 backends (etcd's v3 authentication); an expired token
    is no such error (it is renewed and the request retried once).  Not
    worth retrying soon: a watcher or an election backs off as for any
    BackendError, up to its longest pause.  Names the user and the
    operation (and so the key), never the password.
    """

    def __init__(self, what, reason, user=None):
        super(EtcdAuthError, self).__init__(what, reason)
        #: The operation and key, such as ``'watch /a'``.
        self.what = what
        #: etcd's message.
        self.reason = reason
        #: The user the client authenticates as (None: none).
        self.user = user

    def _who(self):
        if self.user is None:
            return 'an anonymous client (no username given)'
        return 'user %s' % self.user

    def __str__(self):
        return '%s: etcd refused %s: %s' % (self.what, self._who(),
                                            self.reason)


class EtcdPermissionDenied(EtcdAuthError):
    """The user's roles do not cover the key (etcd: permission denied)."""

    def __str__(self):
        return ('%s: permission denied for %s (its roles do not cover this '
                'key): %s' % (self.what, self._who(), self.reason))
