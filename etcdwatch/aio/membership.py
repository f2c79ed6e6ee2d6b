"""Group membership on an event loop: the threaded recipe's rules, awaited.

:class:`AsyncEtcdMembership` runs :mod:`etcdwatch.rules.membership` (the
rules :class:`etcdwatch.membership.EtcdMembership` runs on threads) as a
task, over an :class:`~etcdwatch.aio.AsyncEtcd3Client`.
"""

import asyncio
from typing import Any, Dict, Optional

from oslo_log import log as logging

from etcdwatch.aio import driving
from etcdwatch import backends
from etcdwatch.backends import base
from etcdwatch import exceptions
from etcdwatch.rules import membership as rules

LOG = logging.getLogger(__name__)


class AsyncEtcdMembership(object):
    """One member of a group, announced by a key that lives with it.

    ``group_path``, ``member_id``, ``value``, ``ttl`` and ``max_silence``
    are :class:`etcdwatch.membership.EtcdMembership`'s (life is shown by
    ``await show_life()``, :meth:`update` and :meth:`start`), and so are the
    guarantees and timing (refresh every ``ttl / 3``, re-created when
    gone, backoff on errors), once started.

    :param etcd_client: an :class:`etcdwatch.aio.AsyncEtcd3Client` (or an
        :class:`~etcdwatch.backends.base.AsyncBackend`).

    The constructor does no I/O: ``await start()`` (or ``async with``)
    registers and starts the keepalive task; ``await aclose()`` ends it
    and deletes the key.  One event loop.  Nothing deletes the key at
    interpreter exit: close it (a killed process's key expires within
    ``ttl``).
    """

    def __init__(self, etcd_client: Any, group_path: str, member_id: str,
                 value: str, ttl: float,
                 max_silence: Optional[float] = None) -> None:
        key = rules.check_arguments(group_path, member_id, value, ttl,
                                    max_silence)
        self._backend = backends.for_async_client(etcd_client)
        self.etcd_client = etcd_client
        self.group_path = key.rsplit('/', 1)[0]
        self.member_id = member_id
        #: The member's key.
        self.key = key
        self._rules = rules.Membership(
            key, value, ttl,
            can_replace=(type(self._backend).replace is not
                         base.AsyncBackend.replace),
            max_silence=max_silence)
        self._stop = asyncio.Event()
        # Held for a whole round of the rules, never across the
        # keepalive's sleeps (see etcdwatch.membership).
        self._step = asyncio.Lock()
        self._task: Optional['asyncio.Task[Any]'] = None
        self._closed = False

    @property
    def value(self) -> str:
        return self._rules.value

    @property
    def is_registered(self) -> bool:
        """Whether etcd confirmed, within the TTL, that the key is ours.

        As :attr:`EtcdMembership.is_registered
        <etcdwatch.membership.EtcdMembership.is_registered>`.
        """
        return self._rules.is_registered()

    def stats(self) -> Dict[str, Any]:
        """Counters and state, as a new dict.

        As :meth:`EtcdMembership.stats
        <etcdwatch.membership.EtcdMembership.stats>`.
        """
        return self._rules.report()

    async def start(self) -> 'AsyncEtcdMembership':
        """Register now (errors logged), then keep alive in a task."""
        if self._task is not None or self._closed:
            raise RuntimeError('member %s: start() was called already'
                               % self.key)
        first_wait = self._rules.ttl / 3.0
        self._rules.show_life()
        async with self._step:
            try:
                await self._drive(self._rules.sync())
            except exceptions.EtcdUnavailable as e:
                first_wait = self._rules.backoff.failed()
                self._rules.outage.failed(e, round(first_wait, 1))
            except exceptions.BackendError:
                first_wait = self._rules.backoff.failed()
                LOG.warning('member %s: could not register; retrying in '
                            '%.1fs', self.key, first_wait, exc_info=True)
        self._task = asyncio.ensure_future(self._keepalive(first_wait))
        return self

    async def show_life(self) -> bool:
        """Show life (see ``max_silence``); True while registered.

        As :meth:`EtcdMembership.show_life
        <etcdwatch.membership.EtcdMembership.show_life>`, awaited.
        """
        self._rules.show_life()
        if self._rules.is_registered():
            return True
        async with self._step:
            if self._closed:
                raise RuntimeError('member %s: show_life() after aclose()'
                                   % self.key)
            try:
                return bool(await self._drive(self._rules.sync()))
            except exceptions.BackendError:
                LOG.warning('member %s: could not register again; the '
                            'keepalive retries', self.key, exc_info=True)
                return False

    async def update(self, value: str) -> bool:
        """Hold ``value`` from now on; write it now.

        As :meth:`EtcdMembership.update
        <etcdwatch.membership.EtcdMembership.update>`, awaited.
        """
        rules.check_value('value', value)
        async with self._step:
            if self._closed:
                raise RuntimeError('member %s: update() after aclose()'
                                   % self.key)
            self._rules.show_life()
            self._rules.set_value(value)
            return bool(await self._drive(self._rules.sync()))

    async def aclose(self) -> bool:
        """End the keepalive and delete the key; True if deleted.

        Idempotent; never raises for etcd errors (the key then expires
        within ttl).
        """
        self._stop.set()
        task = self._task
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        async with self._step:
            if self._closed:
                return False
            self._closed = True
            try:
                return bool(await self._drive(self._rules.leave()))
            except exceptions.BackendError:
                LOG.warning('member %s: could not delete the key; it '
                            'expires within %ss', self.key, self._rules.ttl,
                            exc_info=True)
                return False

    async def __aenter__(self) -> 'AsyncEtcdMembership':
        return await self.start()

    async def __aexit__(self, *exc_info: Any) -> None:
        await asyncio.shield(self.aclose())

    async def _drive(self, rule):
        return await driving.drive(rule, self._backend, None,
                                   sleep=self._sleep_unlocked)

    async def _sleep_unlocked(self, seconds):
        self._step.release()
        try:
            try:
                await asyncio.wait_for(self._stop.wait(), seconds)
            except asyncio.TimeoutError:
                pass
            return self._stop.is_set()
        finally:
            await self._step.acquire()

    async def _keepalive(self, first_wait):
        async with self._step:
            if self._stop.is_set():
                return
            try:
                await self._drive(self._rules.keepalive(self._stop.is_set,
                                                        first_wait))
            except Exception:
                # A bug, not etcd (the rules handle etcd's errors).
                LOG.exception('member %s: keepalive failed', self.key)
