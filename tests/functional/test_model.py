"""Model-based convergence of EtcdChangeWatcher on a real etcd, both APIs.

A bounded number of seeds (the unit suite runs many on the fake).  TTL keys
expire in real time; history is lost the way each API loses it (v2: 1000
writes outside the prefix; v3: a compaction).
"""

import pytest

from tests.model import Model


@pytest.mark.parametrize('seed', [101, 202, 303])
def test_change_watcher_converges_on_real_etcd(backend_client, etcd_prefix,
                                               seed):
    d = backend_client
    model = Model(d, etcd_prefix + '/m', seed,
                  history_loss=lambda: d.forget_history(0))
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
