"""TLS, client certificates and v2 username/password auth on a real etcd.

Clients are built the way applications build them: through
``etcdwatch.config`` (the factory, or oslo.config options).  One etcd with
TLS and ``--client-cert-auth`` serves the TLS tests; another, with the v2
API disabled, the same tests through etcd's v3 API (``api_version='v3'``:
etcd3gw clients); a separate one gets v2 auth switched on, which cannot be
undone cleanly.
"""

import base64
import http.client
import json
import logging
import os
import ssl
import subprocess
import sys
import threading
import uuid

import etcd
from oslo_config import cfg
import pytest

from etcdwatch import backends
from etcdwatch.codecs import EtcdWriter
from etcdwatch.codecs import JsonCodec
from etcdwatch import config
from etcdwatch.config import EtcdClientFactory
from etcdwatch import EtcdChangeWatcher
from etcdwatch import EtcdElection
from etcdwatch import exceptions
from etcdwatch.testing.server import EtcdServer
from etcdwatch.testing.server import make_tls_files
from tests.helpers import Runner
from tests.helpers import wait_until

# Generous: two cores shared with other test runs.
TIMEOUT = 60

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


@pytest.fixture(scope='module')
def tls_server():
    """etcd serving HTTPS to clients with a certificate from its CA."""
    with EtcdServer(name='tls', tls=True) as server:
        yield server


@pytest.fixture(scope='module')
def tls_v3_server():
    """TLS and client-cert-auth, the v2 API disabled: v3 clients only."""
    with EtcdServer(name='tls-v3', tls=True, enable_v2=False) as server:
        yield server


@pytest.fixture
def prefix():
    return '/tls/%s' % uuid.uuid4().hex[:8]


def address(server):
    return '%s:%d' % (server.host, server.port)


def tls_factory(server, **overrides):
    files = server.tls_files
    settings = dict(host=address(server), protocol='https',
                    ca_cert=files.ca_cert, cert_file=files.client_cert,
                    key_file=files.client_key)
    settings.update(overrides)
    return EtcdClientFactory(**settings)


class Recorder(EtcdChangeWatcher):
    def __init__(self, *args, **kwargs):
        self.added_values = {}
        self.refused = []
        super(Recorder, self).__init__(*args, **kwargs)

    def added(self, short_key, value):
        self.added_values[short_key] = value

    def removed(self, short_key):
        self.added_values.pop(short_key, None)

    def value_unparsable(self, key, value, error):
        self.refused.append(key)


class V2Writer(EtcdWriter):
    """EtcdWriter, plus what V3Writer offers."""

    def write_text(self, key, text):
        self.client.write(key, text)

    def read_value(self, key):
        return self.read(key).value


class V3Writer(object):
    """The part of EtcdWriter used here, for an etcd3gw client (JSON)."""

    def __init__(self, client):
        self.client = client

    def write(self, key, value):
        self.write_text(key, json.dumps(value))

    def write_text(self, key, text):
        self.client.put(key.encode('utf-8'), text.encode('utf-8'))

    def delete(self, key):
        self.client.delete(key.encode('utf-8'))

    def read_value(self, key):
        [value] = self.client.get(key.encode('utf-8'))
        return json.loads(value.decode('utf-8'))


