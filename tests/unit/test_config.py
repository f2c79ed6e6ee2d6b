"""etcdwatch.config: host parsing, checks, the client it builds, oslo.config.

Nothing here talks to etcd: clients are built with allow_reconnect=False
(python-etcd then sends nothing until the first request), through a
recording stand-in for ``etcd.Client``, or are etcd3gw clients (which send
nothing until used).
"""

import base64
import configparser
import logging
import os
import socket
import subprocess
import sys

import etcd
from oslo_config import cfg
import pytest

from etcdwatch import config
from etcdwatch.config import ConfigError
from etcdwatch.config import EtcdClientFactory
from etcdwatch.config import parse_hosts
from etcdwatch.testing.server import make_tls_files

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

# Distinctive, so a leak cannot hide behind a common word.
PASSWORD = 'pw-Zq81-NOT-FOR-LOGS'


@pytest.fixture(scope='module')
def tls(tmp_path_factory):
    return make_tls_files(tmp_path_factory.mktemp('tls'))


@pytest.fixture
def no_client(monkeypatch):
    """Fails the test if anything builds an etcd.Client."""
    def refuse(*args, **kwargs):
        raise AssertionError('etcd.Client built')
    monkeypatch.setattr(config.etcd, 'Client', refuse)


def assert_prints_ok_in_a_fresh_interpreter(code):
    """Run ``code`` in a new Python; it must print ``ok`` and exit 0.

    A new one, because this one may have imported anything already.
    """
    result = subprocess.run([sys.executable, '-c', code], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == 'ok'


@pytest.fixture
def no_v3_client(monkeypatch):
    """Fails the test if anything builds an etcd3gw client."""
    import etcd3gw

    def refuse(*args, **kwargs):
        raise AssertionError('etcd3gw client built')
    monkeypatch.setattr(etcd3gw, 'client', refuse)
    monkeypatch.setattr(etcd3gw, 'Etcd3Client', refuse)
    from etcdwatch import v3client
    monkeypatch.setattr(v3client.FailoverEtcd3Client, '__init__', refuse)


@pytest.fixture
def recorded(monkeypatch):
    """etcd.Client replaced by a recorder; returns the list of kwargs."""
    calls = []

    def record(**kwargs):
        calls.append(kwargs)
        return kwargs
    monkeypatch.setattr(config.etcd, 'Client', record)
    return calls


# -- hosts --------------------------------------------------------------------

@pytest.mark.parametrize('text,expected', [
    ('10.0.0.1:2379,10.0.0.2:2379', [('10.0.0.1', 2379),
                                     ('10.0.0.2', 2379)]),
    ('etcd1', [('etcd1', 4001)]),
    (' etcd1 , etcd-2.example.org:1 ', [('etcd1', 4001),
                                        ('etcd-2.example.org', 1)]),
    ('[::1]:2379', [('[::1]', 2379)]),
    ('[fd00::1]', [('[fd00::1]', 4001)]),
    ('[fd00::1]:65535,10.0.0.1', [('[fd00::1]', 65535),
                                  ('10.0.0.1', 4001)]),
    (['a:1', 'b'], [('a', 1), ('b', 4001)]),
])
def test_parse_hosts(text, expected):
    assert parse_hosts(text, default_port=4001) == expected


@pytest.mark.parametrize('text,words', [
    ('', 'no host'),
    ('  ', 'no host'),
    ([], 'no host'),
    ('a,,b', 'entry 2 of 3 is empty'),
    ('a,', 'entry 2 of 2 is empty'),
    ('a:', 'port'),
    ('a:0', 'port'),
    ('a:65536', 'port'),
    ('a:x', 'port'),
    ('a:-1', 'port'),
    ('::1', 'brackets'),
    ('fd00::1:2379', 'brackets'),
    ('[::1', 'IPv6 address in brackets'),
    ('a]:1', 'IPv6 address in brackets'),
    ('[not-ipv6]:2379', 'IPv6'),
    ('[fe80::1%eth0]:2379', 'zone'),
    ('http://a:2379', 'not URLs'),
    ('a b', 'host name'),
    ('999.1.1.1', 'IPv4'),
    (None, 'must be a string'),
    (2379, 'must be a string'),
])
def test_bad_hosts_name_the_option(text, words):
    with pytest.raises(ConfigError) as info:
        parse_hosts(text)
    assert info.value.option == 'host'
    assert str(info.value).startswith('etcd option host: ')
    assert words in str(info.value)


def test_credentials_in_a_host_entry_are_not_echoed():
    with pytest.raises(ConfigError, match='username and password') as info:
        parse_hosts('app:%s@10.0.0.1:2379' % PASSWORD)
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize('port', [0, 65536, 'x', True, None, 1.5])
def test_bad_default_port(port):
    with pytest.raises(ConfigError) as info:
        parse_hosts('a', default_port=port)
    assert info.value.option == 'port'


# -- checks before any connection ---------------------------------------------

def _bad_settings(tls, tmp_path):
    """(option the error must name, factory kwargs) pairs."""
    missing = str(tmp_path / 'missing.pem')
    garbage = tmp_path / 'garbage.pem'
    garbage.write_text('not a certificate\n')
    https = dict(protocol='https', ca_cert=tls.ca_cert)
    return [
        ('host', dict(host='')),
        ('host', dict(host='a:99999')),
        ('port', dict(port=0)),
        ('protocol', dict(protocol='ftp')),
        ('protocol', dict(protocol='HTTPS', ca_cert=tls.ca_cert)),
        ('ca_cert', dict(protocol='https')),
        ('ca_cert', dict(protocol='https', ca_cert=missing)),
        ('ca_cert', dict(protocol='https', ca_cert=str(garbage))),
        ('ca_cert', dict(protocol='https', ca_cert=str(tmp_path))),
        ('cert_file', dict(https, cert_file=missing)),
        ('key_file', dict(https, cert_file=tls.client_cert,
                          key_file=missing)),
        ('cert_file', dict(https, key_file=tls.client_key)),
        ('cert_file', dict(https, cert_file=tls.client_cert)),   # no key
        ('cert_file', dict(https, cert_file=tls.client_cert,
                           key_file=tls.server_key)),            # mismatch
        ('protocol', dict(ca_cert=tls.ca_cert)),
        ('protocol', dict(cert_file=tls.client_cert,
                          key_file=tls.client_key)),
        ('password', dict(username='app')),
        ('username', dict(password=PASSWORD)),
        ('username', dict(username='a:b', password=PASSWORD)),
        ('username', dict(username='caf\u00e9', password=PASSWORD)),
        ('password', dict(username='app', password=PASSWORD + '\u20ac')),
        ('password', dict(username='app', password=PASSWORD + '\n')),
        ('password', dict(username='app', password=b'bytes')),
        ('read_timeout', dict(read_timeout=0)),
        ('read_timeout', dict(read_timeout=-1)),
        ('read_timeout', dict(read_timeout='10')),
        ('read_timeout', dict(read_timeout=True)),
        ('read_timeout', dict(read_timeout=float('inf'))),
        ('allow_reconnect', dict(host='a,b', allow_reconnect=False)),
        ('allow_reconnect', dict(allow_reconnect='yes')),
        ('api_version', dict(api_version='v4')),
        ('api_version', dict(api_version='V3')),
        ('api_version', dict(api_version=3)),
        ('api_version', dict(api_version=None)),
        # v3 checked like v2.
        ('password', dict(api_version='v3', username='app')),
        ('username', dict(api_version='v3', password=PASSWORD)),
        ('password', dict(api_version='v3', username='app',
                          password=PASSWORD + '\n')),
        ('host', dict(api_version='v3', host='')),
        ('ca_cert', dict(api_version='v3', protocol='https')),
        ('protocol', dict(api_version='v3', ca_cert=tls.ca_cert)),
        ('cert_file', dict(https, api_version='v3',
                           cert_file=tls.client_cert,
                           key_file=tls.server_key)),
        ('read_timeout', dict(api_version='v3', read_timeout=0)),
    ]


def test_every_bad_setting_raises_one_error_naming_its_option(
        tls, tmp_path, no_client, no_v3_client, caplog):
    caplog.set_level(logging.DEBUG)
    for option, kwargs in _bad_settings(tls, tmp_path):
        with pytest.raises(ConfigError) as info:
            EtcdClientFactory(**kwargs)
        error = info.value
        assert isinstance(error, ValueError)
        assert error.option == option, (kwargs, str(error))
        assert str(error).startswith('etcd option %s: ' % option)
        assert PASSWORD not in str(error) and PASSWORD not in repr(error)
    assert PASSWORD not in caplog.text


def test_encrypted_key_is_refused_without_prompting(tls, tmp_path):
    from cryptography.hazmat.primitives import serialization
    with open(tls.client_key, 'rb') as f:
        key = serialization.load_pem_private_key(f.read(), None)
    encrypted = tmp_path / 'encrypted-key.pem'
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b'key password')))
    with pytest.raises(ConfigError, match='encrypted') as info:
        EtcdClientFactory(protocol='https', ca_cert=tls.ca_cert,
                          cert_file=tls.client_cert,
                          key_file=str(encrypted))
    assert info.value.option == 'key_file'


