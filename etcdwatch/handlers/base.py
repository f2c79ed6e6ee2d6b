"""The concurrency contract every recipe in etcdwatch is written against.

Elections, watchers and the fake etcd never touch ``threading`` or
``eventlet`` directly: they ask a handler for a lock, an event, a sleep or a
new background task.  Two handlers exist, :mod:`etcdwatch.handlers.threading`
(the default) and :mod:`etcdwatch.handlers.eventlet`; they differ only in
where those primitives come from.
"""

import abc


class Task(abc.ABC):
    """A running background task (thread or green thread)."""

    @abc.abstractmethod
    def join(self, timeout=None):
        """Wait up to ``timeout`` seconds for the task to end.

        Returns True if it ended.
        """

    @abc.abstractmethod
    def is_alive(self):
        """True while the task is still running."""


class Handler(abc.ABC):
    """Concurrency primitives for one execution model.

    Every method must be safe to call from any task of that model.  Timed
    waits use the model's own clock-aware primitives; nothing here relies on
    ``eventlet.Timeout`` interrupting a socket it does not own.
    """

    #: Short name, as accepted by :func:`etcdwatch.handlers.get_handler`.
    name = ''

    @abc.abstractmethod
    def spawn(self, func, *args, **kwargs):
        """Run ``func(*args, **kwargs)`` in a new background task.

        The task never keeps the process alive on its own (daemon).
        Returns a :class:`Task`.
        """

    @abc.abstractmethod
    def sleep(self, seconds):
        """Sleep without stalling other tasks of this model."""

    @abc.abstractmethod
    def event(self):
        """A new ``threading.Event``-like object (set/clear/is_set/wait)."""

    @abc.abstractmethod
    def lock(self):
        """A new non-reentrant lock (a context manager)."""

    @abc.abstractmethod
    def rlock(self):
        """A new reentrant lock (a context manager)."""

    @abc.abstractmethod
    def condition(self, lock=None):
        """A new ``threading.Condition``-like object over ``lock``."""

    def __repr__(self):
        return '<%s handler>' % self.name
