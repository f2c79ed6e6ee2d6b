"""etcd v3 authentication on a real etcd (3.5) with auth enabled.

Users: ``root``; ``app``, whose role covers ``/app/`` only; ``other``,
whose role covers ``/other/`` only.  Tokens live 2 s
(``--auth-token-ttl 2``): every quiet heartbeat of a watcher and every
keepalive of an election finds its token expired, so both renew it many
times; a restart of etcd forgets every token (a stream reopened then is
canceled with "permission denied").
"""

import asyncio
import logging
import threading
import time
import uuid

import pytest
import requests

from etcdwatch.aio import client as aio_client
from etcdwatch.aio import election as aio_election
from etcdwatch.aio import watcher as aio_watcher
from etcdwatch.backends import v3 as v3_backend
from etcdwatch.backends import v3_async
from etcdwatch import election
from etcdwatch import exceptions
from etcdwatch.testing.server import EtcdCluster
from etcdwatch.testing.server import EtcdServer

from etcdwatch import v3client
from etcdwatch import watcher
from tests.helpers import etcdctl
from tests.helpers import wait_until

TIMEOUT = 60
ROOT_PW = 'root-Secret-4fz'
APP_PW = 'app-Secret-9qk'
OTHER_PW = 'other-Secret-2mx'
PASSWORDS = (ROOT_PW, APP_PW, OTHER_PW, 'wrong-Secret-7tt')


def set_up_auth(server):
    """root, app (/app/), other (/other/); then auth on."""
    etcdctl(server, 'user', 'add', 'root:' + ROOT_PW)
    for user, password, prefix in (('app', APP_PW, '/app/'),
                                   ('other', OTHER_PW, '/other/')):
        etcdctl(server, 'user', 'add', '%s:%s' % (user, password))
        etcdctl(server, 'role', 'add', user + '-role')
        etcdctl(server, 'role', 'grant-permission', user + '-role',
                '--prefix=true', 'readwrite', prefix)
        etcdctl(server, 'user', 'grant-role', user, user + '-role')
    etcdctl(server, 'auth', 'enable')


@pytest.fixture(scope='module')
def auth_server():
    with EtcdServer(name='auth', enable_v2=False,
                    extra_args=['--auth-token-ttl', '2']) as server:
        set_up_auth(server)
        yield server


def endpoint(server):
    return '%s:%d' % (server.host, server.port)


def client(server, user='app', password=APP_PW):
    return v3client.client([endpoint(server)], username=user,
                           password=password, timeout=5)


def async_client(server, user='app', password=APP_PW):
    return aio_client.AsyncEtcd3Client([endpoint(server)], username=user,
                                       password=password, timeout=5)


@pytest.fixture
def root(auth_server):
    return client(auth_server, 'root', ROOT_PW)


def etcd_state(root, prefix):
    found = {}
    for value, meta in root.get_prefix(prefix + '/'):
        found[meta['key'].decode()[len(prefix) + 1:]] = value.decode()
    return found


def no_password_in(*texts):
    for text in texts:
        for password in PASSWORDS:
            assert password not in text


class Recorder(watcher.EtcdChangeWatcher):
    def __init__(self, *args, **kwargs):
        self.state = {}
        super().__init__(*args, **kwargs)

    def added(self, key, value):
        self.state[key] = value

    def removed(self, key):
        self.state.pop(key, None)


class AsyncRecorder(aio_watcher.AsyncEtcdChangeWatcher):
    def __init__(self, *args, **kwargs):
        self.state = {}
        super().__init__(*args, **kwargs)

    async def added(self, key, value):
        self.state[key] = value

    async def removed(self, key):
        self.state.pop(key, None)


def never_overlap(spans):
    """Terms ``(who, start, end)`` of different workers never overlap."""
    ordered = sorted(spans, key=lambda s: s[1])
    for (who1, _s1, end1), (who2, start2, _e2) in zip(ordered, ordered[1:]):
        if who1 != who2:
            assert end1 <= start2, ordered


# -- the watcher --------------------------------------------------------------

def no_auth_refusal(text):
    """No token or permission refusal was logged.

    A connection refused while the test restarts etcd is not one.
    """
    assert 'refused a new token' not in text
    assert ' refused: ' not in text
    assert 'permission denied' not in text.lower()


