"""pytest fixtures giving tests a real etcd (see etcdwatch.testing.server).

``etcd_server``
    One server for the whole session, started on first use.  Only for tests
    that leave it healthy; fault tests take ``fresh_etcd_server``.
``etcd_prefix``
    A key prefix of this test's own, ``/t/<test name>-<8 hex>``.
``etcd_client``
    A new python-etcd client on ``etcd_server``; everything under
    ``etcd_prefix`` is deleted after the test.
``fresh_etcd_server``
    A server of this test's own, cleaned up after it.
``etcd_cluster``
    A 3-member cluster of this test's own, cleaned up after it.

The etcd binary is found by :func:`etcdwatch.testing.server.
find_etcd_binary` (``$ETCD_BINARY`` overrides it).  Without one, these
fixtures error out rather than skip: a missing etcd must not pass CI.

Every test under ``tests/functional`` is marked ``functional``, and runs
after every unit test.  The suite runs on two pytest-xdist workers
(``-n 2 --dist loadgroup``); the tests that build network namespaces are
one group, so they run one at a time on one worker (two clusters choosing
a free subnet at once could choose the same one).
"""

import pathlib
import re
import uuid
import warnings

import etcd
import pytest

from etcdwatch.testing.server import EtcdCluster
from etcdwatch.testing.server import EtcdServer

_FUNCTIONAL_DIR = pathlib.Path(__file__).parent / 'functional'
# Modules whose tests build network namespaces.
_NETNS_MODULES = ('test_netns.py', 'test_cluster_faults.py',
                  'test_tooz_cluster_faults.py')


def pytest_collection_modifyitems(config, items):
    functional = set()
    for item in items:
        path = pathlib.Path(item.path).resolve()
        if _FUNCTIONAL_DIR.resolve() in path.parents:
            item.add_marker(pytest.mark.functional)
            functional.add(item.nodeid)
            if path.name in _NETNS_MODULES:
                item.add_marker(pytest.mark.xdist_group('netns'))
    # Unit tests first: they fail in seconds, the functional ones take
    # minutes (a stable sort keeps each group's own order).
    items.sort(key=lambda item: item.nodeid in functional)


@pytest.fixture(scope='session')
def etcd_server():
    """The shared etcd server (session scope)."""
    server = EtcdServer(name='shared')
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def _revive(server):
    # A test that broke the shared server would make every later test fail
    # for the wrong reason: bring it back, but say so.
    if server.is_paused:
        warnings.warn('a test left the shared etcd_server paused; resuming')
        server.resume()
    if not server.is_running:
        warnings.warn('a test left the shared etcd_server down; restarting')
        server.start()


@pytest.fixture
def etcd_prefix(request):
    """``/t/<test name>-<uuid8>``: unique per test, safe in a URL."""
    name = re.sub(r'[^A-Za-z0-9_.-]+', '_', request.node.name)[:80]
    return '/t/%s-%s' % (name, uuid.uuid4().hex[:8])


@pytest.fixture
def etcd_client(etcd_server, etcd_prefix):
    """A new ``etcd.Client`` on the shared server; cleans ``etcd_prefix``."""
    _revive(etcd_server)
    yield etcd_server.client()
    _revive(etcd_server)
    try:
        # A client of our own: the test's one may have been reconfigured.
        etcd_server.client().delete(etcd_prefix, recursive=True)
    except etcd.EtcdKeyNotFound:
        pass


@pytest.fixture
def fresh_etcd_server():
    """A started etcd server of this test's own."""
    server = EtcdServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def etcd_cluster():
    """A started 3-member etcd cluster of this test's own."""
    cluster = EtcdCluster(size=3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()
