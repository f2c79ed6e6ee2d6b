"""The same settings without oslo.config (docs/configuration.rst)."""

from etcdwatch.config import ConfigError
from etcdwatch.config import EtcdClientFactory
from etcdwatch.testing import EtcdServer

# For the example: an etcd with TLS, and its CA and client certificate.
with EtcdServer(tls=True) as server:
    files = server.tls_files

    # A host without a port takes port=.
    factory = EtcdClientFactory(host='127.0.0.1:%d,localhost' % server.port,
                                port=server.port,
                                protocol='https', ca_cert=files.ca_cert,
                                cert_file=files.client_cert,
                                key_file=files.client_key)
    client = factory.client()       # a new etcd.Client on each call
    client.write('/my-agent/alive', 'yes')
    assert factory.client() is not client
    print(factory.client().read('/my-agent/alive').value)

# Settings are checked when the factory is made, before any request.
try:
    EtcdClientFactory(host='10.0.0.1:2379', protocol='https')
    raise AssertionError('https without ca_cert was accepted')
except ConfigError as e:
    assert isinstance(e, ValueError) and e.option == 'ca_cert'
    print(e)
