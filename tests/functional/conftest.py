"""Fixtures for running the same functional tests on etcd's v2 and v3 APIs.

``etcd_v3_server``
    One etcd for the session with the v2 API *disabled*, so a v3 test
    proves that nothing it does needs v2.
``fresh_etcd_v3_server``
    The same, of this test's own (for faults, and for counting what etcd
    holds open).
``etcd3_client``
    A new etcd3gw client on ``etcd_v3_server``; everything below
    ``etcd_prefix`` is deleted after the test.
``backend_client``
    Parametrized over 'v2' and 'v3': a driver (``drivers.V2Driver`` or
    ``drivers.V3Driver``) whose ``client`` goes to the recipes and whose
    methods change etcd through the same API, so one test body runs on
    both backends.
``fresh_backend``
    Parametrized the same way: a driver on an etcd of this test's own (for
    faults), with the v2 API enabled for 'v2' and disabled for 'v3'.

``backend_cluster``
    Parametrized the same way: ``(cluster, api)``, a 3-member cluster of
    this test's own (v2 disabled for 'v3'); ``drivers.make_driver(api,
    member)`` writes through one member.
``etcd_cluster_v3``
    A 3-member cluster of this test's own with v2 disabled (for the
    asyncio recipes, which speak v3 only).

etcd3gw is a test requirement: nothing here skips without it.
"""

import pytest

from etcdwatch.testing.server import EtcdCluster
from etcdwatch.testing.server import EtcdServer
from tests import drivers


@pytest.fixture(scope='session')
def etcd_v3_server():
    """The shared etcd with v2 disabled (session scope)."""
    with EtcdServer(name='shared-v3', enable_v2=False) as server:
        yield server


@pytest.fixture
def fresh_etcd_v3_server():
    """An etcd with v2 disabled, of this test's own."""
    with EtcdServer(name='fresh-v3', enable_v2=False) as server:
        yield server


def _revive(server):
    if server.is_paused:
        server.resume()
    if not server.is_running:
        server.start()


@pytest.fixture
def etcd3_client(etcd_v3_server, etcd_prefix):
    """An etcd3gw client on ``etcd_v3_server``; cleans ``etcd_prefix``."""
    _revive(etcd_v3_server)
    yield drivers.v3_client(etcd_v3_server)
    _revive(etcd_v3_server)
    drivers.v3_client(etcd_v3_server).delete_prefix(etcd_prefix + '/')


BACKENDS = ['v2', 'v3']


@pytest.fixture(params=BACKENDS)
def backend_client(request, etcd_prefix):
    """A :class:`Driver` for the v2 or the v3 API on a shared etcd."""
    if request.param == 'v2':
        server = request.getfixturevalue('etcd_server')
        client = request.getfixturevalue('etcd_client')
        return drivers.V2Driver(server, client)
    server = request.getfixturevalue('etcd_v3_server')
    client = request.getfixturevalue('etcd3_client')
    return drivers.V3Driver(server, client)


@pytest.fixture(params=BACKENDS)
def fresh_backend(request):
    """A :class:`Driver` on an etcd of this test's own."""
    with EtcdServer(name='fresh-' + request.param,
                    enable_v2=request.param == 'v2') as server:
        yield drivers.make_driver(request.param, server)


@pytest.fixture(params=BACKENDS)
def backend_cluster(request):
    """``(cluster, api)``: a 3-member cluster of this test's own."""
    with EtcdCluster(size=3, enable_v2=request.param == 'v2') as cluster:
        yield cluster, request.param


@pytest.fixture
def etcd_cluster_v3():
    """A 3-member cluster with the v2 API disabled, of this test's own."""
    with EtcdCluster(size=3, enable_v2=False) as cluster:
        yield cluster
