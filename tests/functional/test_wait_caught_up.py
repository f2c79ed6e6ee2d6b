"""etcdwatch.testing.wait_caught_up on a real etcd, v2 and v3.

The tests are those of tests/unit/test_wait_caught_up.py (on the fake);
here their ``etcd`` fixture writes to a real etcd, under this test's own
prefix, through each API.
"""

import pytest

from etcdwatch import backends
from tests.unit.test_wait_caught_up import running  # noqa: F401
from tests.unit.test_wait_caught_up import test_a_callback_waiting_for_a_retry_is_not_caught_up  # noqa: F401,E501
from tests.unit.test_wait_caught_up import test_a_change_not_yet_applied_is_waited_for  # noqa: F401,E501
from tests.unit.test_wait_caught_up import test_a_delete_not_yet_applied_is_waited_for  # noqa: F401,E501
from tests.unit.test_wait_caught_up import test_a_last_write_outside_the_prefix_does_not_hang_it  # noqa: F401,E501
from tests.unit.test_wait_caught_up import test_after_history_is_gone_it_waits_for_the_reread  # noqa: F401,E501
from tests.unit.test_wait_caught_up import test_returns_once_the_last_change_under_the_prefix_is_applied  # noqa: F401,E501


class Real(object):
    """What the tests do to etcd, through a tests.drivers driver."""

    def __init__(self, driver, prefix):
        self.driver = driver
        self.client = driver.client
        self.prefix = prefix

    def _index(self):
        backend = backends.for_client(self.driver.new_client())
        try:
            return backend.check_current('/', 0)
        finally:
            backend.close()

    def put(self, key, value):
        """Write; return etcd's index after it."""
        self.driver.put(self.prefix + key, value)
        return self._index()

    def delete(self, key):
        self.driver.delete(self.prefix + key)
        return self._index()

    def forget_history(self, events_written):
        self.driver.forget_history(events_written)


@pytest.fixture
def etcd(backend_client, etcd_prefix):
    return Real(backend_client, etcd_prefix)
