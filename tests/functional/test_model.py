"""Model-based convergence of EtcdChangeWatcher on a real etcd.

A bounded number of seeds (the unit suite runs many on the fake).  TTL keys
expire in real time; history loss is 1000 writes outside the prefix.
"""

import pytest

from tests.model import Model


@pytest.mark.parametrize('seed', [101, 202, 303])
def test_change_watcher_converges_on_real_etcd(etcd_client, etcd_prefix,
                                               seed):
    noise = etcd_prefix + '-noise'

    def lose_history():
        for i in range(1001):
            etcd_client.write(noise, str(i))

    try:
        model = Model(etcd_client, etcd_prefix + '/m', seed,
                      history_loss=lose_history)
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
    finally:
        try:
            etcd_client.delete(noise)
        except Exception:
            pass
