"""Plain OS threads: the default handler."""

import threading
import time

from etcdwatch.handlers import base


class _ThreadTask(base.Task):
    def __init__(self, thread):
        self._thread = thread

    def join(self, timeout=None):
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def is_alive(self):
        return self._thread.is_alive()


class ThreadingHandler(base.Handler):
    """Runs recipes on ``threading`` threads.

    In a process that ``eventlet.monkey_patch()`` has patched these are green
    threads already, so this handler is correct there too; the eventlet
    handler is picked by default in that case only to make the choice
    explicit in logs and ``repr``.
    """

    name = 'threading'

    def spawn(self, func, *args, **kwargs):
        thread = threading.Thread(target=func, args=args, kwargs=kwargs,
                                  name='etcdwatch-%s' % getattr(
                                      func, '__name__', 'task'))
        thread.daemon = True
        thread.start()
        return _ThreadTask(thread)

    def sleep(self, seconds):
        time.sleep(seconds)

    def event(self):
        return threading.Event()

    def lock(self):
        return threading.Lock()

    def rlock(self):
        return threading.RLock()

    def condition(self, lock=None):
        return threading.Condition(lock)
