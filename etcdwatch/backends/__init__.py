"""Backends: the only code that speaks to etcd.

:func:`for_client` picks the backend for the client object a user hands
to a recipe.
"""

from etcdwatch.backends.base import AsyncBackend  # noqa: F401
from etcdwatch.backends.base import Backend  # noqa: F401


def for_client(client, argument='etcd_client'):
    """Return a :class:`Backend` wrapping ``client``.

    An etcd3gw ``Etcd3Client`` gets the v3 backend (etcd3gw is imported
    only then).  A python-etcd ``etcd.Client``, or anything with its read /
    write / watch / delete methods (such as
    :class:`etcdwatch.testing.FakeEtcdClient`), gets the v2 backend.
    """
    if isinstance(client, Backend):
        return client
    if _is_etcd3gw(client):
        from etcdwatch.backends import v3
        return v3.V3Backend(client)
    if all(callable(getattr(client, m, None))
           for m in ('read', 'write', 'watch', 'delete')):
        from etcdwatch.backends import v2
        return v2.V2Backend(client)
    raise TypeError('%s must be an etcd.Client (python-etcd), an '
                    'etcd3gw Etcd3Client, or a client with the same '
                    'read/write/watch/delete methods as etcd.Client, not %r'
                    % (argument, client))


def for_async_client(client, argument='etcd_client'):
    """Return an :class:`AsyncBackend` wrapping ``client``.

    An :class:`etcdwatch.aio.client.AsyncEtcd3Client` (or subclass) gets
    the asyncio v3 backend; an AsyncBackend is returned as it is.  httpx is
    imported only then.
    """
    if isinstance(client, AsyncBackend):
        return client
    if any(cls.__module__ == 'etcdwatch.aio.client' and
           cls.__name__ == 'AsyncEtcd3Client'
           for cls in type(client).__mro__):
        from etcdwatch.backends import v3_async
        return v3_async.AsyncV3Backend(client)
    raise TypeError('%s must be an etcdwatch.aio.client.AsyncEtcd3Client '
                    'or an AsyncBackend, not %r' % (argument, client))


def _is_etcd3gw(client):
    # By the defining modules of its class and bases, so that etcd3gw is
    # never imported for a v2 client, and subclasses are recognised.
    return any((getattr(cls, '__module__', None) or '').startswith(
        'etcd3gw') for cls in type(client).__mro__)
