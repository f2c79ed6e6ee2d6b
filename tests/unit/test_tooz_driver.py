"""The tooz driver's URL: members, options, TLS; entry points."""

import urllib.parse

import pytest
from tooz import coordination

from etcdwatch import tooz_driver


def parse(url, **options):
    parsed = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parsed.query)
    query.update({k: [v] for k, v in options.items()})
    return tooz_driver.parse_url(parsed, query)


def test_members_and_defaults():
    settings = parse('etcdwatch+http://h1:2379,h2:2380,h3/')
    assert settings['endpoints'] == ['h1:2379', 'h2:2380', 'h3:2379']
    assert settings['protocol'] == 'http'
    assert settings['timeout'] == 30
    assert settings['lock_timeout'] == 30
    assert settings['membership_timeout'] == 30
    assert settings['prefix'] == '/etcdwatch-tooz'


def test_options_and_tls():
    settings = parse('etcdwatch+https://h1:2379/?timeout=10&lock_timeout=4'
                     '&ca_cert=/ca.pem&cert_file=/c.pem&key_file=/k.pem'
                     '&prefix=cinder/')
    assert settings['protocol'] == 'https'
    assert (settings['timeout'], settings['lock_timeout'],
            settings['membership_timeout']) == (10, 4, 10)
    assert (settings['ca_cert'], settings['cert_file'],
            settings['key_file']) == ('/ca.pem', '/c.pem', '/k.pem')
    assert settings['prefix'] == '/cinder'


@pytest.mark.parametrize('url', ['etcd3+http://h1:2379',
                                 'etcdwatch+http:///',
                                 'etcdwatch+http://h1/?timeout=0'])
def test_bad_urls(url):
    with pytest.raises(ValueError):
        parse(url)


def test_ids_of_any_bytes_round_trip():
    for value in (b'abc', b'a/b c', b'\x00\xff', 'str-id'):
        segment = tooz_driver._enc(value)
        assert '/' not in segment
        assert tooz_driver._dec(segment) == tooz_driver._to_bytes(value)


@pytest.mark.parametrize('scheme', ['etcdwatch+http', 'etcdwatch+https'])
def test_registered_with_tooz(scheme):
    coord = coordination.get_coordinator(scheme + '://127.0.0.1:1/', b'me')
    assert isinstance(coord, tooz_driver.EtcdwatchDriver)
    assert coord.requires_beating


def test_unreachable_etcd_is_a_connection_error():
    coord = coordination.get_coordinator(
        'etcdwatch+http://127.0.0.1:1/?request_timeout=2', b'me')
    with pytest.raises(coordination.ToozConnectionError):
        coord.start()


# -- authentication ----------------------------------------------------------

SECRET = 'p@ss:w/rd%'
QUOTED = urllib.parse.quote(SECRET, '')


def test_user_and_password_in_the_url(monkeypatch):
    monkeypatch.delenv(tooz_driver.ENV_PASSWORD, raising=False)
    quoted = urllib.parse.quote(SECRET, '')
    settings = parse('etcdwatch+http://app:%s@h1:2379,h2/' % quoted)
    assert settings['endpoints'] == ['h1:2379', 'h2:2379']
    assert settings['username'] == 'app'
    assert settings['password'].reveal() == SECRET
    assert SECRET not in repr(settings) and quoted not in repr(settings)
    assert SECRET not in str(settings['password'])


def test_no_user_no_credentials(monkeypatch):
    monkeypatch.setenv(tooz_driver.ENV_PASSWORD, SECRET)
    settings = parse('etcdwatch+http://h1:2379/')
    assert settings['username'] is None and settings['password'] is None


def test_password_from_file_then_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(tooz_driver.ENV_PASSWORD, 'from-env')
    path = tmp_path / 'pw'
    path.write_text(SECRET + '\nsecond line\n')
    settings = parse('etcdwatch+http://app@h1/', password_file=str(path))
    assert settings['password'].reveal() == SECRET
    settings = parse('etcdwatch+http://app@h1/')
    assert settings['password'].reveal() == 'from-env'


@pytest.mark.parametrize('url, options, words', [
    ('etcdwatch+http://:%s@h1/' % QUOTED, {},
     'no user'),
    ('etcdwatch+http://h1/', {'password_file': '/x'}, 'needs a user'),
    ('etcdwatch+http://app:%s@h1/' % QUOTED,
     {'password_file': '/x'}, 'give one'),
    ('etcdwatch+http://app:@h1/', {}, 'empty'),
    ('etcdwatch+http://app@h1/', {}, 'ETCDWATCH_PASSWORD'),
    ('etcdwatch+http://app@h1/', {'password_file': '/no/such/file'},
     '/no/such/file'),
    ('etcdwatch+http://app@h1/', {'password': SECRET}, 'no password option'),
])
def test_bad_credentials_name_the_problem_not_the_password(
        monkeypatch, url, options, words):
    monkeypatch.delenv(tooz_driver.ENV_PASSWORD, raising=False)
    with pytest.raises(ValueError) as error:
        parse(url, **options)
    assert words in str(error.value)
    assert SECRET not in str(error.value)
    assert QUOTED not in str(error.value)


def test_empty_password_file(monkeypatch, tmp_path):
    monkeypatch.delenv(tooz_driver.ENV_PASSWORD, raising=False)
    path = tmp_path / 'pw'
    path.write_text('\n' + SECRET)
    with pytest.raises(ValueError,
                       match='password_file .*: its first line is empty'):
        parse('etcdwatch+http://app@h1/', password_file=str(path))
