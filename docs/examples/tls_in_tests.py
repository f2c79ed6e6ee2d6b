"""etcd with TLS and client certificates in tests (docs/tls.rst)."""

import tempfile

import etcd

from etcdwatch.config import EtcdClientFactory
from etcdwatch.testing.server import EtcdServer
from etcdwatch.testing.server import make_tls_files


def error_of(client):
    """The message of the error ``client`` gets on its first request."""
    try:
        client.read('/')
    except etcd.EtcdConnectionFailed as e:
        return str(e)
    raise AssertionError('the request went through')


with EtcdServer(tls=True) as server:
    files = server.tls_files            # ca_cert, client_cert, ...
    client = server.client()            # https, CA and client cert
    factory = EtcdClientFactory(
        host='%s:%d' % (server.host, server.port), protocol='https',
        ca_cert=files.ca_cert, cert_file=files.client_cert,
        key_file=files.client_key)
    client.write('/my-agent/alive', 'yes')
    assert factory.client().read('/my-agent/alive').value == 'yes'

    # The failures of "What failures look like":
    with tempfile.TemporaryDirectory() as tmp:
        wrong = make_tls_files(tmp)     # a new CA, which etcd does not use
        message = error_of(server.client(ca_cert=wrong.ca_cert))
        assert 'CERTIFICATE_VERIFY_FAILED' in message, message
        for cert in (None, (wrong.client_cert, wrong.client_key)):
            message = error_of(server.client(cert=cert))
            assert ('BAD_CERTIFICATE' in message or
                    'certificate required' in message), message
        message = error_of(server.client(protocol='http'))
        assert 'Remote end closed connection' in message, message

        # Given files, and clients without a certificate let in:
        with EtcdServer(tls=wrong, client_cert_auth=False) as other:
            anyone = other.client(cert=None)
            anyone.write('/my-agent/alive', 'yes')
            print(anyone.read('/my-agent/alive').value)