def test_empty_strings_mean_unset(recorded):
    factory = EtcdClientFactory(username='', password='', ca_cert='',
                                cert_file='', key_file='',
                                allow_reconnect=False)
    factory.client()
    assert 'username' not in recorded[0] and 'ca_cert' not in recorded[0]
    assert 'cert' not in recorded[0]


# -- the client ---------------------------------------------------------------

def test_single_host_kwargs(recorded):
    EtcdClientFactory(host='10.0.0.1', port=4001).client()
    assert recorded == [{'host': '10.0.0.1', 'port': 4001,
                         'protocol': 'http', 'read_timeout': 10.0,
                         'allow_reconnect': True}]


def test_several_hosts_and_tls_kwargs(recorded, tls):
    EtcdClientFactory(host='10.0.0.1:2379,[fd00::2]', protocol='https',
                      ca_cert=tls.ca_cert, cert_file=tls.client_cert,
                      key_file=tls.client_key, username='app',
                      password=PASSWORD, read_timeout=2.5).client()
    assert recorded == [{
        'host': (('10.0.0.1', 2379), ('[fd00::2]', 2379)),
        'protocol': 'https', 'read_timeout': 2.5, 'allow_reconnect': True,
        'ca_cert': tls.ca_cert, 'cert': (tls.client_cert, tls.client_key),
        'username': 'app', 'password': PASSWORD}]


