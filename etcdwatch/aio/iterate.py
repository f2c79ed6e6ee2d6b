"""Changes under a prefix as an async iterator, for those who would rather
not subclass.

::

    async for change in watch_prefix(client, '/ports'):
        if change is RESYNC:
            ...             # history was gone: net changes follow
        elif change.action == 'delete':
            forget(change.key)
        else:
            apply(change.key, change.value)

The promises are :class:`~etcdwatch.aio.AsyncEtcdChangeWatcher`'s: first
every key as an 'add', then exactly one change per real change.  When
etcd's history no longer reaches back (compaction, a restore), the tree
is read again: :data:`RESYNC` comes first, then only what differs from
what was yielded before.
"""

import collections
from typing import Any, AsyncIterator, Deque

from etcdwatch.aio import watcher as aio_watcher

Change = collections.namedtuple('Change', ['action', 'key', 'value'])
Change.__doc__ = """One change: ``action`` is 'add', 'change' or 'delete'
(``value`` None); ``key`` is the short key below the prefix."""

#: Yielded before the net changes of a re-read after history was gone.
RESYNC = Change('resync', None, None)


class _Collector(aio_watcher.AsyncEtcdChangeWatcher):
    """A change watcher whose reports wait in a queue for the iterator."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.out: Deque[Change] = collections.deque()
        super().__init__(*args, **kwargs)

    def do_all_work(self) -> Any:
        if self.synced:
            # A re-read, not the first load: say so before its changes.
            self.out.append(RESYNC)
        return super().do_all_work()

    def _follow(self) -> float:
        # The iterator yields between passes: a pass ends with the first
        # message that brought a change to yield.
        return 0 if self.out else super()._follow()

    def key_change(self, action: str, key: str, value: Any) -> None:
        short_key = self.make_short_key(key)
        if short_key is not None:
            self.out.append(Change(action, short_key, value))


async def watch_prefix(etcd_client: Any, prefix: str, *,
                       heartbeat: float = 60, codec: Any = None,
                       name: str = 'watch_prefix') -> AsyncIterator[Change]:
    """Yield every change under ``prefix`` (see the module docstring).

    Runs in the iterating task: nothing is read ahead of the consumer
    beyond one watch message, so a slow consumer slows the watch rather
    than fill memory.  etcd errors are retried with backoff, as in a
    watcher, and never raised.  Leaving the loop (``break``, an exception,
    cancellation) closes the watch.
    """
    collector = _Collector(etcd_client, name, prefix, heartbeat=heartbeat,
                           codec=codec)
    try:
        while True:
            while collector.out:
                yield collector.out.popleft()
            await collector.run_once()
    finally:
        await collector.aclose()
