"""A subclass that sets one of the constructor's attributes first is told."""

import warnings

import pytest

from etcdwatch import EtcdChangeWatcher
from etcdwatch import EtcdWatcher
from etcdwatch.testing import FakeEtcdClient


class Early(EtcdWatcher):
    def __init__(self, *args, **kwargs):
        self.data = {}                  # lost: the constructor assigns it
        super().__init__(*args, **kwargs)

    def do_all_work(self):
        pass


class Fine(EtcdChangeWatcher):
    def __init__(self, *args, **kwargs):
        self.table = {}                 # a name of its own
        super().__init__(*args, **kwargs)


def test_setting_data_before_the_constructor_warns_and_names_it(caplog):
    with pytest.warns(RuntimeWarning, match=r'Early set self\.data before'):
        w = Early(FakeEtcdClient(), 'early', '/p')
    assert w.data is None
    assert any('self.data' in r.getMessage() for r in caplog.records)


def test_names_of_its_own_are_quiet():
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        Fine(FakeEtcdClient(), 'fine', '/p')
