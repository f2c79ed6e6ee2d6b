"""Backends: the only code that speaks to etcd.

:func:`for_client` picks the backend for the client object a user hands
to a recipe.
"""

from etcdwatch.backends.base import Backend  # noqa: F401


def for_client(client, argument='etcd_client'):
    """Return a :class:`Backend` wrapping ``client``.

    A python-etcd ``etcd.Client``, or anything with its read / write /
    watch / delete methods (such as
    :class:`etcdwatch.testing.FakeEtcdClient`), gets the v2 backend.
    """
    if isinstance(client, Backend):
        return client
    if all(callable(getattr(client, m, None))
           for m in ('read', 'write', 'watch', 'delete')):
        from etcdwatch.backends import v2
        return v2.V2Backend(client)
    raise TypeError('%s must be an etcd.Client (python-etcd) or a client '
                    'with the same read/write/watch/delete methods, not %r'
                    % (argument, client))
