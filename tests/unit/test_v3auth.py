"""The v3 authentication rules (etcdwatch.backends.v3auth), without etcd."""

import argparse
import logging

import pytest

from etcdwatch.backends import v3auth
from etcdwatch.backends import v3proto
from etcdwatch.cli import client as cli_client
from etcdwatch.cli.common import CliError
from etcdwatch import exceptions

PASSWORD = 'pw-Secret-8hd'

# What etcd 3.5.1's gateway answers (measured).
INVALID_TOKEN = {'error': 'etcdserver: invalid auth token', 'code': 16,
                 'message': 'etcdserver: invalid auth token'}
NO_USER = {'error': 'etcdserver: user name is empty', 'code': 3,
           'message': 'etcdserver: user name is empty'}
WRONG_PASSWORD = {
    'error': 'etcdserver: authentication failed, invalid user ID or '
             'password', 'code': 3,
    'message': 'etcdserver: authentication failed, invalid user ID or '
               'password'}
DENIED = {'error': 'etcdserver: permission denied', 'code': 7,
          'message': 'etcdserver: permission denied'}
WATCH_DENIED = {'result': {
    'header': {'cluster_id': '1', 'revision': '2'}, 'created': True,
    'canceled': True, 'cancel_reason': 'rpc error: code = PermissionDenied '
                                       'desc = etcdserver: permission '
                                       'denied'}}


@pytest.mark.parametrize('status,body,kind', [
    (401, INVALID_TOKEN, v3auth.TokenRejected),
    (400, NO_USER, v3auth.TokenRejected),
    (400, WRONG_PASSWORD, exceptions.EtcdAuthError),
    (403, DENIED, exceptions.EtcdPermissionDenied),
    # etcd 3.6's gateway (grpc-gateway v2), inside a stream.
    (None, {'error': {'code': 16, 'message': 'etcdserver: invalid auth '
                                             'token'}}, v3auth.TokenRejected),
])
def test_raise_for_recognises_the_auth_answers(status, body, kind):
    with pytest.raises(kind) as info:
        v3proto.raise_for('read /a', status, body)
    assert type(info.value) is kind
    assert 'read /a' in str(info.value)


def test_a_token_error_is_no_wrong_password():
    error = v3auth.error_for('x', 16, 'etcdserver: invalid auth token')
    assert not isinstance(error, exceptions.EtcdAuthError)
    assert isinstance(error, exceptions.BackendError)
    assert v3auth.error_for('x', 14, 'etcdserver: no leader') is None
    assert v3auth.error_for('x', None, 'something else') is None
    assert isinstance(v3auth.error_for(
        'x', 9, 'etcdserver: authentication is not enabled'),
        v3auth.AuthNotEnabled)


def test_a_refused_watch_is_a_watch_refusal_not_a_plain_error():
    cursor = v3proto.Cursor('/a/', '/a0', 1)
    with pytest.raises(v3auth.WatchRefused):
        v3proto.take(cursor, v3proto.ClusterEpochs(), WATCH_DENIED,
                     'watch /a')
    assert cursor.received == 0             # taken not at all
    other = dict(WATCH_DENIED['result'], cancel_reason='something else')
    with pytest.raises(exceptions.BackendError) as info:
        v3proto.take(cursor, v3proto.ClusterEpochs(), {'result': other},
                     'watch /a')
    assert not isinstance(info.value, v3auth.TokenRejected)


def test_auth_state():
    auth = v3auth.Auth('app', PASSWORD)
    assert auth.enabled and auth.needed() and auth.headers() == {}
    path, payload, what = auth.authenticate()
    assert path == 'auth/authenticate'
    assert payload == {'name': 'app', 'password': PASSWORD}
    assert PASSWORD not in what
    auth.authenticated({'token': 'tok.1'})
    assert not auth.needed()
    assert auth.headers() == {'Authorization': 'tok.1'}
    generation = auth.generation
    # Another thread renewed it meanwhile: a stale rejection is ignored.
    auth.rejected(generation - 1)
    assert auth.token == 'tok.1'
    auth.rejected(generation)
    assert auth.needed() and auth.headers() == {}
    auth.rejected(generation)               # twice: nothing more
    assert auth.generation == generation + 1
    with pytest.raises(exceptions.EtcdAuthError):
        auth.authenticated({'header': {}})
    auth.not_enabled()
    assert not auth.needed() and auth.headers() == {}