def test_watcher_converges_while_tokens_expire(auth_server, root, caplog):
    caplog.set_level(logging.DEBUG)
    prefix = '/app/w-%s' % uuid.uuid4().hex[:8]
    app = client(auth_server)
    w = Recorder(app, 'rec', prefix, heartbeat=3)
    w.start()
    try:
        started = time.monotonic()
        for i in range(4):
            before = app.auth.authentications
            root.put('%s/k%d' % (prefix, i), 'v%d' % i)
            if i % 2:
                root.delete('%s/k%d' % (prefix, i - 1))
            wait_until(lambda: w.state == etcd_state(root, prefix),
                       timeout=TIMEOUT)
            # A quiet heartbeat (3 s, over the 2 s TTL): its quorum read
            # finds the token expired, and renews it.
            wait_until(lambda: app.auth.authentications > before,
                       timeout=TIMEOUT)
        # A restart forgets every token: the stream ends, and the one
        # reopened with the old token is canceled (permission denied).
        before = app.auth.authentications
        auth_server.restart()
        root.put(prefix + '/after-restart', 'yes')
        wait_until(lambda: w.state == etcd_state(root, prefix),
                   timeout=TIMEOUT)
        took = time.monotonic() - started
        assert app.auth.authentications > before
        assert w.state == {'k1': 'v1', 'k3': 'v3', 'after-restart': 'yes'}
        print('\nwatcher: %d tokens in %.1f s, state %s'
              % (app.auth.authentications, took, w.state))
    finally:
        w.stop()
    assert app.auth.authentications >= 5
    no_auth_refusal(caplog.text)
    no_password_in(caplog.text, repr(app), repr(app.auth), repr(w))


# -- the election -------------------------------------------------------------

def test_election_terms_never_overlap_while_tokens_expire(auth_server,
                                                          caplog):
    """Two candidates; each term lasts until its token was renewed twice."""
    caplog.set_level(logging.DEBUG)
    path = '/app/e-%s' % uuid.uuid4().hex[:8]
    spans, renewals = [], []
    stop = threading.Event()
    clients = [client(auth_server), client(auth_server)]

    def candidate(who):
        app = clients[who]
        # Keepalives every 3 s: each one finds the token expired.
        e = election.EtcdElection(app, 'svc', path, work_time=9,
                                  recovery_time=2)
        while not stop.is_set():
            if not e.wait_until_elected(timeout=1):
                continue
            start, term = time.monotonic(), e.term
            before = app.auth.authentications
            while (not stop.is_set() and not term.lost.is_set() and
                   app.auth.authentications < before + 2):
                try:
                    e.check_in()
                except exceptions.EtcdElectionLost:
                    break
                time.sleep(0.05)
            spans.append((who, start, time.monotonic()))
            renewals.append(app.auth.authentications - before)
            e.resign()
        e.resign()

    threads = [threading.Thread(target=candidate, args=(who,), daemon=True)
               for who in (0, 1)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(spans) >= 4, timeout=4 * TIMEOUT)
    finally:
        stop.set()
        for t in threads:
            t.join(TIMEOUT)
    never_overlap(spans)
    # Terms ended by their token's renewals, not by a lost election.
    assert sum(1 for r in renewals if r >= 2) >= 3, (spans, renewals)
    print('\nelection: %d terms, tokens renewed %s'
          % (len(spans), renewals))
    no_password_in(caplog.text, *(repr(c) for c in clients))


# -- asyncio ------------------------------------------------------------------