def test_combined_cert_and_key_file(recorded, tls, tmp_path):
    combined = tmp_path / 'combined.pem'
    with open(tls.client_cert) as cert, open(tls.client_key) as key:
        combined.write_text(cert.read() + key.read())
    EtcdClientFactory(protocol='https', ca_cert=tls.ca_cert,
                      cert_file=str(combined)).client()
    assert recorded[0]['cert'] == str(combined)


def test_real_python_etcd_client(tls):
    client = EtcdClientFactory(host='[::1]:2380', protocol='https',
                               ca_cert=tls.ca_cert,
                               cert_file=tls.client_cert,
                               key_file=tls.client_key, read_timeout=3,
                               allow_reconnect=False).client()
    assert isinstance(client, etcd.Client)
    assert client.base_uri == 'https://[::1]:2380'
    assert client.read_timeout == 3
    pool_kw = client.http.connection_pool_kw
    assert pool_kw['ca_certs'] == tls.ca_cert
    assert pool_kw['cert_file'] == tls.client_cert
    assert pool_kw['key_file'] == tls.client_key


# -- api_version = v3: etcd3gw clients ---------------------------------------

def test_v3_kwargs_and_real_etcd3gw_client(tls):
    import etcd3gw
    factory = EtcdClientFactory(host='[::1]:2380', protocol='https',
                                ca_cert=tls.ca_cert,
                                cert_file=tls.client_cert,
                                key_file=tls.client_key, read_timeout=3,
                                api_version='v3')
    assert factory.client_kwargs() == {
        'endpoints': [('::1', 2380)], 'protocol': 'https', 'timeout': 3,
        'ca_cert': tls.ca_cert, 'cert_cert': tls.client_cert,
        'cert_key': tls.client_key}
    # Nothing listens on [::1]:2380: the client sends nothing yet.
    client = factory.client()
    assert isinstance(client, etcd3gw.Etcd3Client)
    assert client.base_url == 'https://[::1]:2380'
    assert client.timeout == 3
    assert client.session.verify == tls.ca_cert
    assert client.session.cert == (tls.client_cert, tls.client_key)
    # $REQUESTS_CA_BUNDLE would replace ca_cert: the environment is off.
    assert client.session.trust_env is False
    assert factory.client() is not client
    assert 'api_version=v3' in repr(factory)


