"""etcdwatch: leader election and prefix watchers for etcd.

The public names, importable from here::

    from etcdwatch import EtcdElection, EtcdWatcher, EtcdChangeWatcher

They keep networking-vpp's ``etcdutils`` API, so code written against it
works by changing its import.
"""

from etcdwatch.election import EtcdElection
from etcdwatch.exceptions import EtcdElectionLost
from etcdwatch.exceptions import EtcdUnavailable
from etcdwatch.exceptions import EtcdWatchError
from etcdwatch.watcher import EtcdChangeWatcher
from etcdwatch.watcher import EtcdWatcher

__all__ = ['EtcdElection', 'EtcdElectionLost', 'EtcdWatcher',
           'EtcdChangeWatcher', 'EtcdUnavailable', 'EtcdWatchError']
