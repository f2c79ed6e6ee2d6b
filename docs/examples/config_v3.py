"""etcd's v3 API from the configuration (docs/configuration.rst, "v3")."""

import os
import tempfile

from oslo_config import cfg

import etcdwatch
from etcdwatch import config
from etcdwatch.testing import EtcdServer


def main(argv):
    """The agent: the same code as on v2; the file picks the API."""
    conf = cfg.ConfigOpts()
    config.register_opts(conf, group='etcd')
    conf(argv, project='my-agent')
    client = config.client_from_conf(conf, group='etcd')
    elector = etcdwatch.EtcdElection(client, 'l3', '/elections',
                                     work_time=10)
    with elector.leadership():
        assert elector.leader() == elector.thread_id
    return client


# For the example: an etcd without the v2 API, as etcd 3.6 is, and a
# my-agent.conf that flips api_version.
with EtcdServer(enable_v2=False) as server, \
        tempfile.TemporaryDirectory() as tmp:
    conf_file = os.path.join(tmp, 'my-agent.conf')
    with open(conf_file, 'w') as f:
        f.write('[etcd]\n'
                'api_version = v3\n'
                'host = %s:%d\n' % (server.host, server.port))
    client = main(['--config-file', conf_file])
    print(type(client).__module__, type(client).__name__)

# Several hosts: a client that moves on when one member is down.
factory = config.EtcdClientFactory(api_version='v3',
                                   host='10.0.0.1:2379,10.0.0.2:2379')
print(factory.client().endpoints)

# A user and password: etcd's v3 authentication (a token, renewed when it
# expires).  Bad settings are refused when the factory is made, before any
# request, naming the option and never the password.
factory = config.EtcdClientFactory(api_version='v3', username='agent',
                                   password='secret')
print(factory.client_kwargs()['password'])      # ***
try:
    config.EtcdClientFactory(api_version='v3', username='agent')
    raise AssertionError('accepted a user name without a password')
except config.ConfigError as e:
    print(e)
