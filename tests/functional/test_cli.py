"""The etcdwatch command end to end: subprocesses against a real etcd.

Each test runs ``python -m etcdwatch ...`` as a user would, signals it, and
checks what it printed and how it exited.  ``elect``'s COMMAND is a small
Python program (CHILD) that prints what happens to it.

The tests run on both APIs (``backend_client`` / ``fresh_backend``, see
conftest.py): the command gets ``--api v2`` or ``--api v3``, and for v3 an
etcd with the v2 API disabled.
"""

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from etcdwatch.testing.server import EtcdServer
from etcdwatch.testing.server import make_tls_files
from tests.helpers import fold_changes
from tests.helpers import wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

# Waits are generous: the machine is small and shared.
WAIT = 60

CHILD = r'''
import os, signal, sys, time
def say(text):
    sys.stdout.write(text + '\n')
    sys.stdout.flush()
mode = sys.argv[1]
if mode == 'stubborn':
    signal.signal(signal.SIGTERM, lambda *a: say('ignored'))
elif mode == 'term':
    signal.signal(signal.SIGTERM, lambda *a: (say('term'), sys.exit(9)))
say('start %d %s %s' % (os.getpid(), os.environ['ETCDWATCH_FENCING_TOKEN'],
                        os.environ['ETCDWATCH_LEADER_ID']))
if mode == 'exit':
    sys.exit(int(sys.argv[2]))
while True:
    time.sleep(0.05)
'''


def address(server):
    return '%s:%d' % (server.host, server.port)


def flags(backend):
    """``--etcd`` and ``--api`` for a driver's server and API."""
    return ['--etcd', address(backend.server), '--api', backend.name]


def _b64(text):
    return base64.b64encode(text.encode('utf-8')).decode('ascii')


def _v3(backend, path, payload):
    client = backend.client
    result = client.post(client.get_url(path), json=payload)
    return int(result['header']['revision'])


def put(backend, key, value, ttl=None):
    """Write through the driver's API; the index (v3: revision) written."""
    if backend.name == 'v2':
        return backend.client.write(key, value, ttl=ttl).modifiedIndex
    payload = {'key': _b64(key), 'value': _b64(value)}
    if ttl:
        payload['lease'] = backend.client.lease(ttl).id
    return _v3(backend, '/kv/put', payload)


def delete(backend, key):
    """Delete through the driver's API; the index (v3: revision)."""
    if backend.name == 'v2':
        return backend.client.delete(key).modifiedIndex
    return _v3(backend, '/kv/deleterange', {'key': _b64(key)})


class Cli(object):
    """One ``python -m etcdwatch ARGS`` process; collects its lines."""

    def __init__(self, *args):
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'etcdwatch'] + [str(a) for a in args],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        self.out = []
        self.err = []
        self._cond = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(stream, lines),
                             daemon=True)
            for stream, lines in ((self.proc.stdout, self.out),
                                  (self.proc.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, lines):
        for line in stream:
            with self._cond:
                lines.append(line.rstrip('\n'))
                self._cond.notify_all()

    def wait_for(self, predicate, timeout=WAIT, what='stdout'):
        """Wait until ``predicate(lines)`` is true; return its value."""
        lines = self.out if what == 'stdout' else self.err
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = predicate(list(lines))
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        'etcdwatch %s: condition not met (exit %s)\n'
                        'stdout:\n%s\nstderr:\n%s'
                        % (self.proc.args[3:], self.proc.poll(),
                           '\n'.join(self.out[-30:]),
                           '\n'.join(self.err[-30:])))
                self._cond.wait(min(left, 0.2))

    def lines_starting(self, word):
        with self._cond:
            return [line for line in self.out if line.split()[:1] == [word]]

    def signal(self, signum):
        self.proc.send_signal(signum)

    def wait(self, timeout=WAIT):
        """Exit status, once both streams are read to their end."""
        status = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(10)
        return status

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)