def test_no_credentials():
    auth = v3auth.Auth()
    assert not auth.enabled and not auth.needed() and auth.headers() == {}
    error = auth.give_up(v3auth.TokenRejected('read /a', 'etcdserver: user '
                                              'name is empty'))
    assert isinstance(error, exceptions.EtcdAuthError)
    assert 'username and password' in str(error)
    denied = auth.give_up(v3auth.WatchRefused('watch /a', 'permission '
                                              'denied'))
    assert isinstance(denied, exceptions.EtcdPermissionDenied)
    assert 'anonymous' in str(denied) and 'watch /a' in str(denied)


def test_give_up_names_the_user_and_the_key():
    auth = v3auth.Auth('app', PASSWORD)
    denied = auth.give_up(v3auth.WatchRefused('watch /b', 'etcdserver: '
                                              'permission denied'))
    assert isinstance(denied, exceptions.EtcdPermissionDenied)
    assert 'user app' in str(denied) and 'watch /b' in str(denied)
    again = auth.give_up(v3auth.TokenRejected('read /b', 'etcdserver: '
                                              'invalid auth token'))
    assert type(again) is exceptions.EtcdAuthError
    assert 'user app' in str(again)
    plain = exceptions.BackendError('x')
    assert auth.give_up(plain) is plain


@pytest.mark.parametrize('username,password,named', [
    ('app', None, 'password'), (None, PASSWORD, 'username'),
    ('', PASSWORD, 'username'), ('app', b'bytes', 'password'),
])
def test_bad_credentials_name_the_argument(username, password, named):
    with pytest.raises(ValueError) as info:
        v3auth.Auth(username, password)
    assert str(info.value).startswith(named)
    assert PASSWORD not in str(info.value)


def test_no_password_in_reprs_or_errors(caplog):
    caplog.set_level(logging.DEBUG)
    pytest.importorskip('etcd3gw')
    from etcdwatch import v3client
    c = v3client.client(['127.0.0.1:1'], username='app', password=PASSWORD)
    assert 'user app' in repr(c)
    auth = c.auth
    auth.authenticated({'token': 'tok.1'})
    error = auth.give_up(v3auth.WatchRefused('watch /b', 'denied'))
    shown = [repr(c), repr(auth), str(error), repr(error), caplog.text,
             repr(vars(auth).get('token'))]
    assert not any(PASSWORD in s for s in shown)


def test_async_client_takes_credentials():
    pytest.importorskip('httpx')
    from etcdwatch.aio.client import AsyncEtcd3Client
    c = AsyncEtcd3Client(['127.0.0.1:1'], username='app', password=PASSWORD)
    assert 'user app' in repr(c) and PASSWORD not in repr(c)
    with pytest.raises(ValueError, match='^password'):
        AsyncEtcd3Client(['127.0.0.1:1'], username='app')


# -- the CLI --------------------------------------------------------------

def args(**kwargs):
    return argparse.Namespace(**dict({'user': None, 'password_file': None},
                                     **kwargs))


def test_cli_password_from_the_environment(monkeypatch):
    monkeypatch.setenv('ETCDWATCH_PASSWORD', PASSWORD)
    assert cli_client.credentials(args(user='app')) == {
        'username': 'app', 'password': PASSWORD}
    assert cli_client.credentials(args()) == {}


def test_cli_password_file_wins(monkeypatch, tmp_path):
    monkeypatch.setenv('ETCDWATCH_PASSWORD', 'from-env')
    path = tmp_path / 'pw'
    path.write_text(PASSWORD + '\nignored\n')
    assert cli_client.credentials(args(user='app', password_file=str(
        path)))['password'] == PASSWORD


@pytest.mark.parametrize('kwargs,needle', [
    (dict(user='app'), 'ETCDWATCH_PASSWORD'),
    (dict(password_file='/x'), '--password-file needs --user'),
    (dict(user='app', password_file='/nonexistent/pw'), '--password-file'),
    (dict(user=''), '--user'),
])
def test_cli_credentials_usage_errors(monkeypatch, kwargs, needle):
    monkeypatch.delenv('ETCDWATCH_PASSWORD', raising=False)
    with pytest.raises(CliError) as info:
        cli_client.credentials(args(**kwargs))
    assert info.value.status == 2 and needle in str(info.value)


