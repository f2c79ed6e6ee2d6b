"""Run a rule (:mod:`etcdwatch.rules`) in a coroutine.

The asyncio half of the rules' contract (the threaded half is
:mod:`etcdwatch.driving`): backend requests are awaited on an
:class:`~etcdwatch.backends.base.AsyncBackend`, callbacks are called and
awaited if they return an awaitable (``async def`` hooks and plain ones
both work), sleeps are awaited.  No lock is held across an ``await``:
one watcher's rules and callbacks run on its own task, one at a time.
"""

import asyncio
import inspect
from typing import Any, Awaitable, Callable, Optional

from etcdwatch.rules import requests


async def maybe_await(result: Any) -> Any:
    """``result``, awaited if it is awaitable (an ``async def`` hook's)."""
    if inspect.isawaitable(result):
        return await result
    return result


def sleep_until(event: Any) -> Callable[[float], Awaitable[bool]]:
    """A SLEEP server that ends early when ``event`` is set.

    It answers whether the event is set.
    """
    async def sleep(seconds: float) -> bool:
        try:
            await asyncio.wait_for(event.wait(), seconds)
        except asyncio.TimeoutError:
            pass
        return event.is_set()
    return sleep


async def drive(rule: Any, backend: Any, host: Any,
                run_callback: Optional[
                    Callable[[str, tuple], Awaitable[Any]]] = None,
                sleep: Optional[Callable[[float], Awaitable[bool]]] = None,
                ) -> Any:
    """Run ``rule`` to its end; return what it returns.

    The parameters are :func:`etcdwatch.driving.drive`'s, awaited; an
    EACH request's items are served one at a time as CALLBACK requests
    (one declined ends the run).
    Cancelling the coroutine cancels the request in progress; the rule is
    then closed where it stood.
    """
    answer: Any = None
    error: Optional[Exception] = None
    while True:
        done, ask = requests.advance(rule, answer, error)
        if done:
            return ask
        answer, error = None, None
        try:
            if ask.kind == requests.BACKEND:
                answer = await getattr(backend, ask.name)(*ask.args)
            elif ask.kind == requests.SLEEP:
                assert sleep is not None, 'this rule cannot sleep here'
                answer = await sleep(*ask.args)
            elif ask.kind == requests.EACH:
                answer = await _each(host, ask, run_callback)
            elif ask.kind == requests.CALLBACK and run_callback:
                answer = await run_callback(ask.name, ask.args)
            else:
                answer = await maybe_await(
                    getattr(host, ask.name)(*ask.args))
        except Exception as e:
            error = e


async def _each(host, ask, run_callback):
    """Serve an EACH request: ``(ran, error)``."""
    items, proceed, done = ask.args
    ran = 0
    try:
        for item in items:
            if not proceed():
                break
            if run_callback:
                answer = await run_callback(ask.name, item)
                if answer is requests.NOT_RUN:
                    break
            else:
                await maybe_await(getattr(host, ask.name)(*item))
            ran += 1
            # Recorded now: a cancellation at the next await must not
            # leave this one to run again.
            done()
    except Exception as e:
        return ran, e
    return ran, None
