"""The tooz driver on an etcd with v3 authentication enabled (3.5.1).

Users: ``root``, and ``tooz``, whose role covers ``/tooz-app/`` only (the
driver's ``prefix``).  A coordinator of ``tooz`` creates and joins groups,
elects a leader and takes a contended lock, with the password in the URL,
in ``password_file`` or in ``$ETCDWATCH_PASSWORD``; outside its prefix it
is refused, naming the user.  A wrong password makes ``start()`` fail at
once: one Authenticate request (etcd's own counter), an error naming the
user.  No log record (every logger, DEBUG), repr or error holds the
password.
"""

import logging
import re
import threading
import time
import urllib.parse
import uuid

import pytest
import requests
import tooz
from tooz import coordination

from etcdwatch.testing.server import EtcdServer
from tests.helpers import etcdctl
from tests.helpers import wait_until

pytestmark = pytest.mark.functional

ROOT_PW = 'root-Secret-8vd'
# Characters a URL must percent-encode, to check the decoding.
TOOZ_PW = 'tooz/Secret@5:k%w'
WRONG_PW = 'wrong-Secret-3jq'
PASSWORDS = (ROOT_PW, TOOZ_PW, WRONG_PW, urllib.parse.quote(TOOZ_PW, ''),
             urllib.parse.quote(WRONG_PW, ''))
PREFIX = '/tooz-app'


@pytest.fixture(scope='module')
def server():
    with EtcdServer(name='tooz-auth', enable_v2=False) as etcd:
        etcdctl(etcd, 'user', 'add', 'root:' + ROOT_PW)
        etcdctl(etcd, 'user', 'add', 'tooz:' + TOOZ_PW)
        etcdctl(etcd, 'role', 'add', 'tooz-role')
        etcdctl(etcd, 'role', 'grant-permission', 'tooz-role',
                '--prefix=true', 'readwrite', PREFIX + '/')
        etcdctl(etcd, 'user', 'grant-role', 'tooz', 'tooz-role')
        etcdctl(etcd, 'auth', 'enable')
        yield etcd


@pytest.fixture
def logs(caplog):
    """Every record of every logger, at DEBUG."""
    caplog.set_level(logging.DEBUG)
    return caplog


def assert_no_password(*texts):
    for text in texts:
        for password in PASSWORDS:
            assert password not in text, 'a password in %r' % (text,)


def assert_no_password_logged(caplog):
    for record in caplog.records:
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        assert_no_password(text)


def _authentications(server):
    """How many Authenticate calls etcd has begun (its /metrics)."""
    text = requests.get(server.client_url + '/metrics', timeout=30).text
    found = re.search(r'^grpc_server_started_total\{grpc_method='
                      r'"Authenticate",[^}]*\} (\d+)', text, re.M)
    return int(found.group(1))


def _url(server, password=TOOZ_PW, user='tooz', **options):
    options.setdefault('prefix', PREFIX)
    options.setdefault('timeout', 3)
    userinfo = urllib.parse.quote(user, '')
    if password is not None:
        userinfo += ':' + urllib.parse.quote(password, '')
    return 'etcdwatch+http://%s@%s:%d/?%s' % (
        userinfo, server.host, server.port, urllib.parse.urlencode(options))


@pytest.fixture
def started():
    made = []

    def start(url):
        coord = coordination.get_coordinator(url, uuid.uuid4().hex.encode())
        coord.start(start_heart=True)
        made.append(coord)
        return coord
    yield start
    for coord in made:
        try:
            coord.stop()
        except Exception:
            pass


@pytest.mark.parametrize('where', ['url', 'password_file', 'env'])
def test_groups_leaders_and_locks_as_a_limited_user(
        server, started, logs, where, tmp_path, monkeypatch):
    if where == 'url':
        url = _url(server)
    elif where == 'password_file':
        path = tmp_path / 'password'
        path.write_text(TOOZ_PW + '\n')
        url = _url(server, password=None, password_file=str(path))
    else:
        monkeypatch.setenv('ETCDWATCH_PASSWORD', TOOZ_PW)
        url = _url(server, password=None)
    a, b = started(url), started(url)
    assert a.client.auth.username == 'tooz'
    group = uuid.uuid4().hex.encode()
    a.create_group(group).get()
    a.join_group(group, b'caps-a').get()
    b.join_group(group).get()
    assert b.get_members(group).get() == {a._member_id, b._member_id}
    assert b.get_member_capabilities(group, a._member_id).get() == b'caps-a'

    # One leader: both campaign, one is announced, both name it.
    elected = []
    for coord in (a, b):
        coord.watch_elected_as_leader(
            group, lambda event: elected.append(event.member_id))
    wait_until(lambda: a.run_watchers() + b.run_watchers() or elected,
               timeout=30, interval=0.05)
    assert len(elected) == 1
    assert {a.get_leader(group).get(), b.get_leader(group).get()} == \
        set(elected)

    # A contended lock: b waits (a watch), then holds after a's release.
    name = uuid.uuid4().hex.encode()
    lock_a, lock_b = a.get_lock(name), b.get_lock(name)
    assert lock_a.acquire(blocking=False)
    assert not lock_b.acquire(blocking=False)
    got = []
    waiter = threading.Thread(target=lambda: got.append(
        lock_b.acquire(blocking=30)))
    waiter.start()
    wait_until(lambda: len(lock_b._backend.read_queue(
        lock_b.prefix).entries) == 2, timeout=30)
    assert lock_a.release()
    waiter.join(40)
    assert got == [True]
    assert lock_b.release()

    b.leave_group(group).get()
    assert a.get_members(group).get() == {a._member_id}

    # Outside its prefix the user is refused, and told who it is.
    outside = started(_url(server, prefix='/elsewhere'))
    with pytest.raises(tooz.ToozError) as refused:
        outside.create_group(b'g').get()
    assert 'tooz' in str(refused.value)
    assert 'permission denied' in str(refused.value).lower()

    assert_no_password(repr(a), repr(a.client), repr(a._settings),
                       str(refused.value), repr(refused.value))
    assert_no_password_logged(logs)


def test_wrong_password_fails_at_once_naming_the_user(server, logs):
    before = _authentications(server)
    coord = coordination.get_coordinator(_url(server, password=WRONG_PW),
                                         b'wrong')
    began = time.monotonic()
    with pytest.raises(coordination.ToozConnectionError) as failed:
        coord.start()
    took = time.monotonic() - began
    message = str(failed.value)
    print('\nwrong password: %r after %.3f s' % (message, took))
    assert 'user tooz' in message
    assert 'authentication failed' in message
    # No retry loop: etcd was asked once.
    assert _authentications(server) - before == 1
    assert took < 5
    assert_no_password(message, repr(failed.value), repr(coord),
                       repr(coord._settings))
    assert_no_password_logged(logs)
