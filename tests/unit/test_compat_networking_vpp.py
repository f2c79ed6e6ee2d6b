"""etcdwatch.compat.networking_vpp: networking-vpp's etcdutils, on etcdwatch.

networking-vpp's own unit tests run against this module too (outside this
repository; see docs/migration.rst).  These are ours: options, the client
factory, the writers and their results, JWT signing with certificates made
here, the exceptions, the election and the watchers' hooks.
"""

import datetime
import inspect
import json
import logging
import sys
import time
import types

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography import x509
from cryptography.x509.oid import NameOID
import etcd
import jwt
from oslo_config import cfg
import pytest

from etcdwatch.compat import networking_vpp as nv
from etcdwatch.compat import networking_vpp_jwt as nv_jwt
from etcdwatch import config
from etcdwatch import election
from etcdwatch import exceptions
from etcdwatch.testing import FakeEtcdClient
from etcdwatch.testing.server import make_tls_files
from tests.helpers import Runner
from tests.helpers import wait_until

# The public names of networking_vpp/etcdutils.py (2020-12), every one.
NETWORKING_VPP_NAMES = [
    'ETC_HOSTS_DELIMITER', 'ETC_PORT_HOST_DELIMITER', 'EtcdChangeWatcher',
    'EtcdClientFactory', 'EtcdElection', 'EtcdElectionLost', 'EtcdHelper',
    'EtcdJSONWriter', 'EtcdWatcher', 'EtcdWriter', 'ParsedEtcdResult',
    'SignedEtcdJSONWriter', 'cleanup_electors', 'json_writer', 'list_opts',
    'register_etcd_conn_opts']
PASSWORD = 'pw-Zq81-secret'


# -- certificates made here ---------------------------------------------------

def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _cert(subject, key, issuer, issuer_key, ca=False, days=30, back=1):
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder()
            .subject_name(_name(subject)).issuer_name(_name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=back))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None),
                           critical=True)
            .sign(issuer_key, hashes.SHA256()))


def _rsa():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write(path, data):
    path.write_bytes(data)
    return str(path)


def _pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope='module')
def pki(tmp_path_factory):
    """A CA; 'compute1' and 'Controller-1' issued by it; one by another CA."""
    d = tmp_path_factory.mktemp('pki')
    ca_key, other_ca_key = _rsa(), _rsa()
    ca = _cert('test-ca', ca_key, 'test-ca', ca_key, ca=True)
    files = types.SimpleNamespace(ca=_write(d / 'ca.pem', _pem(ca)))
    for label, cn, issuer_key, issuer in (
            ('compute', 'compute1', ca_key, 'test-ca'),
            ('controller', 'Controller-1', ca_key, 'test-ca'),
            ('stranger', 'compute1', other_ca_key, 'test-ca'),
            ('expired', 'compute1', ca_key, 'test-ca')):
        key = _rsa()
        if label == 'expired':
            cert = _cert(cn, key, issuer, issuer_key, days=-1, back=10)
        else:
            cert = _cert(cn, key, issuer, issuer_key)
        setattr(files, label, (_write(d / (label + '.pem'), _pem(cert)),
                               _write(d / (label + '.key'), _key_pem(key))))
        setattr(files, label + '_key', key)
    return files


def _utils(pki, who='compute'):
    cert, key = getattr(pki, who)
    return nv_jwt.JWTUtils(cert, key, pki.ca, 'Controller.*')


COMPUTE_KEY = '/networking-vpp/state/compute1/ports/p1'
CONTROLLER_KEY = '/networking-vpp/nodes/compute1/ports/p1'
VALUE = {'mtu': 1500, 'fixed_ips': ['10.0.0.5'], 'up': True}


# -- names and options --------------------------------------------------------