def test_async_watcher_and_election_while_tokens_expire(auth_server, root,
                                                        caplog):
    caplog.set_level(logging.DEBUG)
    prefix = '/app/aw-%s' % uuid.uuid4().hex[:8]
    path = '/app/ae-%s' % uuid.uuid4().hex[:8]

    async def until(predicate, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, 'timed out'
            await asyncio.sleep(0.05)

    async def candidate(who, app, spans, renewals, stop):
        e = aio_election.AsyncEtcdElection(app, 'svc', path, work_time=9,
                                           recovery_time=2)
        try:
            while not stop.is_set():
                if not await e.campaign(timeout=1):
                    continue
                start, term = time.monotonic(), e.term
                before = app.auth.authentications
                while (not stop.is_set() and not term.lost.is_set() and
                       app.auth.authentications < before + 2):
                    await asyncio.sleep(0.05)
                spans.append((who, start, time.monotonic()))
                renewals.append(app.auth.authentications - before)
                await e.resign()
        finally:
            await e.aclose()

    async def main():
        apps = [async_client(auth_server) for _ in range(3)]
        w = AsyncRecorder(apps[0], 'rec', prefix, heartbeat=3)
        spans, renewals, stop = [], [], asyncio.Event()
        try:
            async with w:
                tasks = [asyncio.ensure_future(candidate(
                    who, apps[who + 1], spans, renewals, stop))
                    for who in (0, 1)]
                try:
                    for i in range(4):
                        before = apps[0].auth.authentications
                        await asyncio.to_thread(
                            root.put, '%s/k%d' % (prefix, i), str(i))
                        await until(lambda: w.state == etcd_state(
                            root, prefix))
                        await until(
                            lambda: apps[0].auth.authentications > before)
                    await until(lambda: len(spans) >= 3, 4 * TIMEOUT)
                finally:
                    stop.set()
                    await asyncio.gather(*tasks)
            assert w.state == {'k%d' % i: str(i) for i in range(4)}
            never_overlap(spans)
            assert sum(1 for r in renewals if r >= 2) >= 2, (spans,
                                                             renewals)
            assert apps[0].auth.authentications >= 4
            print('\nasync: watcher %d tokens; %d terms, renewed %s'
                  % (apps[0].auth.authentications, len(spans), renewals))
            return [repr(a) for a in apps]
        finally:
            for a in apps:
                await a.aclose()

    reprs = asyncio.run(main())
    no_auth_refusal(caplog.text)
    no_password_in(caplog.text, *reprs)


# -- refusals -----------------------------------------------------------------

def test_no_permission_on_the_watched_prefix(auth_server, caplog):
    caplog.set_level(logging.DEBUG)
    other = client(auth_server, 'other', OTHER_PW)
    backend = v3_backend.V3Backend(other)
    with pytest.raises(exceptions.EtcdPermissionDenied) as info:
        backend.watch_tree('/app/secret', 1, 5)
    text = str(info.value)
    assert 'user other' in text and '/app/secret' in text, text
    with pytest.raises(exceptions.EtcdPermissionDenied) as read:
        backend.read_tree('/app/secret')
    assert 'user other' in str(read.value)
    # The watch was opened at most twice (the second with a new token).
    assert other.auth.authentications <= 2

    # A watcher logs it and backs off: no spin.
    w = Recorder(other, 'nosy', '/app/secret', heartbeat=3)
    w.start()
    try:
        wait_until(lambda: caplog.text.count(
            'permission denied for user other') >= 2, timeout=TIMEOUT)
    finally:
        w.stop()
    failures = caplog.text.count('permission denied for user other')
    assert failures <= 4, failures
    no_password_in(caplog.text, text, repr(info.value), repr(other))


def test_wrong_password_is_a_clear_error(auth_server, caplog):
    caplog.set_level(logging.DEBUG)
    bad = client(auth_server, 'app', 'wrong-Secret-7tt')
    with pytest.raises(exceptions.EtcdAuthError) as info:
        v3_backend.V3Backend(bad).read_tree('/app/x')
    assert not isinstance(info.value, exceptions.EtcdPermissionDenied)
    assert 'user app' in str(info.value)
    assert 'invalid user ID or password' in str(info.value)

    async def main():
        async with async_client(auth_server, 'app',
                                'wrong-Secret-7tt') as c:
            with pytest.raises(exceptions.EtcdAuthError) as e:
                await v3_async.AsyncV3Backend(c).watch_tree('/app/x', 1, 5)
            return str(e.value) + repr(e.value) + repr(c)
    shown = asyncio.run(main())
    assert 'user app' in shown
    no_password_in(caplog.text, str(info.value), repr(info.value),
                   repr(bad), shown)


def test_no_credentials_on_an_etcd_with_auth(auth_server):
    anon = v3client.client([endpoint(auth_server)], timeout=5)
    with pytest.raises(exceptions.EtcdAuthError) as info:
        v3_backend.V3Backend(anon).read_key('/app/x')
    assert 'username' in str(info.value)
    with pytest.raises(exceptions.EtcdPermissionDenied) as watch:
        v3_backend.V3Backend(anon).watch_key('/app/x', 1, 5)
    assert 'anonymous' in str(watch.value)


def test_etcd3gw_calls_of_the_client_carry_the_token(auth_server):
    """FailoverEtcd3Client's own etcd3gw methods authenticate too."""
    app = client(auth_server)
    key = '/app/gw-%s' % uuid.uuid4().hex[:8]
    assert app.put(key, 'v')
    before = app.auth.authentications
    auth_server.restart()           # every token forgotten
    assert app.get(key) == [b'v']
    assert app.auth.authentications == before + 1


# -- a cluster ----------------------------------------------------------------

def test_a_token_is_valid_on_every_member():
    """Simple tokens are replicated through raft: one token per cluster.

    A token got from one member works on the others, so
    FailoverEtcd3Client keeps its token when it moves to another member.
    """
    with EtcdCluster(size=3, enable_v2=False,
                     extra_args=['--auth-token-ttl', '5']) as cluster:
        first = cluster.members[0]
        set_up_auth(first)
        endpoints = [endpoint(m) for m in cluster.members]
        app = v3client.client(endpoints, username='app', password=APP_PW,
                              timeout=5)
        backend = v3_backend.V3Backend(app)
        assert backend.create('/app/c/key', 'v', 10)
        token = app.auth.token
        for member in cluster.members:
            resp = requests.post(member.client_url + '/v3/kv/range',
                                 json={'key': 'L2FwcC9jL2tleQ=='},
                                 headers={'Authorization': token},
                                 timeout=5)
            assert resp.status_code == 200, resp.text
        # Failover keeps the token: the first request finds the member
        # down and moves on (as a recipe's retry would), the next works.
        first.stop()
        with pytest.raises(exceptions.EtcdUnavailable):
            backend.read_key('/app/c/key')
        assert backend.read_key('/app/c/key')[0].value == 'v'
        assert app.base_url != first.client_url
        assert app.auth.authentications == 1
