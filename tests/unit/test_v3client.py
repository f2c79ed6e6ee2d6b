"""FailoverEtcd3Client, and the v3 backend moving off a member that is down."""

import threading

from etcd3gw.client import Etcd3Client
import pytest
import requests

from etcdwatch import backends
from etcdwatch import exceptions
from etcdwatch import v3client


def test_is_an_etcd3gw_client_on_its_first_member():
    c = v3client.client(['10.0.0.1:2379', ('10.0.0.2', 2380),
                         '[fd00::3]:2379'], timeout=7, protocol='https')
    assert isinstance(c, Etcd3Client)
    assert c.endpoints == [('10.0.0.1', 2379), ('10.0.0.2', 2380),
                           ('fd00::3', 2379)]
    assert (c.host, c.port, c.timeout) == ('10.0.0.1', 2379, 7)
    assert c.base_url == 'https://10.0.0.1:2379'
    assert isinstance(backends.for_client(c), backends.v3.V3Backend)


def test_a_comma_separated_string_is_a_list():
    c = v3client.client('h1:1, h2:2')
    assert c.endpoints == [('h1', 1), ('h2', 2)]


@pytest.mark.parametrize('endpoints', [
    [], ['h1'], ['h1:x'], [':2379'], [('h', 0)], [('', 1)], [('h', '1')],
])
def test_bad_endpoints_name_the_argument(endpoints):
    with pytest.raises(ValueError, match='endpoints'):
        v3client.client(endpoints)


def test_host_and_port_are_not_taken():
    with pytest.raises(TypeError, match='host'):
        v3client.client(['h:1'], host='x')


def test_failover_goes_round_and_moves_once_per_failure():
    c = v3client.client(['h1:1', 'h2:2', 'h3:3'])
    first = c.base_url
    assert c.failover(first) == 'http://h2:2'
    # A second request that failed on h1 does not move us again.
    assert c.failover(first) == 'http://h2:2'
    assert c.failover() == 'http://h3:3'
    assert c.failover() == 'http://h1:1'


def test_concurrent_failures_of_one_member_move_once():
    c = v3client.client(['h1:1', 'h2:2', 'h3:3'])
    failed = c.base_url
    barrier = threading.Barrier(8)

    def fail():
        barrier.wait()
        c.failover(failed)
    threads = [threading.Thread(target=fail) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert c.base_url == 'http://h2:2'


class _Session(object):
    """Members h1 and h3 refuse connections; h2 answers a range request."""

    def __init__(self):
        self.urls = []

    def post(self, url, json=None, timeout=None, stream=False):
        self.urls.append(url)
        if '//h2:' not in url:
            raise requests.exceptions.ConnectionError('refused')
        resp = requests.Response()
        resp.status_code = 200
        resp._content = b'{"header": {"revision": "7"}}'
        return resp


def test_the_backend_moves_off_a_member_it_cannot_reach():
    c = v3client.client(['h1:1', 'h2:2', 'h3:3'], timeout=1)
    c._api_path = '/v3/'
    c.session = session = _Session()
    be = backends.for_client(c)
    with pytest.raises(exceptions.EtcdUnavailable):
        be.read_key('/k')
    assert c.base_url == 'http://h2:2'
    assert be.read_key('/k') == (None, 7)
    assert session.urls == ['http://h1:1/v3/kv/range',
                            'http://h2:2/v3/kv/range']


def test_a_plain_etcd3gw_client_stays_where_it_is():
    c = Etcd3Client(host='h1', port=1, timeout=1)
    c._api_path = '/v3/'
    c.session = _Session()
    be = backends.for_client(c)
    for _ in range(2):
        with pytest.raises(exceptions.EtcdUnavailable):
            be.read_key('/k')
    assert c.base_url == 'http://h1:1'