def test_star_import_gives_every_networking_vpp_name():
    namespace = {}
    exec('from etcdwatch.compat.networking_vpp import *', namespace)
    missing = [n for n in NETWORKING_VPP_NAMES if n not in namespace]
    assert missing == []
    assert all(hasattr(nv, n) for n in nv.__all__)


def test_parameter_names_are_networking_vpps():
    def names(func):
        return list(inspect.signature(func).parameters)[:7]
    assert names(nv.EtcdElection) == [
        'etcd_client', 'name', 'election_path', 'work_time',
        'recovery_time', 'multi_worker_ok', 'handler']
    assert names(nv.EtcdChangeWatcher) == [
        'etcd_client', 'name', 'watch_path', 'election_path',
        'wait_until_elected', 'recovery_time', 'data']
    assert names(nv.EtcdChangeWatcher.added) == ['self', 'key', 'value']
    assert names(nv.EtcdChangeWatcher.removed) == ['self', 'key']
    assert names(nv.EtcdWatcher.removed) == ['self', 'key']
    assert names(nv.EtcdClientFactory) == ['conf_group']
    assert names(nv.register_etcd_conn_opts) == ['cfg', 'group']
    assert names(nv.EtcdWriter.write) == [
        'self', 'key', 'data', 'args', 'kwargs']


def test_list_opts_is_a_list_of_networking_vpps_options():
    opts = nv.list_opts()
    assert isinstance(opts, list)
    assert [(o.name, o.default) for o in opts] == [
        ('etcd_host', '127.0.0.1'), ('etcd_port', 4001),
        ('etcd_user', None), ('etcd_pass', None),
        ('etcd_insecure_explicit_disable_https', True),
        ('etcd_ca_cert', None)]
    assert [o.name for o in opts if o.secret] == ['etcd_pass']
    opts.append('junk')
    assert len(nv.list_opts()) == 6


@pytest.fixture
def conf():
    conf = cfg.ConfigOpts()
    conf([], project='test')
    nv.register_etcd_conn_opts(conf, 'ml2_vpp')
    nv.register_etcd_conn_opts(conf, 'ml2_vpp')   # idempotent
    return conf


def test_registered_options_take_overrides(conf):
    assert conf.ml2_vpp.etcd_port == 4001
    conf.set_override('etcd_host', 'e1:2379,e2', group='ml2_vpp')
    conf.set_override('etcd_port', 2380, group='ml2_vpp')
    factory = nv.EtcdClientFactory(conf.ml2_vpp)
    assert factory.etcd_args['host'] == (('e1', 2379), ('e2', 2380))


# -- the client factory -------------------------------------------------------

class Group(object):
    """What networking-vpp's tests hand the factory: an option group."""

    def __init__(self, host='127.0.0.1', port=4001, user=None, pw=None,
                 https=False, ca=None):
        self.etcd_host = host
        self.etcd_port = port
        self.etcd_user = user
        self.etcd_pass = pw
        self.etcd_insecure_explicit_disable_https = not https
        self.etcd_ca_cert = ca


def test_factory_defaults_as_networking_vpp(conf, caplog):
    with caplog.at_level(logging.WARNING):
        factory = nv.EtcdClientFactory(conf.ml2_vpp)
    assert factory.etcd_args == {'host': (('127.0.0.1', 4001),),
                                 'username': None, 'password': None,
                                 'allow_reconnect': True}
    assert 'not using HTTPS' in caplog.text


@pytest.mark.parametrize('host, expected', [
    ('10.0.0.1', (('10.0.0.1', 9999),)),
    ('h1.lab:123', (('h1.lab', 123),)),
    ('a:1,b,c:3', (('a', 1), ('b', 9999), ('c', 3))),
    ('[fd00::1]:2379,[fd00::2]', (('[fd00::1]', 2379), ('[fd00::2]', 9999))),
])
def test_factory_hosts(host, expected):
    assert nv.EtcdClientFactory(Group(host, 9999)).etcd_args['host'] == \
        expected


