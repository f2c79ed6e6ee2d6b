"""Pick the concurrency handler recipes run on.

``default_handler()`` returns the eventlet handler only when eventlet is
already imported *and* has monkey-patched the process (the usual OpenStack
agent); otherwise plain threads.  ``get_handler('eventlet')`` asks for it by
name, and ``get_handler(None)`` means the default.

eventlet is not a dependency of etcdwatch: it comes with the ``eventlet``
extra (``pip install '.[eventlet]'``), or with the service that patches.
"""

import sys

from etcdwatch.handlers.base import Handler  # noqa: F401
from etcdwatch.handlers.base import Task  # noqa: F401

_NAMES = ('threading', 'eventlet')
_instances: 'dict[str, Handler]' = {}


def eventlet_patched():
    """True if eventlet has monkey-patched threads or sockets here.

    Never imports eventlet itself.
    """
    eventlet_mod = sys.modules.get('eventlet')
    if eventlet_mod is None:
        return False
    patcher = sys.modules.get('eventlet.patcher')
    if patcher is None:
        return False
    return bool(patcher.is_monkey_patched('thread') or
                patcher.is_monkey_patched('socket'))


def get_handler(handler=None):
    """Return a :class:`Handler` for ``handler``.

    ``handler`` may be a Handler instance (returned as is), a name
    ('threading' or 'eventlet'), or None for :func:`default_handler`.
    """
    if isinstance(handler, Handler):
        return handler
    if handler is None:
        return default_handler()
    if handler not in _NAMES:
        raise ValueError("handler must be one of %s or a Handler instance, "
                         "not %r" % (', '.join(_NAMES), handler))
    if handler not in _instances:
        if handler == 'eventlet':
            try:
                from etcdwatch.handlers import eventlet as mod
            except ImportError as e:
                if e.name != 'eventlet':
                    raise
                raise ImportError(
                    "handler='eventlet' needs eventlet, which etcdwatch "
                    "installs only with its eventlet extra "
                    "(pip install '.[eventlet]' from a clone, or pip "
                    "install eventlet)", name='eventlet') from e
            _instances[handler] = mod.EventletHandler()
        else:
            from etcdwatch.handlers import threading as mod
            _instances[handler] = mod.ThreadingHandler()
    return _instances[handler]


def default_handler():
    """The eventlet handler in a patched process, plain threads otherwise."""
    return get_handler('eventlet' if eventlet_patched() else 'threading')
