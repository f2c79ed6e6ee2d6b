"""etcdwatch: leader election and prefix watchers for etcd.

The public names, importable from here::

    from etcdwatch import EtcdElection, EtcdWatcher, EtcdChangeWatcher

They keep networking-vpp's ``etcdutils`` API, so code written against it
works by changing its import.  ``etcdwatch.__version__`` is the installed
version.
"""

from typing import Any

from etcdwatch.election import cleanup_electors
from etcdwatch.election import EtcdElection
from etcdwatch.exceptions import EtcdElectionLost
from etcdwatch.exceptions import EtcdUnavailable
from etcdwatch.exceptions import EtcdWatchError
from etcdwatch.lock import EtcdLock
from etcdwatch.membership import EtcdGroupWatcher
from etcdwatch.membership import EtcdMembership
from etcdwatch.membership import group_members
from etcdwatch.rules.lock import EtcdLockLost
from etcdwatch.watcher import EtcdChangeWatcher
from etcdwatch.watcher import EtcdWatcher

__all__ = ['EtcdElection', 'EtcdElectionLost', 'EtcdWatcher',
           'EtcdChangeWatcher', 'EtcdUnavailable', 'EtcdWatchError',
           'cleanup_electors', 'EtcdMembership', 'EtcdGroupWatcher',
           'group_members', 'EtcdLock', 'EtcdLockLost']

#: When etcdwatch is imported from a tree that is not installed.
UNKNOWN_VERSION = '0+unknown'


def _version() -> str:
    """The version pbr gave the installed distribution, as it recorded it.

    pbr writes it into the package metadata when it builds (from git);
    ``pbr.version.VersionInfo`` reads it back the same way, but falls back
    to running git in the current directory, which may be another project.
    """
    from importlib import metadata
    try:
        return metadata.version('etcdwatch')
    except metadata.PackageNotFoundError:
        return UNKNOWN_VERSION


def __getattr__(name: str) -> Any:
    # __version__ is looked up on first use: it reads the metadata.
    if name == '__version__':
        version = _version()
        globals()['__version__'] = version
        return version
    raise AttributeError('module %r has no attribute %r' % (__name__, name))