@pytest.mark.parametrize('host', [
    '', ',', 'h1,', ',h2', 'h1,,h2', 'h1:', 'h1::123', 'h1:1:2', 'h1:x',
    'h1:99999', 'fd00::1', 'http://h1', 'user:pw@h1'])
def test_bad_host_raises_invalid_host_config_naming_the_option(host):
    with pytest.raises(nv.InvalidEtcHostConfig) as caught:
        nv.EtcdClientFactory(Group(host, 9999))
    assert isinstance(caught.value, ValueError)
    assert caught.value.option == 'etcd_host'
    assert 'pw' not in str(caught.value)


@pytest.mark.parametrize('host', [None, 1, ['h1']])
def test_host_not_a_string_raises_invalid_hosts_config(host):
    with pytest.raises(nv.InvalidEtcHostsConfig, match='etcd_host'):
        nv.EtcdClientFactory(Group(host))


def test_bad_default_port_names_etcd_port():
    with pytest.raises(nv.InvalidEtcHostConfig) as caught:
        nv.EtcdClientFactory(Group('h1', 0))
    assert caught.value.option == 'etcd_port'


def test_https_needs_a_ca_file(tmp_path):
    with pytest.raises(nv.InvalidEtcdCAConfig, match='etcd_ca_cert'):
        nv.EtcdClientFactory(Group(https=True, ca=None))
    with pytest.raises(nv.InvalidEtcdCAConfig) as caught:
        nv.EtcdClientFactory(Group(https=True,
                                   ca=str(tmp_path / 'missing.pem')))
    assert 'does not exist' in str(caught.value)
    assert isinstance(caught.value.__cause__, config.ConfigError)


def test_https_with_a_ca(tmp_path):
    tls = make_tls_files(tmp_path)
    factory = nv.EtcdClientFactory(Group('h1:2379', https=True,
                                         ca=tls.ca_cert))
    assert factory.etcd_args['protocol'] == 'https'
    assert factory.etcd_args['ca_cert'] == tls.ca_cert


def test_credentials_pass_through_and_never_show():
    factory = nv.EtcdClientFactory(Group(user='uuu', pw=PASSWORD))
    assert factory.etcd_args['username'] == 'uuu'
    assert factory.etcd_args['password'] == PASSWORD
    assert PASSWORD not in repr(factory)
    assert 'uuu' in repr(factory)


def test_half_credentials_raise_naming_the_missing_one():
    with pytest.raises(config.ConfigError) as caught:
        nv.EtcdClientFactory(Group(user='uuu', pw=None))
    assert caught.value.option == 'etcd_pass'
    with pytest.raises(config.ConfigError) as caught:
        nv.EtcdClientFactory(Group(user='uuu', pw=PASSWORD + '\u00e9'))
    assert caught.value.option == 'etcd_pass'
    assert PASSWORD not in str(caught.value)


def test_client_uses_etcd_args_as_they_are_then():
    factory = nv.EtcdClientFactory(Group('h1:2379,h2:2380'))
    factory.etcd_args['allow_reconnect'] = False
    factory.etcd_args['host'] = 'h3'
    client = factory.client()
    assert isinstance(client, etcd.Client)
    assert client.host == 'h3'


# -- exceptions ---------------------------------------------------------------

def test_own_exceptions_outside_networking_vpp():
    assert 'networking_vpp' not in sys.modules
    for cls in (nv.InvalidEtcHostConfig, nv.InvalidEtcHostsConfig,
                nv.InvalidEtcdCAConfig):
        assert cls.__module__ == nv.__name__
        assert issubclass(cls, config.ConfigError)
    assert nv.EtcdElectionLost is exceptions.EtcdElectionLost


