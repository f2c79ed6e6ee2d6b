"""Model-based convergence of EtcdChangeWatcher on the fake (many seeds).

Replay a failing seed with ``run_model(V2Driver(None, client), '/m',
seed=N, ...)``.
"""

import pytest

from etcdwatch.testing import FakeClock
from etcdwatch.testing import FakeEtcdClient
from tests.drivers import V2Driver
from tests.model import run_model


@pytest.mark.parametrize('seed', range(40))
def test_change_watcher_converges(seed):
    clock = FakeClock()
    client = FakeEtcdClient(clock=clock)
    model = run_model(V2Driver(None, client), '/m', seed, steps=120,
                      clock=clock, history_loss=client.clear_history)
    # The draw really exercised the interesting paths.
    assert len(set(model.log)) >= 6