def elect_and_watch(client_a, client_b, prefix):
    """An election handed over and a JSON watcher, on the given clients."""
    first = EtcdElection(client_a, 'svc', prefix + '/election', work_time=10)
    second = EtcdElection(client_b, 'svc', prefix + '/election',
                          work_time=10)
    first.wait_until_elected()
    assert first.is_elected and first.leader() == first.thread_id
    won = threading.Event()

    def campaign():
        second.wait_until_elected()
        won.set()
    thread = threading.Thread(target=campaign, daemon=True)
    thread.start()
    assert not won.is_set()         # the key is first's
    first.resign()
    assert won.wait(TIMEOUT)
    thread.join(TIMEOUT)
    assert second.is_elected and second.leader() == second.thread_id
    second.resign()

    if backends.for_client(client_a).name == 'v3':
        writer = V3Writer(client_a)
    else:
        writer = V2Writer(client_a, JsonCodec())
    writer.write(prefix + '/data/before', {'n': 0})
    watcher = Recorder(client_b, 'json', prefix + '/data', heartbeat=1,
                       codec=JsonCodec())
    assert watcher.added_values == {'before': {'n': 0}}
    with Runner(watcher, join_timeout=TIMEOUT):
        writer.write(prefix + '/data/port', {'mac': 'fa:16:3e:00:00:01'})
        writer.write_text(prefix + '/data/junk', 'not json')
        writer.write(prefix + '/data/after', [1, 2])
        writer.delete(prefix + '/data/before')
        wait_until(lambda: watcher.added_values == {
            'port': {'mac': 'fa:16:3e:00:00:01'}, 'after': [1, 2]},
            timeout=TIMEOUT)
        wait_until(lambda: watcher.refused == [prefix + '/data/junk'],
                   timeout=TIMEOUT)
    assert writer.read_value(prefix + '/data/after') == [1, 2]


# -- TLS ----------------------------------------------------------------------

def test_right_ca_and_client_cert_work_end_to_end(tls_server, prefix):
    # One client from the factory, one from oslo.config options.
    client_a = tls_factory(tls_server).client()
    conf = cfg.ConfigOpts()
    config.register_opts(conf, 'etcd')
    conf([])
    files = tls_server.tls_files
    for name, value in [('host', address(tls_server)),
                        ('protocol', 'https'), ('ca_cert', files.ca_cert),
                        ('cert_file', files.client_cert),
                        ('key_file', files.client_key)]:
        conf.set_override(name, value, group='etcd')
    client_b = config.client_from_conf(conf, 'etcd')
    assert client_b.base_uri.startswith('https://')
    elect_and_watch(client_a, client_b, prefix)


def test_client_without_a_certificate_is_refused(tls_server, prefix):
    good = tls_factory(tls_server, allow_reconnect=False).client()
    good.write(prefix + '/k', 'v')
    bare = tls_factory(tls_server, cert_file=None, key_file=None,
                       allow_reconnect=False).client()
    with pytest.raises(etcd.EtcdConnectionFailed):
        bare.read(prefix + '/k')
    # With allow_reconnect, python-etcd asks for the members at once.
    with pytest.raises(etcd.EtcdException):
        tls_factory(tls_server, cert_file=None, key_file=None).client()


def test_client_certificate_from_another_ca_is_refused(tls_server, prefix,
                                                       tmp_path):
    other = make_tls_files(tmp_path / 'other')
    stranger = tls_factory(tls_server, cert_file=other.client_cert,
                           key_file=other.client_key,
                           allow_reconnect=False).client()
    with pytest.raises(etcd.EtcdConnectionFailed):
        stranger.read('/')


def test_wrong_ca_is_refused(tls_server, tmp_path):
    other = make_tls_files(tmp_path / 'other')
    client = tls_factory(tls_server, ca_cert=other.ca_cert,
                         allow_reconnect=False).client()
    with pytest.raises(etcd.EtcdConnectionFailed,
                       match='CERTIFICATE_VERIFY_FAILED'):
        client.read('/')
    with pytest.raises(etcd.EtcdException):
        tls_factory(tls_server, ca_cert=other.ca_cert).client()


def test_plain_http_to_the_tls_port_is_refused(tls_server):
    client = EtcdClientFactory(host=address(tls_server),
                               allow_reconnect=False).client()
    with pytest.raises(etcd.EtcdConnectionFailed):
        client.read('/')


def test_server_helper_client_speaks_tls(tls_server, prefix):
    client = tls_server.client()
    assert client.protocol == 'https'
    client.write(prefix + '/x', '1')
    assert client.read(prefix + '/x').value == '1'
    assert tls_server.client_url.startswith('https://')


# -- TLS on etcd's v3 API (v2 disabled) ---------------------------------------