@pytest.fixture
def networking_vpp(monkeypatch):
    """A stand-in networking_vpp package with exceptions and jwt_agent."""
    package = types.ModuleType('networking_vpp')
    package.__path__ = []
    excs = types.ModuleType('networking_vpp.exceptions')
    agent = types.ModuleType('networking_vpp.jwt_agent')

    class Neutronish(Exception):
        def __init__(self, **kwargs):
            super(Neutronish, self).__init__('fixed message')

    for name in ('InvalidEtcdCAConfig', 'InvalidEtcHostsConfig',
                 'InvalidEtcHostConfig'):
        setattr(excs, name, type(name, (Neutronish,), {}))

    class JWTUtils(object):
        made = []

        def __init__(self, *args):
            self.made.append(args)

        def should_path_be_signed(self, path):
            return False

        get_signer_name = sign = verify = should_path_be_signed

    agent.JWTUtils = JWTUtils
    for module in (package, excs, agent):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    for name in ('InvalidEtcdCAConfig', 'InvalidEtcHostsConfig',
                 'InvalidEtcHostConfig'):
        monkeypatch.setattr(nv, name, getattr(nv, name))   # undone after
    return types.SimpleNamespace(exceptions=excs, jwt_agent=agent)


def test_inside_networking_vpp_its_exceptions_are_raised(networking_vpp):
    nv._use_networking_vpp_exceptions()
    with pytest.raises(networking_vpp.exceptions.InvalidEtcHostConfig) as e:
        nv.EtcdClientFactory(Group('h1::1'))
    assert 'fixed message' in str(e.value)
    assert 'etcd_host' in str(e.value.__cause__)
    with pytest.raises(networking_vpp.exceptions.InvalidEtcHostsConfig):
        nv.EtcdClientFactory(Group(None))
    with pytest.raises(networking_vpp.exceptions.InvalidEtcdCAConfig):
        nv.EtcdClientFactory(Group(https=True))


@pytest.fixture
def ml2_vpp_conf(monkeypatch):
    """networking-vpp's [ml2_vpp] jwt options on the global CONF."""
    opts = [cfg.BoolOpt('jwt_signing', default=False),
            cfg.StrOpt('jwt_node_cert'), cfg.StrOpt('jwt_node_private_key'),
            cfg.StrOpt('jwt_ca_cert'),
            cfg.StrOpt('jwt_controller_name_pattern',
                       default='Controller.*')]
    cfg.CONF.register_opts(opts, 'ml2_vpp')
    yield cfg.CONF.ml2_vpp
    for opt in opts:
        cfg.CONF.clear_override(opt.name, 'ml2_vpp')
    cfg.CONF.unregister_opts(opts, 'ml2_vpp')


def test_inside_networking_vpp_its_jwt_agent_signs(networking_vpp,
                                                   ml2_vpp_conf):
    cfg.CONF.set_override('jwt_node_cert', 'n.pem', 'ml2_vpp')
    writer = nv.SignedEtcdJSONWriter(FakeEtcdClient())
    assert isinstance(writer.jwt_agent, networking_vpp.jwt_agent.JWTUtils)
    assert writer.jwt_agent.made[-1] == ('n.pem', None, None,
                                         'Controller.*')


def test_json_writer_follows_jwt_signing(ml2_vpp_conf, pki):
    client = FakeEtcdClient()
    assert type(nv.json_writer(client)) is nv.EtcdJSONWriter
    cert, key = pki.compute
    for name, value in (('jwt_signing', True), ('jwt_node_cert', cert),
                        ('jwt_node_private_key', key),
                        ('jwt_ca_cert', pki.ca)):
        cfg.CONF.set_override(name, value, 'ml2_vpp')
    writer = nv.json_writer(client)
    assert type(writer) is nv.SignedEtcdJSONWriter
    assert isinstance(writer.jwt_agent, nv_jwt.JWTUtils)
    writer.write(COMPUTE_KEY, VALUE)
    assert 'jwt' in json.loads(client.read(COMPUTE_KEY).value)


# -- writers and results ------------------------------------------------------

