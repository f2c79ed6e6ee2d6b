"""asyncio recipes: etcdwatch's election and watchers on an event loop.

The same rules (:mod:`etcdwatch.rules`) as the threaded recipes, driven by
coroutines (:mod:`etcdwatch.aio.driving`) over etcd's v3 gateway
(:class:`AsyncEtcd3Client`, on httpx).  Needs the ``aio`` extra.
"""

from etcdwatch.aio.client import AsyncEtcd3Client
from etcdwatch.aio.election import AsyncEtcdElection
from etcdwatch.aio.iterate import Change
from etcdwatch.aio.iterate import RESYNC
from etcdwatch.aio.iterate import watch_prefix
from etcdwatch.aio.lock import AsyncEtcdLock
from etcdwatch.aio.membership import AsyncEtcdMembership
from etcdwatch.aio.watcher import AsyncEtcdChangeWatcher
from etcdwatch.aio.watcher import AsyncEtcdWatcher

__all__ = ['AsyncEtcd3Client', 'AsyncEtcdChangeWatcher',
           'AsyncEtcdElection', 'AsyncEtcdLock', 'AsyncEtcdMembership',
           'AsyncEtcdWatcher',
           'Change', 'RESYNC', 'watch_prefix']