def test_v3_right_ca_and_client_cert_work_end_to_end(tls_v3_server, prefix):
    # One client from the factory, one from oslo.config options.
    import etcd3gw
    client_a = tls_factory(tls_v3_server, api_version='v3').client()
    conf = cfg.ConfigOpts()
    config.register_opts(conf, 'etcd')
    conf([])
    files = tls_v3_server.tls_files
    for name, value in [('api_version', 'v3'),
                        ('host', address(tls_v3_server)),
                        ('protocol', 'https'), ('ca_cert', files.ca_cert),
                        ('cert_file', files.client_cert),
                        ('key_file', files.client_key)]:
        conf.set_override(name, value, group='etcd')
    client_b = config.client_from_conf(conf, 'etcd')
    for client in (client_a, client_b):
        assert isinstance(client, etcd3gw.Etcd3Client)
        assert client.base_url.startswith('https://')
    elect_and_watch(client_a, client_b, prefix)


def test_v3_certificate_and_key_in_one_file(tls_v3_server, prefix,
                                            tmp_path):
    files = tls_v3_server.tls_files
    combined = tmp_path / 'client-and-key.pem'
    with open(files.client_cert) as cert, open(files.client_key) as key:
        combined.write_text(cert.read() + key.read())
    client = tls_factory(tls_v3_server, cert_file=str(combined),
                         key_file=None, api_version='v3').client()
    client.put((prefix + '/k').encode(), b'v')
    state, _ = backends.for_client(client).read_key(prefix + '/k')
    assert state.value == 'v'


def test_v3_client_without_a_certificate_is_refused(tls_v3_server, prefix):
    good = tls_factory(tls_v3_server, api_version='v3').client()
    good.put((prefix + '/k').encode(), b'v')
    bare = tls_factory(tls_v3_server, cert_file=None, key_file=None,
                       api_version='v3').client()
    with pytest.raises(exceptions.EtcdUnavailable):
        backends.for_client(bare).read_key(prefix + '/k')
    with pytest.raises(exceptions.EtcdUnavailable):
        EtcdElection(bare, 'svc', prefix + '/election',
                     work_time=10).leader()


@pytest.mark.parametrize('bundle', ['unset', 'right CA'])
def test_v3_wrong_ca_is_refused(tls_v3_server, tmp_path, monkeypatch,
                                bundle):
    # requests would let $REQUESTS_CA_BUNDLE replace the configured CA.
    for name in ('REQUESTS_CA_BUNDLE', 'CURL_CA_BUNDLE'):
        if bundle == 'unset':
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, tls_v3_server.tls_files.ca_cert)
    other = make_tls_files(tmp_path / 'other')
    client = tls_factory(tls_v3_server, ca_cert=other.ca_cert,
                         api_version='v3').client()
    with pytest.raises(exceptions.EtcdUnavailable,
                       match='CERTIFICATE_VERIFY_FAILED'):
        backends.for_client(client).read_key('/k')
    # And through etcd3gw's own calls.
    import etcd3gw.exceptions
    with pytest.raises(etcd3gw.exceptions.ConnectionFailedError) as info:
        client.get(b'/k')
    assert 'CERTIFICATE_VERIFY_FAILED' in info.value.detail_text


def test_v3_right_ca_works_whatever_the_environment_says(
        tls_v3_server, prefix, tmp_path, monkeypatch):
    other = make_tls_files(tmp_path / 'other')
    monkeypatch.setenv('REQUESTS_CA_BUNDLE', other.ca_cert)
    monkeypatch.setenv('CURL_CA_BUNDLE', other.ca_cert)
    client = tls_factory(tls_v3_server, api_version='v3').client()
    assert backends.for_client(client).read_key(prefix + '/k')[0] is None


def test_v3_plain_http_to_the_tls_port_is_refused(tls_v3_server):
    client = EtcdClientFactory(host=address(tls_v3_server),
                               api_version='v3').client()
    with pytest.raises(exceptions.EtcdUnavailable):
        backends.for_client(client).read_key('/k')


def _command(*args, env=None):
    proc = subprocess.run([sys.executable, '-m', 'etcdwatch'] + list(args),
                          cwd=ROOT, capture_output=True, text=True,
                          timeout=TIMEOUT, env=env)
    return proc.returncode, proc.stdout, proc.stderr