def test_json_writer_round_trip_and_result():
    client = FakeEtcdClient()
    writer = nv.EtcdJSONWriter(client)
    writer.write('/app/a', VALUE)
    writer.write('/app/d/b', [1, 2], ttl=30)
    assert json.loads(client.read('/app/a').value) == VALUE
    assert client.read('/app/d/b').ttl == 30

    result = writer.read('/app/a')
    assert isinstance(result, nv.ParsedEtcdResult)
    assert isinstance(result, etcd.EtcdResult)
    assert result.value == VALUE
    assert result.key == '/app/a'
    assert result.modifiedIndex == client.read('/app/a').modifiedIndex
    assert result.dir is False

    tree = writer.read('/app', recursive=True)
    # children are raw, as networking-vpp's callers expect...
    assert {c.key: c.value for c in tree.children if not c.dir} == {
        '/app/a': json.dumps(VALUE, sort_keys=True), '/app/d/b': '[1, 2]'}
    # ... leaves and get_subtree() are parsed.
    assert {leaf.key: leaf.value for leaf in tree.leaves} == {
        '/app/a': VALUE, '/app/d/b': [1, 2]}


def test_unparsable_value_raises_on_access_only():
    client = FakeEtcdClient()
    client.write('/app/bad', 'not json')
    result = nv.EtcdJSONWriter(client).read('/app/bad')
    with pytest.raises(ValueError):
        result.value


def test_writer_refuses_a_key_python_etcd_would_send_elsewhere():
    client = FakeEtcdClient()
    writer = nv.EtcdJSONWriter(client)
    with pytest.raises(ValueError, match='key'):
        writer.write('/app/a?b', 1)
    with pytest.raises(ValueError, match='key'):
        writer.delete('/app/a#b')
    assert '/app/a' not in client


def test_writer_delete_key_empty_dir_or_nothing():
    client = FakeEtcdClient()
    writer = nv.EtcdJSONWriter(client)
    writer.write('/app/k', 1)
    writer.write('/app/full/x', 1)
    client.write('/app/empty', None, dir=True)
    writer.delete('/app/k')
    writer.delete('/app/empty')
    writer.delete('/app/never')
    writer.delete('/app/full')      # not empty: stays, as in networking-vpp
    assert '/app/k' not in client and '/app/empty' not in client
    assert '/app/full/x' in client


def test_writer_watch_is_parsed():
    client = FakeEtcdClient()
    writer = nv.EtcdJSONWriter(client)
    writer.write('/app/w', {'n': 1})
    index = client.read('/app/w').modifiedIndex
    assert writer.watch('/app/w', index=index).value == {'n': 1}


# -- JWT signing --------------------------------------------------------------

def test_sign_verify_round_trip(pki):
    compute, controller = _utils(pki), _utils(pki, 'controller')
    signed = compute.sign(COMPUTE_KEY, VALUE)
    assert set(signed) == {'jwt', 'certificate'}
    stored = json.loads(json.dumps(signed))   # as it goes through etcd
    assert controller.verify(controller.get_signer_name(COMPUTE_KEY),
                             COMPUTE_KEY, stored) == VALUE
    signed = controller.sign(CONTROLLER_KEY, VALUE)
    assert compute.verify(compute.get_signer_name(CONTROLLER_KEY),
                          CONTROLLER_KEY, signed) == VALUE


def test_which_paths_and_signers(pki):
    utils = _utils(pki)
    assert utils.get_signer_name(COMPUTE_KEY) == (False, 'compute1')
    assert utils.get_signer_name(
        '/networking-vpp/global/networks/gpe/7/host9/10.0.0.1') == (
            False, 'host9')
    assert utils.get_signer_name(CONTROLLER_KEY) == (True, 'Controller.*')
    assert utils.get_signer_name('/networking-vpp/test') == (False, '')
    assert not utils.should_path_be_signed('/networking-vpp/test')
    assert utils.should_path_be_signed(
        '/networking-vpp/global/secgroups/sg1')


