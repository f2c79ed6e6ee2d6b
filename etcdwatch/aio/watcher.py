"""Follow every key under an etcd prefix, on asyncio.

:class:`AsyncEtcdWatcher` and :class:`AsyncEtcdChangeWatcher` keep the
promises of :class:`etcdwatch.EtcdWatcher` and
:class:`etcdwatch.EtcdChangeWatcher` (the same rules,
:mod:`etcdwatch.rules.mirror`, run them): an initial load, a watch from
the next index, a re-read when history is gone or etcd went back in time,
and callbacks retried in order with backoff when they raise, never lost.

What differs is the running: the constructor does no I/O; the watcher
runs as a task (:meth:`~AsyncEtcdWatcher.start`, ``async with``, or
``await watch_forever()``); hooks may be ``async def`` or plain
functions, and run one at a time on the watcher's task, with no lock.
"""

import abc
import asyncio
from typing import Any, Dict, Iterable, Optional

from oslo_log import log as logging

from etcdwatch.aio import driving
from etcdwatch.aio import election as aio_election
from etcdwatch import backends
from etcdwatch.rules import changes
from etcdwatch.rules import requests
from etcdwatch.rules import watcher_base

LOG = logging.getLogger(__name__)


class AsyncEtcdWatcher(watcher_base.WatcherBase, metaclass=abc.ABCMeta):
    """Watch every key under ``watch_path``; subclass to act on changes.

    :param etcd_client: an :class:`etcdwatch.aio.AsyncEtcd3Client` (or an
        :class:`~etcdwatch.backends.base.AsyncBackend`).
    :param name: a name for logs, and the election's name when elected.
    :param watch_path: the etcd prefix to follow; it need not exist yet.
    :param election_path: where to elect, with ``wait_until_elected``.
    :param wait_until_elected: only the elected worker among those with
        the same name and election_path watches and runs callbacks (an
        :class:`~etcdwatch.aio.AsyncEtcdElection`, as
        :class:`etcdwatch.EtcdWatcher` does with threads).  It loads the
        whole tree when it wins, stops delivering when it loses, and
        resigns when it stops, once a running callback has returned.
    :param recovery_time: the election's recovery_time.
    :param data: anything; kept as ``self.data`` for the subclass.
    :param heartbeat: the longest one watch waits for a change, so
        ``do_tick()`` runs at least that often; a silent heartbeat is
        followed by a quorum read, as on the threaded watcher.
    :param codec: as :class:`etcdwatch.EtcdWatcher`'s.

    Nothing is read until the watcher runs.  Callbacks (``do_work``,
    ``do_all_work``, ``do_tick``, ``init_resync_start``,
    ``init_resync_end``, ``removed``) may be coroutines.  A callback that
    raises is logged and retried with capped exponential backoff; later
    changes wait behind it, in order.
    """

    def __init__(self, etcd_client: Any, name: str, watch_path: str, *,
                 election_path: Optional[str] = None,
                 wait_until_elected: bool = False,
                 recovery_time: float = 5, data: Any = None,
                 heartbeat: float = 60, codec: Any = None) -> None:
        self._check_arguments(name, watch_path, election_path,
                              wait_until_elected, recovery_time, heartbeat,
                              codec)
        self._backend = backends.for_async_client(etcd_client)
        self.etcd_client = etcd_client
        self.etcd_elector: Optional[aio_election.AsyncEtcdElection] = None
        if wait_until_elected:
            assert election_path is not None    # checked above
            self.etcd_elector = aio_election.AsyncEtcdElection(
                etcd_client, name, election_path,
                **self._election_settings(heartbeat, recovery_time))
        self._term: Optional[int] = None
        self._init_state(name, data, heartbeat, codec)
        self._stop = asyncio.Event()
        self._synced = asyncio.Event()
        self._task: Optional['asyncio.Task[None]'] = None
        # Whether the task waits on etcd now (and so may be cancelled by
        # stop() without cutting a callback short).
        self._in_backend = False
        self._cancelled_by_stop = False

    # -- hooks for subclasses ---------------------------------------------

    def do_work(self, action: str, key: str, value: Any) -> Any:
        """Act on one change ('add', 'change' or 'delete') of ``key``.

        ``etcd_data`` already reflects it, and every other change etcd
        sent in the same watch message.  The default calls
        :meth:`do_all_work`.
        """
        return self.do_all_work()

    @abc.abstractmethod
    def do_all_work(self) -> Any:
        """Act on the whole of ``etcd_data`` (after every full read)."""

    def do_tick(self) -> Any:
        """Background work; runs at least once per ``heartbeat``."""

    def init_resync_start(self) -> Any:
        """Short keys the application holds from before, or None."""
        return None

    async def init_resync_end(self, short_keys: Iterable[str]) -> None:
        """After the first load: :meth:`removed` for each expected key
        that etcd no longer has."""
        if self.expected_keys is None:
            return
        for short_key in sorted(set(self.expected_keys) - set(short_keys)):
            await driving.maybe_await(self.removed(short_key))

    def removed(self, key: str) -> Any:
        """A key went away (``key`` is the short key)."""

    # -- running ----------------------------------------------------------

    def start(self) -> 'AsyncEtcdWatcher':
        """Run :meth:`watch_forever` in a task of the running loop."""
        if self._task is None or self._task.done():
            self._stop.clear()
            self._task = asyncio.ensure_future(self.watch_forever())
        return self

    def stop(self) -> None:
        """Ask the watcher to return; no callback starts after this.

        A running callback is not interrupted; a wait on etcd is.
        """
        self._stop.set()
        task = self._task
        if task is not None and self._in_backend and not task.done():
            self._cancelled_by_stop = True
            task.cancel()

    async def aclose(self) -> None:
        """Stop, and wait until the watcher has returned."""
        self.stop()
        task = self._task
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        await self._backend.aclose()

    async def __aenter__(self) -> 'AsyncEtcdWatcher':
        return self.start()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    async def wait_synced(self, timeout: Optional[float] = None) -> bool:
        """Wait until the initial load was delivered; returns :attr:`synced`.
        """
        try:
            await asyncio.wait_for(self._synced.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        return self.synced

    async def watch_forever(self) -> None:
        """Watch until :meth:`stop`; never raises for etcd or callbacks."""
        try:
            while await self.run_once():
                pass
        except asyncio.CancelledError:
            if not self._cancelled_by_stop:
                raise
        finally:
            self._cancelled_by_stop = False
            if self.etcd_elector is not None:
                # Only now, with no callback running, may another worker
                # act as leader.
                await asyncio.shield(self.etcd_elector.resign())

    async def run_once(self) -> bool:
        """One pass of the loop, errors handled; False once stopped."""
        if self._stop.is_set():
            return False
        try:
            await driving.maybe_await(self.do_tick())
            if self.etcd_elector is not None:
                if not await self._waiting(self._wait_until_elected()):
                    return False
            with self._pass():
                await self.do_watch()
            self._mirror.succeeded()
        except Exception as e:
            await driving.sleep_until(self._stop)(
                self._mirror.failed(e, *self._danger_pauses()))
        return not self._stop.is_set()

    async def do_watch(self) -> None:
        """One step: retry owed callbacks, or one watch, or one read.

        Raises :class:`~etcdwatch.exceptions.BackendError` for etcd errors.
        """
        await self._drive(self._mirror.step(
            self.heartbeat, self.CALLBACK_RETRY_MIN, self.CALLBACK_RETRY_MAX,
            self._follow))

    async def refresh_all_data(self) -> None:
        """Re-read the whole tree, then call :meth:`do_all_work`."""
        await self._drive(self._mirror.reload())

    # -- internals --------------------------------------------------------

    async def _wait_until_elected(self):
        """Campaign (stop() ends it); on a new term, start from a read.

        Also the check-in that keeps the election's keepalive renewing.
        """
        assert self.etcd_elector is not None
        if not await self.etcd_elector._campaign(self._stop):
            return False
        term = self.etcd_elector.fencing_token
        if term != self._term:
            LOG.info('%s: elected (term %s); loading %s', self.name, term,
                     self.watch_path)
            self._term = term
            self._mirror.new_term()
        return True

    async def _waiting(self, awaitable):
        """Await what stop() may cut short (a wait on etcd)."""
        self._in_backend = True
        try:
            return await awaitable
        finally:
            self._in_backend = False

    async def _drive(self, rule):
        try:
            return await driving.drive(rule, _Waiting(self), self,
                                       run_callback=self._run_callback,
                                       sleep=driving.sleep_until(self._stop))
        finally:
            if self._mirror.synced:
                self._synced.set()

    async def _run_callback(self, name, args):
        if self._stop.is_set():
            return requests.NOT_RUN
        return await driving.maybe_await(getattr(self, name)(*args))


class _Waiting(object):
    """The watcher's backend, marking its calls as interruptible waits."""

    def __init__(self, watcher):
        self._watcher = watcher

    def __getattr__(self, name):
        operation = getattr(self._watcher._backend, name)

        async def call(*args):
            return await self._watcher._waiting(operation(*args))
        return call


class AsyncEtcdChangeWatcher(AsyncEtcdWatcher):
    """Exactly one notification per real change of a key.

    As :class:`etcdwatch.EtcdChangeWatcher`: ``key_change(action, key,
    value)`` (default: :meth:`added` / :meth:`removed` with the short key)
    whenever etcd's value for ``key`` differs from the one last delivered
    without error, recorded in ``implemented_state``.
    """

    def __init__(self, etcd_client: Any, name: str, watch_path: str,
                 **kwargs: Any) -> None:
        #: key -> the value last delivered to key_change without error.
        self.implemented_state: Dict[str, Any] = {}
        self._ledger = changes.ChangeLedger(self.implemented_state)
        super().__init__(etcd_client, name, watch_path, **kwargs)

    async def do_all_work(self) -> None:
        data = self.etcd_data or {}
        await self._reconcile(self._ledger.keys_to_reconcile(data), data)

    async def do_work(self, action: str, key: str, value: Any) -> None:
        # ChangeLedger.report, awaited: once per event, so no driver.
        self._ledger.state = self.implemented_state
        change = self._ledger.change_to(action, key, value)
        if change is not None:
            await driving.maybe_await(self.key_change(*change))
            self._ledger.delivered(*change)

    async def _reconcile(self, keys, data):
        # The attribute, as it is now: a subclass may have replaced it.
        self._ledger.state = self.implemented_state
        await driving.drive(self._ledger.reconcile(keys, data), None, self)

    def key_change(self, action: str, key: str, value: Any) -> Any:
        """Called once per real change (may be a coroutine)."""
        short_key = self.make_short_key(key)
        if short_key is None:
            return None
        if action == changes.mirror.DELETE:
            return self.removed(short_key)
        return self.added(short_key, value)

    def added(self, key: str, value: Any) -> Any:
        """A key appeared or took a new value (``key`` is the short key)."""

    def removed(self, key: str) -> Any:
        """A key went away (``key`` is the short key)."""