def test_v3_command_line_over_tls(tls_v3_server, prefix, tmp_path):
    files = tls_v3_server.tls_files
    url = 'https://' + address(tls_v3_server)
    path = prefix + '/elections'
    other = make_tls_files(tmp_path / 'other')

    def leader(cacert, env_ca):
        # --cacert given; requests' CA variables naming env_ca.
        env = dict(os.environ, REQUESTS_CA_BUNDLE=env_ca,
                   CURL_CA_BUNDLE=env_ca)
        return _command(
            'leader', '--api', 'v3', '--etcd', url, '--cacert', cacert,
            '--cert', files.client_cert, '--key', files.client_key,
            '--election-path', path, 'job', env=env)
    # Reached (no leader: status 1), through v3 with a client certificate,
    # though requests' variable names another CA.
    status, out, err = leader(files.ca_cert, other.ca_cert)
    assert (status, out, err) == (1, '', 'etcdwatch leader: job has no '
                                         'leader\n')
    # And the wrong CA is refused, though the variable names the right one.
    status, out, err = leader(other.ca_cert, files.ca_cert)
    assert (status, out) == (3, '')
    assert len(err.splitlines()) == 1
    assert err.startswith('etcdwatch leader: cannot reach etcd at %s: '
                          % url), err


# -- etcd v2 username/password auth -------------------------------------------

ROOT_PASSWORD = 'root-Pw-41x'
APP_PASSWORD = 'app-Pw-NOT-FOR-LOGS-93k'


def _auth_request(server, method, path, body=None, credentials=None):
    headers = {}
    data = None
    if body is not None:
        data = json.dumps(body)
        headers['Content-Type'] = 'application/json'
    if credentials:
        headers['Authorization'] = 'Basic ' + base64.b64encode(
            credentials.encode('ascii')).decode('ascii')
    if server.tls_files is None:
        conn = http.client.HTTPConnection(server.host, server.port,
                                          timeout=30)
    else:
        files = server.tls_files
        context = ssl.create_default_context(cafile=files.ca_cert)
        context.load_cert_chain(files.client_cert, files.client_key)
        conn = http.client.HTTPSConnection(server.host, server.port,
                                           timeout=30, context=context)
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        text = response.read().decode('utf-8')
    finally:
        conn.close()
    assert response.status in (200, 201), (method, path, text)
    return text


def enable_v2_auth(server):
    """Turn v2 auth on: user 'app' may use /app*, guests nothing.

    etcd 3.5's v2 API: create root, create a role and a user, enable
    auth, then take the guest role's default full access away.  A role's
    '/app*' pattern covers '/app' itself, which a recursive read or watch
    of '/app' needs ('/app/*' would not).
    """
    root = 'root:' + ROOT_PASSWORD
    _auth_request(server, 'PUT', '/v2/auth/users/root',
                  {'user': 'root', 'password': ROOT_PASSWORD})
    _auth_request(server, 'PUT', '/v2/auth/roles/app',
                  {'role': 'app', 'permissions': {'kv': {
                      'read': ['/app*'], 'write': ['/app*']}}})
    _auth_request(server, 'PUT', '/v2/auth/users/app',
                  {'user': 'app', 'password': APP_PASSWORD})
    _auth_request(server, 'PUT', '/v2/auth/users/app',
                  {'user': 'app', 'grant': ['app']})
    _auth_request(server, 'PUT', '/v2/auth/enable')
    _auth_request(server, 'PUT', '/v2/auth/roles/guest',
                  {'role': 'guest', 'revoke': {'kv': {
                      'read': ['/*'], 'write': ['/*']}}},
                  credentials=root)


@pytest.fixture(scope='module')
def auth_server():
    """etcd (plain HTTP) with v2 auth on; see enable_v2_auth()."""
    with EtcdServer(name='auth') as server:
        enable_v2_auth(server)
        yield server


def auth_factory(server, **overrides):
    settings = dict(host=address(server), username='app',
                    password=APP_PASSWORD)
    settings.update(overrides)
    return EtcdClientFactory(**settings)


def test_v2_auth_right_password_works_end_to_end(auth_server):
    prefix = '/app/%s' % uuid.uuid4().hex[:8]
    elect_and_watch(auth_factory(auth_server).client(),
                    auth_factory(auth_server).client(), prefix)