def _networking_vpp_style_token(key_obj, cert_pem, path, value, **extra):
    # As networking_vpp.jwt_agent.JWTUtils.sign builds it.
    payload = dict({'version': 1, 'value': value, 'path': path}, **extra)
    return {'jwt': jwt.encode(payload, key_obj, algorithm='RS256'),
            'certificate': cert_pem}


def test_reads_tokens_written_the_networking_vpp_way(pki):
    cert_file, _ = pki.compute
    with open(cert_file, 'rb') as f:
        cert_pem = f.read()
    token = _networking_vpp_style_token(pki.compute_key, cert_pem,
                                        COMPUTE_KEY, VALUE)
    # networking-vpp kept the certificate as bytes; its JSON made a str.
    from oslo_serialization import jsonutils
    stored = jsonutils.loads(jsonutils.dumps(token))
    utils = _utils(pki)
    assert utils.verify(utils.get_signer_name(COMPUTE_KEY), COMPUTE_KEY,
                        stored) == VALUE


def test_tokens_written_here_verify_the_networking_vpp_way(pki):
    signed = json.loads(json.dumps(_utils(pki).sign(COMPUTE_KEY, VALUE)))
    # As networking_vpp.jwt_agent.JWTUtils.verify checks the token.
    cert = x509.load_pem_x509_certificate(
        bytes(signed['certificate'], 'ascii'))
    decoded = jwt.decode(signed['jwt'], cert.public_key(),
                         algorithms='RS256')
    assert decoded == {'version': 1, 'value': VALUE, 'path': COMPUTE_KEY}
    assert cert.subject.get_attributes_for_oid(
        NameOID.COMMON_NAME)[0].value == 'compute1'


def _refused(utils, path, signed, words):
    with pytest.raises(nv_jwt.JWTSigningFailed, match=words):
        utils.verify(utils.get_signer_name(path), path, signed)


def test_tampered_token_is_refused(pki):
    utils = _utils(pki)
    signed = utils.sign(COMPUTE_KEY, VALUE)
    header, payload, signature = signed['jwt'].split('.')
    forged = jwt.utils.base64url_encode(json.dumps(
        {'version': 1, 'value': {'mtu': 9000}, 'path': COMPUTE_KEY}
    ).encode()).decode()
    signed['jwt'] = '.'.join([header, forged, signature])
    _refused(utils, COMPUTE_KEY, signed, 'InvalidTokenError')


def test_token_moved_to_another_path_is_refused(pki):
    utils = _utils(pki)
    signed = utils.sign(COMPUTE_KEY, VALUE)
    _refused(utils, COMPUTE_KEY + 'x', signed, 'path is')


def test_wrong_signer_is_refused(pki):
    compute = _utils(pki)
    other_host = '/networking-vpp/state/compute2/ports/p1'
    _refused(compute, other_host, compute.sign(other_host, VALUE),
             'node name is compute1')
    # A compute node cannot write what only a controller may.
    _refused(compute, CONTROLLER_KEY, compute.sign(CONTROLLER_KEY, VALUE),
             'node name')


def test_certificate_of_another_ca_is_refused(pki):
    stranger = _utils(pki, 'stranger')
    _refused(_utils(pki), COMPUTE_KEY, stranger.sign(COMPUTE_KEY, VALUE),
             'not trusted')


def test_expired_certificate_is_refused(pki):
    expired = _utils(pki, 'expired')
    _refused(_utils(pki), COMPUTE_KEY, expired.sign(COMPUTE_KEY, VALUE),
             'not valid now')