def test_v3_several_hosts_give_a_client_that_fails_over():
    from etcdwatch import v3client
    factory = EtcdClientFactory(host='a:1,[fd00::2]:2,c', port=3,
                                api_version='v3', allow_reconnect=False)
    client = factory.client()
    assert isinstance(client, v3client.FailoverEtcd3Client)
    assert client.endpoints == [('a', 1), ('fd00::2', 2), ('c', 3)]
    assert client.base_url == 'http://a:1'
    assert client.failover() == 'http://[fd00::2]:2'
    assert client.session.trust_env is False


def test_v3_plain_http_defaults():
    client = EtcdClientFactory(api_version='v3').client()
    assert client.base_url == 'http://127.0.0.1:2379'
    assert client.timeout == config.DEFAULT_READ_TIMEOUT
    assert client.session.verify is True and client.session.cert is None


def test_v3_combined_cert_and_key_file(tls, tmp_path):
    # etcd3gw drops a certificate given without a key: it gets the file
    # twice.
    combined = tmp_path / 'combined.pem'
    with open(tls.client_cert) as cert, open(tls.client_key) as key:
        combined.write_text(cert.read() + key.read())
    client = EtcdClientFactory(protocol='https', ca_cert=tls.ca_cert,
                               cert_file=str(combined),
                               api_version='v3').client()
    assert client.session.cert == (str(combined), str(combined))


def test_v3_without_etcd3gw_names_the_option_and_the_extra(monkeypatch):
    factory = EtcdClientFactory(api_version='v3')
    # None in sys.modules: "import etcd3gw" fails, as if not installed.
    monkeypatch.setitem(sys.modules, 'etcd3gw', None)
    with pytest.raises(ConfigError) as info:
        EtcdClientFactory(api_version='v3')
    assert info.value.option == 'api_version'
    assert "pip install '.[v3]'" in str(info.value)
    # Gone after the factory was made: the same error from client().
    with pytest.raises(ConfigError) as info:
        factory.client()
    assert info.value.option == 'api_version'
    assert "pip install '.[v3]'" in str(info.value)
    # v2 does not need it.
    assert EtcdClientFactory(allow_reconnect=False).client().port == 2379


def test_v3_imports_etcd3gw_only_in_client():
    # A fresh interpreter: this one may have imported etcd3gw already.
    code = (
        'import sys, warnings\n'
        'warnings.simplefilter("error")\n'
        'from etcdwatch import config\n'
        'factory = config.EtcdClientFactory(api_version="v3")\n'
        'repr(factory), factory.client_kwargs()\n'
        'assert "etcd3gw" not in sys.modules\n'
        'assert "eventlet" not in sys.modules\n'
        'warnings.resetwarnings()\n'
        'warnings.simplefilter("ignore")\n'
        'client = factory.client()\n'
        'assert type(client).__module__ == "etcdwatch.v3client"\n'
        'print("ok")\n')
    assert_prints_ok_in_a_fresh_interpreter(code)


def test_v3_from_conf(tmp_path, tls):
    import etcd3gw
    conf_file = tmp_path / 'agent.conf'
    conf_file.write_text('[etcd]\napi_version = v3\n'
                         'host = etcd.example:2379\nprotocol = https\n'
                         'ca_cert = %s\ncert_file = %s\nkey_file = %s\n'
                         'read_timeout = 4\n'
                         % (tls.ca_cert, tls.client_cert, tls.client_key))
    conf = cfg.ConfigOpts()
    config.register_opts(conf)
    conf(['--config-file', str(conf_file)])
    client = config.client_from_conf(conf)
    assert isinstance(client, etcd3gw.Etcd3Client)
    assert client.base_url == 'https://etcd.example:2379'
    assert client.timeout == 4
    assert client.session.cert == (tls.client_cert, tls.client_key)


