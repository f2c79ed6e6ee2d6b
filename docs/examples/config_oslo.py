"""Options from oslo.config (docs/configuration.rst, "From oslo.config")."""

import os
import tempfile

from oslo_config import cfg

from etcdwatch import config
from etcdwatch.testing import EtcdServer

CONF = cfg.CONF
assert 'etcd' not in CONF          # importing etcdwatch registered nothing


def main(argv):
    """The agent, run as ``my-agent --config-file my-agent.conf``."""
    config.register_opts(CONF, group='etcd')
    CONF(argv, project='my-agent')

    client = config.client_from_conf(CONF, group='etcd')
    client.write('/my-agent/alive', 'yes')
    return client


# For the example: an etcd with TLS, and a my-agent.conf pointing at it
# (two host entries for the one member: its certificate names both).
with EtcdServer(tls=True) as server, tempfile.TemporaryDirectory() as tmp:
    files = server.tls_files
    conf_file = os.path.join(tmp, 'my-agent.conf')
    with open(conf_file, 'w') as f:
        f.write('[etcd]\n'
                'host = 127.0.0.1:%(port)d,localhost:%(port)d\n'
                'protocol = https\n'
                'ca_cert = %(ca)s\n'
                'cert_file = %(cert)s\n'
                'key_file = %(key)s\n'
                % {'port': server.port, 'ca': files.ca_cert,
                   'cert': files.client_cert, 'key': files.client_key})

    client = main(['--config-file', conf_file])
    assert CONF.etcd.protocol == 'https'
    assert client.protocol == 'https'
    print(client.read('/my-agent/alive').value)