def test_expired_token_is_refused(pki):
    utils = _utils(pki)
    with open(pki.compute[0], 'rb') as f:
        cert_pem = f.read().decode()
    token = _networking_vpp_style_token(pki.compute_key, cert_pem,
                                        COMPUTE_KEY, VALUE,
                                        exp=int(time.time()) - 60)
    _refused(utils, COMPUTE_KEY, token, 'ExpiredSignatureError')
    signed = utils.sign(COMPUTE_KEY, VALUE, delta=3600)
    assert jwt.decode(signed['jwt'], options={'verify_signature': False})[
        'exp'] > time.time()
    assert utils.verify(utils.get_signer_name(COMPUTE_KEY), COMPUTE_KEY,
                        signed) == VALUE


@pytest.mark.parametrize('signed, words', [
    (None, 'empty value'), ('a string', 'not signed'),
    ({'jwt': 'x'}, 'no PEM certificate'),
    ({'jwt': 'x', 'certificate': 'junk'}, 'no PEM certificate'),
])
def test_malformed_signed_values_are_refused(pki, signed, words):
    _refused(_utils(pki), COMPUTE_KEY, signed, words)


def test_bad_key_material_is_named_never_shown(pki, tmp_path):
    cert, key = pki.compute
    other_cert, _ = pki.controller
    with open(key, 'rb') as f:
        secret_line = f.read().splitlines()[1].decode()
    with pytest.raises(ValueError, match='local_cert') as caught:
        nv_jwt.JWTUtils(other_cert, key, pki.ca, 'C.*')
    assert secret_line not in str(caught.value)
    garbage = _write(tmp_path / 'garbage.key', b'-----BEGIN PRIVATE KEY-----'
                     b'\n' + secret_line.encode() + b'\n')
    with pytest.raises(ValueError, match='priv_key') as caught:
        nv_jwt.JWTUtils(cert, garbage, pki.ca, 'C.*')
    assert secret_line not in str(caught.value)
    with pytest.raises(ValueError, match='ca_cert'):
        nv_jwt.JWTUtils(cert, key, key, 'C.*')
    with pytest.raises(ValueError, match='controller_name_re'):
        nv_jwt.JWTUtils(cert, key, pki.ca, '(')
    tls = make_tls_files(tmp_path / 'ec')       # EC keys: no RS256
    with pytest.raises(ValueError, match='RSA'):
        nv_jwt.JWTUtils(tls.client_cert, tls.client_key, tls.ca_cert, 'C.*')
    with pytest.raises(OSError):
        nv_jwt.JWTUtils(cert, str(tmp_path / 'missing'), pki.ca, 'C.*')
    utils = _utils(pki)
    assert secret_line not in repr(utils) and 'compute1' in repr(utils)


def test_signed_writer_through_etcd(pki):
    client = FakeEtcdClient()
    writer = nv.SignedEtcdJSONWriter(client, jwt_utils=_utils(pki))
    writer.write(COMPUTE_KEY, VALUE)
    writer.write('/networking-vpp/test', VALUE)
    stored = json.loads(client.read(COMPUTE_KEY).value)
    assert set(stored) == {'jwt', 'certificate'}
    assert json.loads(client.read('/networking-vpp/test').value) == VALUE
    assert writer.read(COMPUTE_KEY).value == VALUE
    assert writer.read('/networking-vpp/test').value == VALUE

    # Rewritten by someone without the key: refused on access.
    stored['jwt'] = stored['jwt'][:-4] + 'AAAA'
    client.write(COMPUTE_KEY, json.dumps(stored))
    result = writer.read(COMPUTE_KEY)
    with pytest.raises(nv_jwt.JWTSigningFailed):
        result.value
    # An unsigned value where a signed one belongs: refused too.
    client.write(COMPUTE_KEY, json.dumps(VALUE))
    with pytest.raises(nv_jwt.JWTSigningFailed):
        writer.read(COMPUTE_KEY).value


def test_signed_writer_checks_jwt_utils():
    with pytest.raises(ValueError, match='jwt_utils'):
        nv.SignedEtcdJSONWriter(FakeEtcdClient(), jwt_utils=object())


# -- helper -------------------------------------------------------------------

