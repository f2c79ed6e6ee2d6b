"""What a rule can ask of the code that drives it.

A rule is a generator.  It yields a :class:`Request` and is sent the
answer; an error raised while serving the request is thrown into it
instead.  Four kinds:

``BACKEND``
    call ``backend.<name>(*args)`` (a :class:`~etcdwatch.backends.base.
    Backend` operation); an async driver awaits the
    :class:`~etcdwatch.backends.base.AsyncBackend` one.
``CALLBACK``
    call ``host.<name>(*args)``, a hook of the recipe object that runs the
    rule (``do_work``, ``key_change``...); an async driver awaits what it
    returns if that is awaitable.  The driver may decline to start it
    (the recipe is stopping): it then answers :data:`NOT_RUN`.
``HOOK``
    call ``host.<name>(*args)`` as CALLBACK does, but never declined
    (``init_resync_start``, asked before the first read).
``EACH``
    call ``host.<name>(*item)`` for each of ``args[0]``'s items in turn,
    as CALLBACK requests would be (and declined as they would be), and
    also stop before an item once ``args[1]()`` is false; call
    ``args[2]()`` as soon as an item's call returned (so what ran is
    recorded even if the driver is cancelled, or a callback raises a
    BaseException, later in the run); stop at the first that raises.
    The answer is ``(ran, error)``: how many returned, and what the next
    one raised, or None (the rest were declined, or there is no rest).
    One request for a run of callbacks, so a watch message of 1,000
    events is not 1,000 trips through the driver.
``SLEEP``
    wait ``args[0]`` seconds, or less if the recipe is asked to stop;
    the answer is True if it was.
"""

import collections

from etcdwatch import exceptions

BACKEND = 'backend'
CALLBACK = 'callback'
HOOK = 'hook'
EACH = 'each'
SLEEP = 'sleep'

Request = collections.namedtuple('Request', ['kind', 'name', 'args'])
# Made without the namedtuple's Python-level __new__: twice per watch
# message.
_request = tuple.__new__

#: The answer to a CALLBACK request that the driver declined to start.
NOT_RUN = type('NotRun', (), {'__repr__': lambda self: 'NOT_RUN'})()


def backend(name, *args):
    """Ask for one backend operation."""
    return _request(Request, (BACKEND, name, args))


def callback(name, *args):
    """Ask for one call of a hook of the recipe object."""
    return _request(Request, (CALLBACK, name, args))


def hook(name, *args):
    """Ask for one call of a hook that runs even while stopping."""
    return _request(Request, (HOOK, name, args))


def each(name, items, proceed, done):
    """Ask for ``host.<name>(*item)`` for each of ``items``, in order.

    ``proceed()`` is asked before each, ``done()`` called after each that
    returned; the answer is ``(ran, error)``.
    """
    return _request(Request, (EACH, name, (items, proceed, done)))


def run_each(call, items, proceed, done, stopped):
    """Serve an EACH request by calling ``call(*item)`` per item.

    ``stopped()`` and ``proceed()`` are asked before each item, ``done()``
    called after each.  Returns ``(ran, error)``, as the request's
    answer.  The threaded driver's way (the asyncio one awaits each call).
    """
    ran = 0
    try:
        for item in items:
            if stopped() or not proceed():
                break
            call(*item)
            ran += 1
            done()
    except Exception as e:
        return ran, e
    return ran, None


def sleep(seconds):
    """Ask for a pause that a stop cuts short."""
    return Request(SLEEP, None, (seconds,))


def advance(rule, answer, error=None):
    """Give ``rule`` the answer to its last request (or throw ``error``).

    Returns ``(True, what it returned)`` when it ended, else
    ``(False, its next request)``.  The asyncio driver calls this; the
    threaded one does the same inline (twice per watch message).
    """
    try:
        if error is not None:
            return False, rule.throw(error)
        return False, rule.send(answer)
    except StopIteration as done:
        return True, done.value


def ask(owner, name, *args):
    """One backend request, noting when etcd last answered (a rule).

    ``yield from ask(owner, ...)`` sets ``owner.last_contact`` to
    ``owner.clock()`` on any answer from etcd, an error from etcd (history
    gone, a refusal) included, but not when etcd could not be reached.
    """
    try:
        answer = yield backend(name, *args)
    except exceptions.EtcdUnavailable:
        raise
    except exceptions.BackendError:
        owner.last_contact = owner.clock()
        raise
    owner.last_contact = owner.clock()
    return answer


def refresh(owner, key, value, ttl):
    """Renew ``key`` if it holds ``value`` (a rule, through :func:`ask`).

    Counts ``owner.stats['renewals']`` when it was renewed and
    ``['failed_renewals']`` when it was not or etcd failed (the error
    propagates).  Returns whether it was renewed.
    """
    try:
        renewed = yield from ask(owner, 'refresh', key, value, ttl)
    except exceptions.BackendError:
        owner.stats['failed_renewals'] += 1
        raise
    owner.stats['renewals' if renewed else 'failed_renewals'] += 1
    return renewed
