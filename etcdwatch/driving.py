"""Run a rule (:mod:`etcdwatch.rules`) on the calling thread.

The threaded recipes' half of the rules' contract: backend requests are
made with the calling thread blocked on them, callbacks are called, and
sleeps wait on the recipe's stop event.  The asyncio half is
:mod:`etcdwatch.aio.driving`.
"""

import contextlib
from typing import Any, Callable, Generator, Optional

from etcdwatch.rules import requests

Rule = Generator[requests.Request, Any, Any]


def drive(rule: Rule, backend: Any, host: Any,
          lock: Any = None, hooks_locked: bool = True,
          run_callback: Optional[Callable[[str, tuple], Any]] = None,
          sleep: Optional[Callable[[float], bool]] = None,
          run_each: Optional[Callable[[str, Any, Any], Any]] = None) -> Any:
    """Run ``rule`` to its end; return what it returns.

    :param backend: serves BACKEND requests.
    :param host: serves HOOK requests (and CALLBACK ones, without
        ``run_callback``).
    :param lock: held while the rule's own code and its callbacks run,
        never across a backend request or a sleep (so a caller that takes
        the lock waits for a callback, not for etcd).
    :param hooks_locked: whether HOOK and CALLBACK requests are served
        with ``lock`` held (a watcher's callbacks are; an election's
        on_elected / on_lost are not).
    :param run_callback: ``(name, args) -> answer`` for CALLBACK requests;
        may answer :data:`~etcdwatch.rules.requests.NOT_RUN`.
    :param sleep: ``seconds -> stopped`` for SLEEP requests.
    :param run_each: ``(name, items, proceed, done) -> (ran, error)`` for
        EACH requests; without it, each item is served as a CALLBACK request
        (one declined ends the run).

    An exception raised while serving a request is thrown into the rule;
    one the rule does not handle propagates from here.
    """
    guard = lock if lock is not None else contextlib.nullcontext()
    answer: Any = None
    error: Optional[Exception] = None
    send, throw = rule.send, rule.throw
    while True:
        with guard:
            while True:
                # requests.advance, inline: twice per watch message.
                try:
                    ask = send(answer) if error is None else throw(error)
                except StopIteration as end:
                    return end.value
                answer, error = None, None
                if ask.kind in (requests.BACKEND, requests.SLEEP) or (
                        not hooks_locked):
                    break
                try:
                    if ask.kind == requests.EACH and run_each:
                        # _call's first case, inline: once per message.
                        answer = run_each(ask.name, *ask.args)
                    else:
                        answer = _call(host, ask, run_callback, run_each)
                except Exception as e:
                    error = e
        try:
            if ask.kind == requests.BACKEND:
                answer = getattr(backend, ask.name)(*ask.args)
            elif ask.kind == requests.SLEEP:
                assert sleep is not None, 'this rule cannot sleep here'
                answer = sleep(*ask.args)
            else:
                answer = _call(host, ask, run_callback, run_each)
        except Exception as e:
            error = e


def _call(host, ask, run_callback, run_each=None):
    if ask.kind == requests.EACH:
        if run_each:
            return run_each(ask.name, *ask.args)
        return _each(host, ask, run_callback)
    if ask.kind == requests.CALLBACK and run_callback:
        return run_callback(ask.name, ask.args)
    return getattr(host, ask.name)(*ask.args)


def _each(host, ask, run_callback):
    items, proceed, done = ask.args
    declined = []

    def call(*item):
        if _call(host, requests.callback(ask.name, *item),
                 run_callback) is requests.NOT_RUN:
            declined.append(item)

    def done_unless_declined():
        if not declined:
            done()

    def stopped():
        return bool(declined)
    ran, error = requests.run_each(call, items, proceed,
                                   done_unless_declined, stopped)
    return ran - len(declined), error
