"""An in-memory etcd v3 (3.5) behind its JSON gateway, for tests.

:class:`FakeEtcd3Server` answers etcd's gateway API (``/v3/kv/*``,
``/v3/lease/*``, ``/v3/watch``, ``/v3/auth/*``, ...) in etcd 3.5's JSON,
through a ``requests`` adapter (so a real ``etcd3gw`` client works on it,
watches included) or ``httpx`` transports (sync and asyncio).  Leases and
auth tokens run on a clock the test moves.  etcdwatch's conformance suite
holds it to a real etcd 3.5.1.

Layout: ``core`` (the sans-IO model), ``auth``, ``codec`` and ``errors``
(its parts), ``transport`` (requests), ``httpx_transport`` (httpx, imported
on first use), ``server`` (:class:`FakeEtcd3Server`).
"""

from etcdwatch.testing.fake_v3.core import FakeEtcd3
from etcdwatch.testing.fake_v3.core import WatchStream
from etcdwatch.testing.fake_v3.server import FakeEtcd3Server

__all__ = ['FakeEtcd3', 'FakeEtcd3Server', 'WatchStream']