def test_v3_conf_errors_name_group_and_option(tmp_path, no_v3_client):
    conf_file = tmp_path / 'agent.conf'
    conf_file.write_text('[ml2_etcd]\napi_version = v3\n'
                         'username = app\n')
    conf = cfg.ConfigOpts()
    config.register_opts(conf, 'ml2_etcd')
    conf(['--config-file', str(conf_file)])
    with pytest.raises(ConfigError) as info:
        config.client_from_conf(conf, 'ml2_etcd')
    assert str(info.value).startswith('etcd option [ml2_etcd] password: ')


def test_v3_user_and_password_authenticate_without_showing_it(caplog):
    caplog.set_level(logging.DEBUG)
    factory = EtcdClientFactory(api_version='v3', username='app:1',
                                password=PASSWORD, host='a:1,b:2')
    kwargs = factory.client_kwargs()
    assert kwargs['username'] == 'app:1' and kwargs['password'] == '***'
    client = factory.client()
    assert client.auth.username == 'app:1'
    assert client.auth.headers() == {}
    shown = (repr(factory) + repr(client) + repr(client.auth) +
             str(kwargs) + caplog.text)
    assert 'app:1' in repr(client)
    assert PASSWORD not in shown


def test_bad_api_version_in_a_file_is_an_oslo_error(tmp_path):
    conf_file = tmp_path / 'agent.conf'
    conf_file.write_text('[etcd]\napi_version = v4\n')
    conf = cfg.ConfigOpts()
    config.register_opts(conf)
    conf(['--config-file', str(conf_file)])
    with pytest.raises(ValueError, match='api_version'):
        config.client_from_conf(conf)


# -- the password stays secret ------------------------------------------------

def _closed_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def test_password_never_in_logs_repr_or_errors(caplog):
    caplog.set_level(logging.DEBUG)
    secrets = [PASSWORD,
               base64.b64encode(('app:' + PASSWORD).encode()).decode()]
    factory = EtcdClientFactory(host='127.0.0.1:%d' % _closed_port(),
                                username='app', password=PASSWORD,
                                allow_reconnect=False)
    texts = [repr(factory), str(factory),
             repr(factory.client_kwargs())]
    client = factory.client()
    assert client.password == PASSWORD      # it does reach python-etcd
    with pytest.raises(etcd.EtcdConnectionFailed) as info:
        client.read('/a')
    texts += [str(info.value), repr(info.value)]
    # The warning about a password over plain HTTP names the user only.
    assert 'plain HTTP' in caplog.text
    texts.append(caplog.text)
    for text in texts:
        for secret in secrets:
            assert secret not in text


def test_password_masked_by_oslo_config(caplog):
    conf = cfg.ConfigOpts()
    config.register_opts(conf)
    conf([])
    conf.set_override('username', 'app', group='etcd')
    conf.set_override('password', PASSWORD, group='etcd')
    caplog.set_level(logging.DEBUG)
    conf.log_opt_values(logging.getLogger('test'), logging.DEBUG)
    assert 'etcd.password' in caplog.text
    assert PASSWORD not in caplog.text


# -- oslo.config --------------------------------------------------------------

OPTION_NAMES = ['api_version', 'host', 'port', 'protocol', 'username',
                'password', 'ca_cert', 'cert_file', 'key_file',
                'read_timeout', 'allow_reconnect']


def test_list_opts():
    [(group, opts)] = config.list_opts()
    assert group == 'etcd'
    assert [o.name for o in opts] == OPTION_NAMES
    assert all(o.help for o in opts)
    assert [o.name for o in opts if o.secret] == ['password']
    [api] = [o for o in opts if o.name == 'api_version']
    assert api.default == 'v2'
    assert list(api.type.choices) == ['v2', 'v3']
    assert 'enable-v2' in api.help and '3.4' in api.help
    # Copies: a caller changing them changes nothing registered later.
    assert config.list_opts()[0][1][0] is not opts[0]


def test_entry_point_in_setup_cfg():
    parser = configparser.ConfigParser()
    parser.read(os.path.join(ROOT, 'setup.cfg'))
    lines = [line.strip() for line in
             parser['entry_points']['oslo.config.opts'].splitlines()
             if line.strip()]
    assert 'etcdwatch = etcdwatch.config:list_opts' in lines