def test_helper(caplog):
    client = FakeEtcdClient()
    helper = nv.EtcdHelper(client)
    helper.ensure_dir('/app/d')
    helper.ensure_dir('/app/d')                  # exists: fine
    client.write('/app/d/k1', 'v')
    client.write('/app/d/k2', 'v')
    client.write('/app/d/sub/k3', 'v')
    helper.clear_state('/app/d')
    assert '/app/d/k1' not in client and '/app/d/k2' not in client
    assert '/app/d/sub/k3' in client            # directories stay
    with caplog.at_level(logging.ERROR):
        helper.remove_dir('/app/d')             # not empty: logged
    assert 'not empty' in caplog.text
    client.delete('/app/d/sub', recursive=True)
    helper.remove_dir('/app/d')
    helper.remove_dir('/app/d')                 # gone: fine
    assert '/app/d' not in client


# -- election and watchers ----------------------------------------------------

def test_election_is_etcdwatchs(pki):
    client = FakeEtcdClient()
    assert nv.EtcdElection is election.EtcdElection
    assert nv.cleanup_electors is election.cleanup_electors
    one = nv.EtcdElection(client, 'forward_worker', '/nvpp/election',
                          work_time=10, recovery_time=1)
    two = nv.EtcdElection(client, 'forward_worker', '/nvpp/election',
                          work_time=10, recovery_time=1)
    one.wait_until_elected()
    with pytest.raises(nv.EtcdElectionLost):
        two.extend_election(10)
    nv.cleanup_electors()
    assert '/nvpp/election/master_forward_worker' not in client


class Recorder(nv.EtcdChangeWatcher):
    """Records networking-vpp's hooks, called by keyword-compatible name."""

    def __init__(self, *args, **kwargs):
        self.calls = []
        super(Recorder, self).__init__(*args, **kwargs)

    def added(self, key, value):
        self.calls.append(('added', key, value))

    def removed(self, key):
        self.calls.append(('removed', key))


def test_change_watcher_hooks_and_expected_keys():
    client = FakeEtcdClient()
    client.write('/w/a', '1')
    client.write('/w/b', '2')

    class Restarted(Recorder):
        def init_resync_start(self):
            return {'a', 'stale'}

    watcher = Restarted(client, 'w', '/w', heartbeat=1)
    assert watcher.expected_keys == {'a', 'stale'}
    assert sorted(watcher.calls) == [('added', 'a', '1'), ('added', 'b', '2'),
                                     ('removed', 'stale')]
    assert isinstance(watcher, nv.EtcdWatcher)

    del watcher.calls[:]
    with Runner(watcher):
        client.write('/w/c', '3')
        client.delete('/w/a')
        wait_until(lambda: len(watcher.calls) == 2)
    assert watcher.calls == [('added', 'c', '3'), ('removed', 'a')]


def test_expected_keys_set_inside_init_resync_start_is_replaced():
    # networking-vpp's PortWatcher sets the attribute and returns None:
    # networking-vpp then stored None over it, and so do we.
    client = FakeEtcdClient()
    client.write('/w/a', '1')

    class SetsAttribute(Recorder):
        def init_resync_start(self):
            self.expected_keys = {'stale'}

    watcher = SetsAttribute(client, 'w', '/w', heartbeat=1)
    assert watcher.expected_keys is None
    assert watcher.calls == [('added', 'a', '1')]


def test_plain_watcher_keeps_expected_keys():
    client = FakeEtcdClient()
    client.write('/w/a', '1')

    class Plain(nv.EtcdWatcher):
        removed_keys = []

        def init_resync_start(self):
            return ['a', 'gone']

        def do_all_work(self):
            pass

        def removed(self, key):
            self.removed_keys.append(key)

    watcher = Plain(client, 'w', '/w', heartbeat=1)
    assert watcher.expected_keys == ['a', 'gone']
    assert watcher.removed_keys == ['gone']