def run(*args, timeout=WAIT):
    """Run ``python -m etcdwatch ARGS`` to its end: (status, out, err)."""
    proc = subprocess.run([sys.executable, '-m', 'etcdwatch'] +
                          [str(a) for a in args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def elect(backend, prefix, *args, mode='term', ttl=2):
    return Cli('elect', *flags(backend), '--election-path',
               prefix + '/elections', '--ttl', ttl, *args, 'job', '--',
               sys.executable, '-c', CHILD, mode)


def starts(cli):
    """[(pid, token, leader id)] of each start of COMMAND."""
    return [(int(pid), int(token), who) for _, pid, token, who in
            (line.split() for line in cli.lines_starting('start'))]


def no_traceback(cli):
    assert not any('Traceback' in line for line in cli.err), cli.err


def readable(cli):
    """Each stderr line is the command's, with no error's repr in it."""
    for line in cli.err:
        assert line.startswith('etcdwatch %s: ' % cli.proc.args[3]), line
        for repr_part in ('MaxRetryError', 'ConnectionPool(', ' object at '):
            assert repr_part not in line, line


# -- leader ------------------------------------------------------------------

def test_leader_with_and_without_a_leader(backend_client, etcd_prefix):
    path = etcd_prefix + '/elections'
    status, out, err = run('leader', *flags(backend_client),
                           '--election-path', path, 'job')
    assert (status, out) == (1, '')
    assert err == 'etcdwatch leader: job has no leader\n'

    elector = elect(backend_client, etcd_prefix)
    try:
        elector.wait_for(lambda lines: starts(elector))
        _, _, leader_id = starts(elector)[0]
        status, out, err = run('leader', *flags(backend_client),
                               '--election-path', path, 'job')
        assert (status, out, err) == (0, leader_id + '\n', '')
        elector.signal(signal.SIGTERM)
        elector.wait()
    finally:
        elector.close()
    # It resigned on its way out: no leader at once, not after the TTL.
    status, out, _ = run('leader', *flags(backend_client),
                         '--election-path', path, 'job')
    assert (status, out) == (1, '')


def test_leader_follow_json_prints_each_new_leader(backend_client,
                                                   etcd_prefix):
    path = etcd_prefix + '/elections'
    follower = Cli('leader', *flags(backend_client), '--election-path', path,
                   '--follow', '--json', 'job')
    try:
        follower.wait_for(lambda lines: lines)
        assert json.loads(follower.out[0])['leader'] is None
        elector = elect(backend_client, etcd_prefix)
        try:
            elector.wait_for(lambda lines: starts(elector))
            _, _, leader_id = starts(elector)[0]
            follower.wait_for(lambda lines: len(lines) >= 2)
            assert json.loads(follower.out[1])['leader'] == leader_id
            elector.signal(signal.SIGTERM)
            elector.wait()
        finally:
            elector.close()
        # It resigned on its way out: the follower says so at once.
        follower.wait_for(lambda lines: len(lines) >= 3, timeout=5)
        assert json.loads(follower.out[2])['leader'] is None
        follower.signal(signal.SIGINT)
        assert follower.wait() == 0
        assert all(set(json.loads(line)) == {'leader', 't'}
                   for line in follower.out)
        assert not [line for line in follower.err if 'Traceback' in line]
    finally:
        follower.close()


@pytest.mark.parametrize('api', ['v2', 'v3'])
def test_unreachable_etcd_is_one_line_and_status_3(fresh_etcd_server, api):
    where = address(fresh_etcd_server)
    fresh_etcd_server.stop()
    for args in (['leader', 'job'], ['watch', '/p'],
                 ['elect', 'job', '--', 'true']):
        status, out, err = run(args[0], '--etcd', where, '--api', api,
                               *args[1:])
        assert (status, out) == (3, ''), err
        assert err == ('etcdwatch %s: cannot reach etcd at http://%s: '
                       'connection refused\n' % (args[0], where))


# -- elect -------------------------------------------------------------------

def test_elect_passes_on_the_commands_exit_status(backend_client,
                                                  etcd_prefix):
    path = etcd_prefix + '/elections'
    status, out, err = run(
        'elect', *flags(backend_client), '--election-path', path,
        'job', '--', sys.executable, '-c', CHILD, 'exit', '7')
    assert status == 7, err
    assert out.startswith('start ')
    assert 'exited with status 7; resigning' in err
    # Resigned: the key is gone.
    assert backend_client.state(path) == {}


def test_elect_stops_the_command_when_the_key_is_deleted(
        backend_client, etcd_prefix):
    elector = elect(backend_client, etcd_prefix)
    try:
        elector.wait_for(lambda lines: starts(elector))
        key = etcd_prefix + '/elections/master_job'
        backend_client.delete(key)
        # The command gets SIGTERM; elect campaigns again, wins the free
        # key and runs it again in a new term.
        elector.wait_for(lambda lines: len(starts(elector)) == 2)
        first, second = starts(elector)
        assert elector.lines_starting('term') == ['term']
        assert second[1] > first[1] and second[2] == first[2]
        assert not psutil.pid_exists(first[0]) or psutil.Process(
            first[0]).status() == psutil.STATUS_ZOMBIE
        assert any('lost leadership' in line for line in elector.err)
        # SIGTERM to elect reaches the command, whose status is elect's.
        elector.signal(signal.SIGTERM)
        assert elector.wait() == 9
        assert elector.lines_starting('term') == ['term', 'term']
        no_traceback(elector)
    finally:
        elector.close()
    assert backend_client.state(etcd_prefix + '/elections') == {}


def test_elect_kills_a_command_that_ignores_sigterm(
        backend_client, etcd_prefix):
    elector = elect(backend_client, etcd_prefix, '--grace', '1',
                    mode='stubborn')
    try:
        elector.wait_for(lambda lines: starts(elector))
        backend_client.delete(etcd_prefix + '/elections/master_job')
        elector.wait_for(lambda lines: len(starts(elector)) == 2)
        assert elector.lines_starting('ignored') == ['ignored']
        assert any('SIGKILL' in line for line in elector.err)
        # Named by its signal, not by a status to decode.
        assert any(line.endswith(' was killed by SIGKILL (status 137); '
                                 'campaigning again') for line in elector.err)
        elector.signal(signal.SIGTERM)
        assert elector.wait() == 128 + signal.SIGKILL
        no_traceback(elector)
    finally:
        elector.close()


def test_a_waiting_elect_takes_over_when_the_leader_resigns(
        backend_client, etcd_prefix):
    # A long TTL: the hand-over is the resignation, not an expiry.
    first = elect(backend_client, etcd_prefix, ttl=60)
    second = None
    try:
        first.wait_for(lambda lines: starts(first))
        second = elect(backend_client, etcd_prefix, ttl=60)
        # The follower says who leads.
        second.wait_for(lambda lines: 'etcdwatch elect: waiting: %s leads '
                        'job' % starts(first)[0][2] in lines, what='stderr')
        assert starts(second) == []
        stopped = time.monotonic()
        first.signal(signal.SIGTERM)
        assert first.wait() == 9
        second.wait_for(lambda lines: starts(second), timeout=30)
        assert time.monotonic() - stopped < 30
        assert starts(second)[0][1] > starts(first)[0][1]
        second.signal(signal.SIGTERM)
        assert second.wait() == 9
    finally:
        first.close()
        if second is not None:
            second.close()


def test_elect_waiting_for_leadership_exits_0_on_sigint(
        backend_client, etcd_prefix):
    key = etcd_prefix + '/elections/master_job'
    backend_client.put(key, 'someone-else', ttl=60)
    elector = elect(backend_client, etcd_prefix)
    try:
        elector.wait_for(lambda lines: any('campaigning' in line
                                           for line in lines), what='stderr')
        elector.signal(signal.SIGINT)
        assert elector.wait() == 0
        assert starts(elector) == []
        no_traceback(elector)
    finally:
        elector.close()
    assert backend_client.get(key) == 'someone-else'


def test_elect_paused_past_its_ttl_stops_the_command_when_resumed(
        backend_client, etcd_prefix):
    first = elect(backend_client, etcd_prefix)
    second = None
    try:
        first.wait_for(lambda lines: starts(first))
        second = elect(backend_client, etcd_prefix)
        second.wait_for(lambda lines: any('campaigning' in line
                                          for line in lines), what='stderr')
        # A frozen elect cannot renew: the key expires, the other takes
        # over.  (COMMAND is not frozen with it; see the docs.)
        first.signal(signal.SIGSTOP)
        second.wait_for(lambda lines: starts(second))
        resumed = time.monotonic()
        first.signal(signal.SIGCONT)
        first.wait_for(lambda lines: 'term' in lines)
        assert time.monotonic() - resumed < 10
        assert starts(second)[0][1] > starts(first)[0][1]
    finally:
        first.close()
        if second is not None:
            second.close()


def test_elect_killed_takes_its_command_with_it(backend_client,
                                                etcd_prefix):
    elector = elect(backend_client, etcd_prefix)
    try:
        elector.wait_for(lambda lines: starts(elector))
        pid = starts(elector)[0][0]
        elector.proc.kill()
        elector.proc.wait(10)

        def gone():
            try:
                return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True
        wait_until(gone, timeout=WAIT)
    finally:
        elector.close()


# -- watch -------------------------------------------------------------------

def watch(backend, prefix, *args):
    return Cli('watch', *flags(backend), *(args + (prefix,)))


def changes(lines):
    """(action, key, value) of every --json line."""
    return [(c['action'], c['key'], c['value'])
            for c in map(json.loads, lines)]


def test_watch_prints_the_state_then_each_change(backend_client,
                                                 etcd_prefix):
    b, p = backend_client, etcd_prefix
    put(b, p + '/a', '1')
    index = put(b, p + '/b/c', 'two words')
    watcher = watch(b, p, '--json')
    try:
        watcher.wait_for(lambda lines: len(lines) == 2)
        initial = [json.loads(line) for line in watcher.out]
        assert initial == [
            {'action': 'add', 'key': p + '/a', 'value': '1',
             'index': index},
            {'action': 'add', 'key': p + '/b/c', 'value': 'two words',
             'index': index}]
        written = [put(b, p + '/a', '2')]
        put(b, p + '/a', '2')                   # same value: no line
        written.append(delete(b, p + '/b/c'))
        written.append(put(b, p + '/d', 'x\ny'))
        put(b, p + '/d', 'x\ny', ttl=1)          # expires: a delete
        watcher.wait_for(lambda lines: len(lines) == 6)
        later = [json.loads(line) for line in watcher.out[2:]]
        assert [(c['action'], c['key'], c['value']) for c in later] == [
            ('change', p + '/a', '2'), ('delete', p + '/b/c', None),
            ('add', p + '/d', 'x\ny'), ('delete', p + '/d', None)]
        assert [c['index'] for c in later[:3]] == written
        watcher.signal(signal.SIGINT)
        assert watcher.wait() == 0
        no_traceback(watcher)
    finally:
        watcher.close()


def test_watch_readable_lines(backend_client, etcd_prefix):
    b, p = backend_client, etcd_prefix
    index = put(b, p + '/a', 'blue')
    watcher = watch(b, p)
    try:
        watcher.wait_for(lambda lines: lines)
        index2 = delete(b, p + '/a')
        watcher.wait_for(lambda lines: len(lines) == 2)
        assert watcher.out == ['%6d  add     %s/a = blue' % (index, p),
                               '%6d  delete  %s/a' % (index2, p)]
        watcher.signal(signal.SIGTERM)
        assert watcher.wait() == 0
        assert watcher.err == ['etcdwatch watch: watching %s: 1 key at '
                               'index %d' % (p, index)]
    finally:
        watcher.close()


def test_watch_keeps_going_across_an_etcd_restart(fresh_backend):
    b = fresh_backend
    b.put('/p/a', '1')
    watcher = watch(b, '/p', '--json', '--heartbeat', '2')
    try:
        watcher.wait_for(lambda lines: len(lines) == 1)
        b.server.kill()
        # It notices and says so on stderr (no traceback), in one line
        # that names the outage and its reason.
        watcher.wait_for(lambda lines: any('etcd unavailable (' in line
                                           for line in lines),
                         what='stderr')
        b.server.start()
        b.reconnect()
        b.put('/p/b', '2')
        b.delete('/p/a')
        watcher.wait_for(lambda lines: len(lines) == 3)
        assert changes(watcher.out) == [('add', '/p/a', '1'),
                                        ('add', '/p/b', '2'),
                                        ('delete', '/p/a', None)]
        # Its end is told too, at the default verbosity.
        watcher.wait_for(lambda lines: any('etcd available again after '
                                           in line for line in lines),
                         what='stderr')
        watcher.signal(signal.SIGTERM)
        assert watcher.wait() == 0
        no_traceback(watcher)
        readable(watcher)
    finally:
        watcher.close()


def test_watch_resyncs_when_etcd_history_is_gone(fresh_backend):
    b = fresh_backend
    b.put('/p/a', '1')
    b.put('/p/gone', 'x')
    watcher = watch(b, '/p', '--json', '-v')
    try:
        watcher.wait_for(lambda lines: len(lines) == 2)
        # Frozen, it loses its watch (etcd restarts: a v3 watch stream
        # would otherwise hold the events already) and misses the
        # changes' history (v2 keeps 1000 events; v3 is compacted).
        watcher.signal(signal.SIGSTOP)
        b.server.kill()
        b.server.start()
        b.reconnect()
        b.put('/p/a', '2')
        b.put('/p/b', '3')
        b.delete('/p/gone')
        b.forget_history(3)
        watcher.signal(signal.SIGCONT)
        watcher.wait_for(lambda lines: any('re-read' in line
                                           for line in lines),
                         what='stderr')
        truth = b.state('/p')
        watcher.wait_for(lambda lines: fold_changes(changes(lines)) == truth)
        watcher.signal(signal.SIGINT)
        assert watcher.wait() == 0
        no_traceback(watcher)
    finally:
        watcher.close()


# -- demo --------------------------------------------------------------------

def test_demo_on_a_real_etcd(backend_client):
    status, out, err = run('demo', *flags(backend_client), timeout=120)
    assert status == 0, err
    assert out.count(' leads ') == 3
    assert 'after the stop' in out and 'after the hang' in out
    assert out.splitlines()[-1].split(None, 1)[1].startswith('done:')
    assert backend_client.state('/etcdwatch-demo') == {}


# -- TLS ---------------------------------------------------------------------

@pytest.fixture(scope='module')
def tls_server():
    """etcd serving HTTPS (v2 and v3) to clients with a certificate."""
    with EtcdServer(name='cli-tls', tls=True) as server:
        yield server


@pytest.mark.parametrize('api', ['v2', 'v3'])
def test_tls_errors_give_the_ssl_reason_in_full(tls_server, tmp_path, api):
    files = tls_server.tls_files
    url = 'https://' + address(tls_server)
    other = make_tls_files(tmp_path / 'other')

    def leader(cacert, *more):
        return run('leader', '--api', api, '--etcd', url, '--cacert',
                   cacert, '--election-path', '/cli-tls', 'job', *more)
    client = ('--cert', files.client_cert, '--key', files.client_key)
    # The right files: reached, and nobody leads.
    assert leader(files.ca_cert, *client) == (
        1, '', 'etcdwatch leader: job has no leader\n')
    # The wrong CA: the ssl error docs/tls.rst tells to look for.
    status, out, err = leader(other.ca_cert, *client)
    assert (status, out) == (3, '')
    assert err == ('etcdwatch leader: cannot reach etcd at %s: [SSL: '
                   'CERTIFICATE_VERIFY_FAILED] certificate verify failed: '
                   'unable to get local issuer certificate\n' % url)
    # No client certificate: etcd's refusal, named.
    status, out, err = leader(files.ca_cert)
    assert (status, out) == (3, '')
    assert len(err.splitlines()) == 1, err
    assert err.startswith('etcdwatch leader: cannot reach etcd at %s: [SSL: '
                          % url), err
    # -vv: the same line, and the traceback under it.
    status, out, err = leader(other.ca_cert, '-vv', *client)
    assert status == 3
    line = ('etcdwatch leader: cannot reach etcd at %s: [SSL: '
            'CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable '
            'to get local issuer certificate' % url)
    assert line in err.splitlines()
    assert 'Traceback (most recent call last):' in err[err.index(line):]