def test_options_go_into_the_callers_group(tmp_path, recorded):
    conf_file = tmp_path / 'agent.conf'
    conf_file.write_text('[my_etcd]\n'
                         'host = 10.0.0.1:2379, 10.0.0.2\n'
                         'port = 4001\n'
                         'read_timeout = 3\n')
    conf = cfg.ConfigOpts()
    config.register_opts(conf, group='my_etcd')
    config.register_opts(conf, group='my_etcd')     # idempotent
    conf(['--config-file', str(conf_file)])
    assert 'etcd' not in conf
    factory = EtcdClientFactory.from_conf(conf, 'my_etcd')
    assert factory.api_version == 'v2'
    assert factory.hosts == [('10.0.0.1', 2379), ('10.0.0.2', 4001)]
    assert factory.read_timeout == 3
    config.client_from_conf(conf, 'my_etcd')
    assert recorded[0]['host'] == (('10.0.0.1', 2379), ('10.0.0.2', 4001))


def test_option_group_object(recorded):
    conf = cfg.ConfigOpts()
    group = cfg.OptGroup('etcd_conn', title='etcd connection')
    conf.register_group(group)
    config.register_opts(conf, group)
    conf([])
    conf.set_override('host', 'e1', group='etcd_conn')
    config.client_from_conf(conf, group)
    assert recorded[0]['host'] == 'e1'


def test_client_from_conf_registers_the_options(recorded):
    conf = cfg.ConfigOpts()
    conf([])
    config.client_from_conf(conf)
    assert recorded[0]['host'] == '127.0.0.1'
    assert recorded[0]['port'] == 2379


def test_conf_errors_name_group_and_option(tmp_path):
    conf_file = tmp_path / 'agent.conf'
    conf_file.write_text('[ml2_etcd]\nprotocol = https\n'
                         'password = %s\n' % PASSWORD)
    conf = cfg.ConfigOpts()
    config.register_opts(conf, 'ml2_etcd')
    conf(['--config-file', str(conf_file)])
    with pytest.raises(ConfigError) as info:
        config.client_from_conf(conf, 'ml2_etcd')
    assert info.value.group == 'ml2_etcd'
    assert str(info.value).startswith('etcd option [ml2_etcd] ca_cert: ')
    assert PASSWORD not in str(info.value)


def test_bad_values_in_a_file_are_oslo_errors_naming_the_option(tmp_path):
    conf_file = tmp_path / 'agent.conf'
    conf_file.write_text('[etcd]\nprotocol = ftp\n')
    conf = cfg.ConfigOpts()
    config.register_opts(conf)
    conf(['--config-file', str(conf_file)])
    with pytest.raises(ValueError, match='protocol'):
        config.client_from_conf(conf)


def test_networking_vpp_option_names_still_read(tmp_path, recorded):
    conf_file = tmp_path / 'agent.conf'
    conf_file.write_text('[ml2_vpp]\netcd_host = 10.0.0.9\n'
                         'etcd_port = 4001\netcd_user = app\n'
                         'etcd_pass = %s\n' % PASSWORD)
    conf = cfg.ConfigOpts()
    config.register_opts(conf, 'ml2_vpp')
    conf(['--config-file', str(conf_file)])
    config.client_from_conf(conf, 'ml2_vpp')
    assert recorded[0]['host'] == '10.0.0.9'
    assert recorded[0]['port'] == 4001
    assert recorded[0]['password'] == PASSWORD


def test_nothing_registered_on_the_global_conf_at_import():
    # A fresh interpreter: this one may have imported anything already.
    code = (
        'from oslo_config import cfg\n'
        'from oslo_log import log\n'
        'before = sorted(cfg.CONF)\n'
        'import etcdwatch, etcdwatch.config, etcdwatch.codecs\n'
        'import etcdwatch.watcher, etcdwatch.election\n'
        'assert sorted(cfg.CONF) == before, (before, sorted(cfg.CONF))\n'
        'assert "etcd" not in cfg.CONF\n'
        'print("ok")\n')
    assert_prints_ok_in_a_fresh_interpreter(code)
