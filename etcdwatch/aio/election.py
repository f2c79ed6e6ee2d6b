"""Leader election on one etcd key, on asyncio.

:class:`AsyncEtcdElection` keeps :class:`etcdwatch.EtcdElection`'s
semantics (the same rules, :mod:`etcdwatch.rules.candidacy`, run it): the
same key, value and lease, so threaded and asyncio candidates of one
election take turns; a leader believes it leads only until its local
lease deadline; a keepalive renews the lease while the worker shows life;
a guard ends the term the moment the key is deleted or taken.
"""

import asyncio
import contextlib
from typing import Any, AsyncIterator, Callable, Optional

from oslo_log import log as logging

from etcdwatch.aio import driving
from etcdwatch import backends
from etcdwatch import exceptions
from etcdwatch import keys
from etcdwatch import registry
from etcdwatch.rules import candidacy

LOG = logging.getLogger(__name__)

Term = candidacy.Term


class AsyncEtcdElection(candidacy.CandidateBase):
    """One participant in the election of a leader of kind ``name``.

    ``name``, ``election_path``, ``work_time``, ``recovery_time``,
    ``multi_worker_ok`` and ``candidate_id`` are
    :class:`etcdwatch.EtcdElection`'s.

    :param etcd_client: an :class:`etcdwatch.aio.AsyncEtcd3Client` (or an
        :class:`~etcdwatch.backends.base.AsyncBackend`).
    :param on_elected: called with the new :class:`Term` when this worker
        wins a term; a plain function or a coroutine function.
    :param on_lost: called with the ended term when a term ends for any
        reason (lost, expired, resigned); plain or coroutine function.

    The constructor does no I/O.  Terms carry an ``asyncio.Event``
    ``lost``: ``await term.lost.wait()``.  One event loop.
    """

    # The longest a task that noticed a loss second waits for the on_lost
    # that the first is running.
    _CALLBACK_WAIT = 10.0

    def __init__(self, etcd_client: Any, name: str, election_path: str,
                 work_time: float, recovery_time: float = 5,
                 multi_worker_ok: bool = False,
                 on_elected: Optional[Callable[[Term], Any]] = None,
                 on_lost: Optional[Callable[[Term], Any]] = None,
                 candidate_id: Optional[str] = None) -> None:
        self._setup(etcd_client, name, election_path, work_time,
                    recovery_time, multi_worker_ok, on_elected, on_lost,
                    candidate_id)
        self._backend = backends.for_async_client(etcd_client)
        registry.add_election(self)    # for etcdwatch.metrics

    # -- what callers ask -------------------------------------------------

    @property
    def term(self) -> Optional[Term]:
        """The current :class:`Term`, or None."""
        return self._candidacy.term

    async def campaign(self, timeout: Optional[float] = None) -> bool:
        """Return True once this worker leads, False after ``timeout`` s.

        Counts as showing life.  While etcd is unreachable it keeps trying
        (``multi_worker_ok=True``: returns True, logging a warning).
        Cancelled, or out of time, it withdraws: a key it may have just
        created is deleted, so it never leads later unless asked again.
        """
        if timeout is not None:
            keys.check_duration('timeout', timeout)
        try:
            async with asyncio.timeout(timeout):
                return await self._drive(
                    self._candidacy.campaign(lambda: False),
                    driving.sleep_until(asyncio.Event()))
        except TimeoutError:
            await asyncio.shield(self._withdraw())
            return False
        except asyncio.CancelledError:
            await asyncio.shield(self._withdraw())
            raise

    async def extend_election(self, duration: float) -> None:
        """Renew our term now for ``duration`` s (see the threaded one)."""
        keys.check_duration('duration', duration)
        if await self._drive(self._candidacy.extend(duration)):
            return
        raise exceptions.EtcdElectionLost('%s no longer holds %s'
                                          % (self.thread_id, self.master_key))

    async def leader(self) -> Optional[str]:
        """The id of the current leader, or None; never campaigns."""
        state, _index = await self._backend.read_key(self.master_key)
        return None if state is None else state.value

    async def leaders(self) -> AsyncIterator[Optional[str]]:
        """Yield the current leader's id (or None), then each new one.

        From a watch on the key (it never campaigns), in a task of its
        own; leaving the ``async for`` stops it.
        """
        changes: 'asyncio.Queue[Optional[str]]' = asyncio.Queue()
        stop = asyncio.Event()
        host = _Observing(changes.put_nowait)
        task = asyncio.ensure_future(driving.drive(
            self._candidacy.observe(stop.is_set), self._backend, host,
            sleep=driving.sleep_until(stop)))
        try:
            while True:
                getting = asyncio.ensure_future(changes.get())
                await asyncio.wait([getting, task],
                                   return_when=asyncio.FIRST_COMPLETED)
                if not getting.done():
                    getting.cancel()
                    task.result()       # it failed: say why
                yield getting.result()
        finally:
            stop.set()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def resign(self) -> None:
        """Give up leadership now: delete the key if it is ours.

        A follower waiting on the key takes over at once.  Idempotent;
        never raises for etcd errors (the key then expires by its TTL).
        """
        await self._end_term('resigned')
        self._candidacy.held[0] = False
        try:
            if await self._backend.delete_if(self.master_key,
                                             self.thread_id):
                LOG.info('%s: %s resigned', self.name, self.thread_id)
        except exceptions.BackendError:
            LOG.warning('%s: could not delete %s; it will expire',
                        self.name, self.master_key, exc_info=True)

    async def aclose(self) -> None:
        """Resign, and end the keepalive and the guard."""
        await self.resign()
        for _term, task in (self._keepalive, self._guard, self._timer):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self._backend.aclose()

    @contextlib.asynccontextmanager
    async def leadership(self, timeout: Optional[float] = None
                         ) -> AsyncIterator[Optional[Term]]:
        """Campaign, then run the ``async with`` body as leader.

        Yields the :class:`Term`.  Leaving the body (normally, by an
        exception, or because its task was cancelled) resigns, once the
        body has unwound, never before.  With ``timeout``, raises
        ``TimeoutError`` if not elected in time.
        """
        if not await self.campaign(timeout):
            raise TimeoutError('not elected %s within %ss'
                               % (self.name, timeout))
        term = self.term
        try:
            yield term
        finally:
            await asyncio.shield(self.resign())

    # -- running the rules -------------------------------------------------

    async def _campaign(self, stop: asyncio.Event) -> bool:
        """Campaign until elected (True) or ``stop`` is set (False)."""
        return await self._drive(self._candidacy.campaign(stop.is_set),
                                 driving.sleep_until(stop))

    async def _drive(self, rule, sleep=None):
        return await driving.drive(rule, self._backend, self, sleep=sleep)

    async def _withdraw(self):
        """A campaign was cut short: leave no key and no term behind."""
        if self.term is not None:
            await self.resign()
            return
        try:
            await self._backend.delete_if(self.master_key, self.thread_id)
        except exceptions.BackendError:
            LOG.warning('%s: could not withdraw from %s; a key created '
                        'just now will expire', self.name, self.master_key,
                        exc_info=True)

    # -- what the rules ask (HOOK requests) --------------------------------

    async def _begin_term(self, token, expires):
        term = self._candidacy.begin_term(token, expires, asyncio.Event)
        if term is not None:
            await self._callback(self.on_elected, term)

    async def _end_term(self, why):
        """End the current term, if any; on_lost has run when this returns.

        As on threads: a task that notices a loss second waits (bounded)
        for the first's on_lost.
        """
        me = asyncio.current_task()
        term, ended = self._candidacy.end_term(me, asyncio.Event)
        if term is None:
            if ended is not None and ended[1] is not me:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(ended[2].wait(),
                                           self._CALLBACK_WAIT)
            return
        try:
            self._candidacy.log_lost(term, why)
            await self._callback(self.on_lost, term)
        finally:
            ended[2].set()

    async def _key_not_ours(self, why):
        self._candidacy.refused = True
        await self._end_term(why)

    async def _callback(self, func, term):
        if func is None:
            return
        try:
            await driving.maybe_await(func(term))
        except Exception:
            LOG.exception('%s: election callback %r failed', self.name, func)

    def _keepalive_running(self):
        term = self.term
        return term is not None and all(
            task is not None and task_term is term and not task.done()
            for task_term, task in (self._keepalive, self._guard,
                                    self._timer))

    def _ensure_keepalive(self):
        term = self.term
        if term is None:
            return
        for attribute, rule in (('_keepalive', self._candidacy.keepalive),
                                ('_guard', self._candidacy.guard),
                                ('_timer', self._candidacy.lease_timer)):
            task_term, task = getattr(self, attribute)
            if task_term is not term or task is None or task.done():
                setattr(self, attribute, (term, asyncio.ensure_future(
                    self._while_leading(rule(term), term))))

    async def _while_leading(self, rule, term):
        """Run the keepalive, guard or timer; its sleeps end with the term."""
        try:
            await self._drive(rule, driving.sleep_until(term.lost))
        except Exception:
            # A bug, not etcd (the rules handle etcd's errors): the
            # deadline still ends the term, and the next campaign restarts
            # the task.
            LOG.exception('%s: keepalive, guard or lease timer failed',
                          self.name)


class _Observing(object):
    """The host of an observation: hands each leader to ``report``."""

    def __init__(self, report: Callable[[Optional[str]], Any]) -> None:
        self._observed = report