def test_cli_empty_password_file(tmp_path):
    path = tmp_path / 'pw'
    path.write_text('\n' + PASSWORD)
    with pytest.raises(CliError, match='empty') as info:
        cli_client.credentials(args(user='app', password_file=str(path)))
    assert PASSWORD not in str(info.value)


def test_cli_parses_user_and_password_file():
    from etcdwatch import cli
    parsed = cli.parse_args(['--api', 'v3', '--user', 'app',
                             '--password-file', '/pw', 'watch', '/a'])
    assert parsed.user == 'app' and parsed.password_file == '/pw'


# -- the threaded transport, on a scripted gateway ----------------------------

class _Answer(object):
    def __init__(self, status, body):
        self.status_code = status
        self._body = body

    def json(self):
        return self._body

    def close(self):
        pass


class _Gateway(object):
    """A requests session handing out tokens t1, t2...

    ``valid`` is the one token etcd accepts (None: none).
    """

    def __init__(self, password=PASSWORD):
        self.password = password
        self.issued = 0
        self.valid = None
        self.seen = []

    def post(self, url, json=None, timeout=None, headers=None, **kwargs):
        path = url.split('/v3/', 1)[1]
        token = (headers or {}).get('Authorization')
        self.seen.append((path, token))
        if path == 'auth/authenticate':
            if json['password'] != self.password:
                return _Answer(400, WRONG_PASSWORD)
            self.issued += 1
            self.valid = 't%d' % self.issued
            return _Answer(200, {'header': {'revision': '5'},
                                 'token': self.valid})
        if token is None:
            return _Answer(400, NO_USER)
        if token != self.valid:
            return _Answer(401, INVALID_TOKEN)
        if path == 'kv/range' and json.get('key') == v3proto.b64('/b'):
            return _Answer(403, DENIED)
        return _Answer(200, {'header': {'revision': '5'}})


def _backend(gateway, password=PASSWORD):
    pytest.importorskip('etcd3gw')
    from etcdwatch.backends import v3
    from etcdwatch import v3client
    client = v3client.client(['127.0.0.1:1'], username='app',
                             password=password, api_path='/v3/')
    client.session = gateway
    return client, v3.V3Backend(client)


def test_threaded_transport_renews_an_expired_token_once():
    gateway = _Gateway()
    client, backend = _backend(gateway)
    assert backend.read_key('/a') == (None, 5)
    assert gateway.seen == [('auth/authenticate', None), ('kv/range', 't1')]
    gateway.valid = None                    # expired (or etcd restarted)
    del gateway.seen[:]
    assert backend.read_key('/a') == (None, 5)
    assert gateway.seen == [('kv/range', 't1'), ('auth/authenticate', None),
                            ('kv/range', 't2')]
    assert client.auth.authentications == 2


def test_threaded_transport_gives_up_after_one_renewal():
    gateway = _Gateway()
    client, backend = _backend(gateway)
    real_post = gateway.post

    def refuse_every_token(url, **kwargs):
        answer = real_post(url, **kwargs)
        if not url.endswith('authenticate'):
            return _Answer(401, INVALID_TOKEN)
        return answer
    gateway.post = refuse_every_token
    with pytest.raises(exceptions.EtcdAuthError) as info:
        backend.read_key('/a')
    assert client.auth.authentications == 2     # not a loop
    assert 'user app' in str(info.value) and 'read /a' in str(info.value)


def test_threaded_transport_refusals(caplog):
    caplog.set_level(logging.DEBUG)
    _client, backend = _backend(_Gateway())
    with pytest.raises(exceptions.EtcdPermissionDenied) as denied:
        backend.read_key('/b')
    assert 'user app' in str(denied.value) and 'read /b' in str(denied.value)
    _client, wrong = _backend(_Gateway(), password='not-' + PASSWORD)
    with pytest.raises(exceptions.EtcdAuthError) as info:
        wrong.read_key('/a')
    assert 'invalid user ID or password' in str(info.value)
    shown = ''.join(str(e.value) + repr(e.value) for e in (denied, info))
    assert PASSWORD not in shown + caplog.text