def test_v2_auth_refuses_and_never_shows_the_password(auth_server, caplog):
    caplog.set_level(logging.DEBUG)
    prefix = '/app/%s' % uuid.uuid4().hex[:8]
    secrets = [APP_PASSWORD, base64.b64encode(
        ('app:' + APP_PASSWORD).encode()).decode()]
    client = auth_factory(auth_server).client()
    client.write(prefix + '/k', 'v')
    errors = []
    # Outside the role's keys.
    with pytest.raises(etcd.EtcdInsufficientPermissions) as info:
        client.write('/elsewhere/k', 'v')
    errors.append(info.value)
    # No credentials, and a wrong password.
    anonymous = EtcdClientFactory(host=address(auth_server),
                                  allow_reconnect=False).client()
    with pytest.raises(etcd.EtcdInsufficientPermissions) as info:
        anonymous.read(prefix + '/k')
    errors.append(info.value)
    wrong = auth_factory(auth_server, password=APP_PASSWORD + 'x',
                         allow_reconnect=False)
    with pytest.raises(etcd.EtcdInsufficientPermissions) as info:
        wrong.client().read(prefix + '/k')
    errors.append(info.value)
    # A watcher with a refused client keeps trying; it does not crash.
    watcher = Recorder(wrong.client(), 'refused', prefix, heartbeat=1)
    assert not watcher.synced
    texts = [caplog.text, repr(auth_factory(auth_server))]
    texts += [str(e) for e in errors] + [repr(e) for e in errors]
    for text in texts:
        for secret in secrets:
            assert secret not in text


def test_v2_auth_with_tls_password_or_certificate_name(tmp_path):
    # With --client-cert-auth, etcd takes a request without credentials as
    # coming from the user the client certificate's common name names.
    files = make_tls_files(tmp_path / 'app', client_name='app')
    with EtcdServer(name='tls-auth', tls=files) as server:
        enable_v2_auth(server)
        by_password = tls_factory(server, username='app',
                                  password=APP_PASSWORD).client()
        by_password.write('/app/by-password', '1')
        by_name = tls_factory(server, allow_reconnect=False).client()
        assert by_name.read('/app/by-password').value == '1'
        with pytest.raises(etcd.EtcdInsufficientPermissions):
            by_name.write('/elsewhere', '1')
        wrong = tls_factory(server, username='app', password='wrong',
                            allow_reconnect=False).client()
        # A password given is checked, even with a good certificate.
        with pytest.raises(etcd.EtcdInsufficientPermissions):
            wrong.read('/app/by-password')


# -- the server helper's TLS --------------------------------------------------

def test_server_with_given_files_without_client_cert_auth(tmp_path):
    files = make_tls_files(tmp_path / 'given')
    with EtcdServer(name='tls-given', tls=files,
                    client_cert_auth=False) as server:
        assert server.tls_files == files
        client = server.client(cert=None)       # no client certificate
        client.write('/x', '1')
        server.restart()                          # same files, same data
        assert server.client(cert=None).read('/x').value == '1'
    with open(files.ca_cert) as f:      # given files are never deleted
        assert 'BEGIN CERTIFICATE' in f.read()


def test_server_tls_files_live_until_cleanup():
    server = EtcdServer(name='tls-life', tls=True)
    try:
        assert server.tls_files is None             # made on first start
        server.start()
        files = server.tls_files
        with open(files.ca_cert) as f:
            first_ca = f.read()
        client = server.client()
        client.write('/x', '1')
        server.restart()                # same files: old clients still work
        assert server.tls_files == files
        assert client.read('/x').value == '1'
        server.cleanup()
        assert server.tls_files is None
        assert not os.path.exists(files.ca_cert)
        server.start()                  # a brand-new server, a new CA
        with open(server.tls_files.ca_cert) as f:
            assert f.read() != first_ca
        assert server.client().write('/y', '1').value == '1'
    finally:
        server.cleanup()


def test_server_tls_argument_is_checked():
    with pytest.raises(ValueError, match='tls'):
        EtcdServer(tls='yes')
