"""Drop-in modules that keep other projects' APIs on etcdwatch.

:mod:`etcdwatch.compat.networking_vpp`
    networking-vpp's ``networking_vpp.etcdutils``, every name of it.
:mod:`etcdwatch.compat.networking_vpp_jwt`
    networking-vpp's ``networking_vpp.jwt_agent`` (JWT signing of values
    with X.509 certificates), on PyJWT and cryptography: the
    ``networking-vpp`` extra.

Importing this package imports nothing else.
"""
