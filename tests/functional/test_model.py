"""Model-based convergence of the change watchers on a real etcd.

EtcdChangeWatcher on both APIs; AsyncEtcdChangeWatcher on v3.

A bounded number of seeds (the unit suite runs many on the fake).  TTL keys
expire in real time; history is lost the way each API loses it (v2: 1000
writes outside the prefix; v3: a compaction).
"""

import pytest

from tests import drivers
from tests.model import Model


@pytest.mark.parametrize('seed', [101, 202, 303])
def test_change_watcher_converges_on_real_etcd(backend_client, etcd_prefix,
                                               seed):
    d = backend_client
    model = Model(d, etcd_prefix + '/m', seed,
                  history_loss=lambda: d.forget_history(0))
    play(model)


@pytest.mark.parametrize('seed', [101, 202, 303])
def test_async_change_watcher_converges_on_real_etcd(
        etcd_v3_server, etcd3_client, etcd_prefix, seed):
    from etcdwatch import aio
    d = drivers.V3Driver(etcd_v3_server, etcd3_client)
    client = aio.AsyncEtcd3Client(
        ['%s:%d' % (etcd_v3_server.host, etcd_v3_server.port)], timeout=10)
    model = Model(d, etcd_prefix + '/m', seed,
                  history_loss=lambda: d.forget_history(0),
                  aio_client=client)
    try:
        play(model)
    finally:
        model.close()


def play(model):
    for half in range(2):
        for _ in range(50):
            model.step()
        model.settle()
        # Whatever the draw, lose the history once with the watcher
        # behind, and restart it once.
        model.op_write()
        model.op_lose_history()
        model.op_restart()
    model.settle()
    assert {'op_ttl', 'op_delete_dir', 'op_pump'} <= set(model.log)
