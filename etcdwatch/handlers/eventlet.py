"""eventlet green threads.

Importing this module imports eventlet; nothing else in etcdwatch does so
unless the process has already been patched or this handler is asked for by
name (eventlet 0.41 warns on import, and OpenStack is retiring it).

The green primitives here never block the hub.  Network I/O in
python-etcd is green only once the process has been monkey-patched (at
least ``socket``): in an unpatched process a watch blocks every green
thread until its socket timeout, which is why :func:`etcdwatch.handlers.
default_handler` picks this handler only for patched processes.
"""

import eventlet
from eventlet.green import threading as green_threading
import eventlet.semaphore

from etcdwatch.handlers import base


class _GreenTask(base.Task):
    def __init__(self, greenthread):
        self._gt = greenthread
        self._done = green_threading.Event()
        greenthread.link(lambda _gt: self._done.set())

    def join(self, timeout=None):
        return self._done.wait(timeout)

    def is_alive(self):
        return not self._done.is_set()


class EventletHandler(base.Handler):
    """Runs recipes on eventlet green threads."""

    name = 'eventlet'

    def spawn(self, func, *args, **kwargs):
        return _GreenTask(eventlet.spawn(func, *args, **kwargs))

    def sleep(self, seconds):
        eventlet.sleep(seconds)

    def event(self):
        return green_threading.Event()

    def lock(self):
        return eventlet.semaphore.Semaphore()

    def rlock(self):
        return green_threading.RLock()

    def condition(self, lock=None):
        return green_threading.Condition(lock)
