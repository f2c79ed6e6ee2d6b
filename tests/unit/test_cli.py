"""The etcdwatch command without a real etcd: arguments, help, output
formats, unreachable etcd, the demo and ``elect``'s supervisor on the fake.
"""

import configparser
import importlib.metadata
import io
import logging
import os
import signal
import socket
import subprocess
import sys
import threading

import etcd
import pytest

import etcdwatch
from etcdwatch import backends
from etcdwatch import cli
from etcdwatch.cli import supervisor as cli_supervisor
from etcdwatch import demo
from etcdwatch import election
from etcdwatch import exceptions
from etcdwatch import outage
from etcdwatch.testing import FakeEtcdClient
from etcdwatch import watcher
from tests.helpers import HangingRefresh
from tests.helpers import wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

SUBCOMMANDS = ['demo', 'watch', 'elect', 'leader']


def run_main(capsys, *argv):
    """main(argv) -> (status, stdout, stderr); SystemExit counts too."""
    try:
        status = cli.main(list(argv))
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


def closed_port():
    sock = socket.socket()
    sock.bind(('127.0.0.1', 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


# -- help and usage errors ---------------------------------------------------

def test_help_lists_every_subcommand(capsys):
    status, out, _ = run_main(capsys, '--help')
    assert status == 0
    for name in SUBCOMMANDS:
        assert name in out


@pytest.mark.parametrize('name', SUBCOMMANDS)
def test_every_subcommand_has_help(capsys, name):
    status, out, err = run_main(capsys, name, '--help')
    assert status == 0, err
    assert out.startswith('usage: etcdwatch %s' % name)
    assert '--etcd' in out
    assert '--api {v2,v3}' in out


@pytest.mark.parametrize('argv', [
    [],
    ['frobnicate'],
    ['watch'],
    ['watch', 'relative/path'],
    ['watch', '/a?b'],
    ['watch', '/_hidden'],
    ['watch', '/p', '--heartbeat', '0'],
    ['watch', '/p', '--etcd', 'host:notaport'],
    ['watch', '/p', '--etcd', 'ftp://host:1'],
    ['watch', '/p', '--etcd', 'a:1,,b:2'],
    ['leader'],
    ['leader', 'a/b'],
    ['leader', 'x', '--election-path', 'no-slash'],
    ['leader', 'x', '--key', 'k.pem'],
    ['elect', 'x'],
    ['elect', 'x', '--'],
    ['elect', 'x', '--ttl', '-1', '--', 'true'],
    ['elect', 'x', '--grace', 'soon', '--', 'true'],
    ['elect', 'x', '-e', 'true'],
    ['demo', '--etcd', ''],
    ['demo', 'extra'],
    ['watch', '/p', '--api', 'v4'],
    ['leader', 'x', '--api', 'V3'],
    ['--api', '3', 'leader', 'x'],
    ['elect', 'x', '--api', '--', 'true'],
])
def test_usage_errors_print_one_line_and_exit_2(capsys, argv):
    status, out, err = run_main(capsys, *argv)
    assert status == 2
    assert out == ''
    assert len(err.splitlines()) == 1, err
    assert 'error:' in err and '--help' in err


def test_mixed_protocols_are_a_usage_error(capsys):
    status, _, err = run_main(capsys, 'leader', 'x', '--etcd',
                              'http://a:1,https://b:2')
    assert status == 2
    assert err.strip() == ('etcdwatch leader: --etcd mixes http:// and '
                           'https://')


def test_common_options_go_before_or_after_the_subcommand():
    before = cli.parse_args(['--etcd', 'h:1', '--timeout', '2', 'leader',
                             'x'])
    after = cli.parse_args(['leader', 'x', '--etcd', 'h:1', '--timeout',
                            '2'])
    for args in (before, after):
        assert args.etcd == [cli.Endpoint(None, 'h', 1)]
        assert args.timeout == 2.0
    default = cli.parse_args(['leader', 'x'])
    assert default.etcd is None and default.timeout == 5.0
    assert default.election_path == '/etcdwatch/elections'


def test_api_goes_before_or_after_the_subcommand_and_defaults_to_v2(
        monkeypatch):
    monkeypatch.delenv('ETCDWATCH_API', raising=False)
    for argv in (['--api', 'v3', 'watch', '/p'],
                 ['watch', '/p', '--api', 'v3'],
                 ['--api', 'v2', 'watch', '--api', 'v3', '/p']):
        assert cli.parse_args(argv).api == 'v3'
    assert cli.parse_args(['leader', 'x']).api == 'v2'
    assert cli.parse_args(['demo']).api == 'v2'


def test_api_from_the_environment(monkeypatch):
    monkeypatch.setenv('ETCDWATCH_API', 'v3')
    assert cli.parse_args(['leader', 'x']).api == 'v3'
    assert cli.parse_args(['leader', 'x', '--api', 'v2']).api == 'v2'
    monkeypatch.setenv('ETCDWATCH_API', '')
    assert cli.parse_args(['leader', 'x']).api == 'v2'


def test_bad_api_in_the_environment_is_a_usage_error(capsys, monkeypatch):
    monkeypatch.setenv('ETCDWATCH_API', 'v4')
    status, out, err = run_main(capsys, 'leader', 'x')
    assert (status, out) == (2, '')
    assert err.splitlines() == [
        "etcdwatch leader: error: $ETCDWATCH_API must be v2 or v3, not "
        "'v4' (see etcdwatch leader --help)"]
    # --api wins over it.
    status, _, err = run_main(capsys, 'leader', 'x', '--api', 'v2',
                              '--etcd', '127.0.0.1:%d' % closed_port())
    assert status == 3, err


@pytest.fixture
def listener():
    """A listening socket that must never see a connection."""
    sock = socket.socket()
    sock.bind(('127.0.0.1', 0))
    sock.listen(8)
    sock.setblocking(False)
    yield '127.0.0.1:%d' % sock.getsockname()[1]
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        pass
    else:
        conn.close()
        raise AssertionError('something connected to etcd')
    finally:
        sock.close()


def test_several_endpoints_with_api_v3_give_a_failover_client(listener):
    from etcdwatch import v3client
    args = cli.parse_args(['watch', '/p', '--api', 'v3', '--etcd',
                           '%s,[::1]:2,h3' % listener, '--timeout', '4'])
    client = cli.make_client(args)          # sends nothing yet
    assert isinstance(client, v3client.FailoverEtcd3Client)
    host, port = listener.split(':')
    assert client.endpoints == [(host, int(port)), ('::1', 2),
                                ('h3', 2379)]
    assert client.timeout == 4 and client.session.trust_env is False


def test_api_v3_from_the_environment_with_several_endpoints(
        listener, monkeypatch):
    from etcdwatch import v3client
    monkeypatch.setenv('ETCDWATCH_API', 'v3')
    client = cli.make_client(cli.parse_args(
        ['leader', 'x', '--etcd', '%s,%s' % (listener, listener)]))
    assert isinstance(client, v3client.FailoverEtcd3Client)
    assert len(client.endpoints) == 2


def tls_files(tmp_path, *names):
    """Paths of empty files: make_client only checks they can be read."""
    paths = [str(tmp_path / name) for name in names]
    for path in paths:
        open(path, 'w').close()
    return paths


def test_v3_client_gets_the_address_and_tls_options(tmp_path):
    import etcd3gw
    ca, cert, key, both = tls_files(tmp_path, 'ca.pem', 'c.pem', 'k.pem',
                                    'both.pem')
    args = cli.parse_args(['leader', 'x', '--api', 'v3', '--etcd',
                           '[::1]:4001', '--timeout', '2', '--cacert',
                           ca, '--cert', cert, '--key', key])
    client = cli.make_client(args)
    assert isinstance(client, etcd3gw.Etcd3Client)
    assert client.base_url == 'https://[::1]:4001'
    assert client.timeout == 2.0
    assert client.session.verify == ca
    assert client.session.cert == (cert, key)
    # $REQUESTS_CA_BUNDLE would replace --cacert: the environment is off.
    assert client.session.trust_env is False
    # A --cert that holds the key too: etcd3gw would drop it alone.
    args = cli.parse_args(['leader', 'x', '--api', 'v3', '--etcd',
                           'https://h', '--cert', both])
    client = cli.make_client(args)
    assert client.base_url == 'https://h:2379'
    assert client.session.cert == (both, both)
    args = cli.parse_args(['leader', 'x', '--api', 'v3', '--etcd', 'h:1'])
    client = cli.make_client(args)
    assert client.base_url == 'http://h:1' and client.session.cert is None


def test_api_v3_without_etcd3gw_is_one_line(capsys, monkeypatch, listener):
    monkeypatch.setitem(sys.modules, 'etcd3gw', None)
    status, out, err = run_main(capsys, 'leader', 'x', '--api', 'v3',
                                '--etcd', listener)
    assert (status, out) == (2, '')
    assert len(err.splitlines()) == 1
    assert "pip install '.[v3]'" in err


def test_elect_takes_the_command_after_the_double_dash():
    args = cli.parse_args(['elect', 'job', '--grace', '1', '--', 'cmd',
                           '--', '-h', '--grace'])
    assert args.command == ['cmd', '--', '-h', '--grace']
    assert args.grace == 1.0
    # Without "--", a command without options of its own.
    assert cli.parse_args(['elect', 'job', 'cmd', 'x']).command == [
        'cmd', 'x']


@pytest.mark.parametrize('text, expected', [
    ('127.0.0.1:2379', [(None, '127.0.0.1', 2379)]),
    ('etcd.example', [(None, 'etcd.example', 2379)]),
    ('http://a:1/, https://b:2', [('http', 'a', 1), ('https', 'b', 2)]),
    ('[::1]:4001', [(None, '::1', 4001)]),
    ('HTTP://[fe80::1]', [('http', 'fe80::1', 2379)]),
])
def test_parse_endpoints(text, expected):
    assert cli.parse_endpoints(text) == [cli.Endpoint(*e) for e in expected]


def test_an_address_with_a_password_is_refused_without_echoing_it(capsys):
    for address in ('http://root:s3cret-PW@h:1', 'root:s3cret-PW@h'):
        status, out, err = run_main(capsys, 'leader', 'x', '--etcd',
                                    address)
        assert (status, out) == (2, '')
        assert 'USER@HOST' in err and 's3cret-PW' not in err


@pytest.mark.parametrize('text', ['', 'a:', 'a:0', 'a:65536', 'a:b:c',
                                  'a/b', 'unix://x', '[::1', 'a b'])
def test_parse_endpoints_refuses(text):
    with pytest.raises(ValueError):
        cli.parse_endpoints(text)


def test_setup_cfg_entry_point_is_main():
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, 'setup.cfg'))
    scripts = config['entry_points']['console_scripts'].split('\n')
    assert 'etcdwatch = etcdwatch.cli:main' in [s.strip() for s in scripts]


def test_py_typed_marker_ships_with_the_package():
    import etcdwatch
    assert os.path.isfile(os.path.join(os.path.dirname(etcdwatch.__file__),
                                       'py.typed'))


# -- output ------------------------------------------------------------------

def test_format_change_readable():
    assert cli.format_change('add', '/p/a', 'blue', 12) == (
        '    12  add     /p/a = blue')
    assert cli.format_change('delete', '/p/a', None, 13) == (
        '    13  delete  /p/a')
    # A value that would break the one-line-per-change rule is quoted.
    assert cli.format_change('change', '/p/a', 'x\ny', 14).endswith(
        '/p/a = "x\\ny"')


def test_format_change_json():
    import json
    line = cli.format_change('delete', '/p/a', None, 7, as_json=True)
    assert json.loads(line) == {'action': 'delete', 'key': '/p/a',
                                'value': None, 'index': 7}


def test_reason_names_the_socket_error():
    cause = ConnectionRefusedError(111, 'Connection refused')
    try:
        try:
            raise OSError("HTTPConnectionPool(host='h', port=1): Max "
                          'retries exceeded ([Errno 111] Connection '
                          "refused')") from cause
        except OSError as e:
            raise exceptions.EtcdUnavailable('read /x: etcd unreachable: '
                                             '%s' % e) from e
    except exceptions.EtcdUnavailable as e:
        assert cli.reason(e) == 'connection refused'


def test_reason_is_given_in_full_on_one_line():
    text = 'etcd said: ' + ' '.join('word%d' % i for i in range(100))
    assert cli.reason(exceptions.BackendError(text + '\n  more')) == (
        text + ' more')


SSL_TEXT = ('[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: '
            "IP address mismatch, certificate is not valid for '10.0.0.1'")


def _python_etcd_ssl_failure():
    # As python-etcd and urllib3 nest it; etcdwatch's backend adds one.
    import ssl
    import urllib3.exceptions
    bad = ssl.SSLCertVerificationError(1, SSL_TEXT + '. (_ssl.c:1006)')
    pool = urllib3.exceptions.MaxRetryError(
        None, '/v2/keys/x', urllib3.exceptions.SSLError(bad))
    failed = etcd.EtcdConnectionFailed('Connection to etcd failed due to '
                                       '%r' % pool, cause=pool)
    try:
        raise exceptions.EtcdUnavailable('read /x: %s' % failed) from failed
    except exceptions.EtcdUnavailable as e:
        return e


def test_reason_gives_the_ssl_error_in_full():
    assert cli.reason(_python_etcd_ssl_failure()) == SSL_TEXT
    # Text only (etcd3gw keeps requests' message, not its error).
    text = ('HTTPSConnectionPool(host=\'h\', port=1): Max retries exceeded '
            'with url: /v3/kv/range (Caused by SSLError(SSLCertVerification'
            'Error(1, "%s. (_ssl.c:1006)")))' % SSL_TEXT)
    assert cli.reason(exceptions.EtcdUnavailable(text)) == SSL_TEXT
    alert = ('(Caused by SSLError(SSLError(1, \'[SSL: TLSV13_ALERT_CERTIFICATE'
             '_REQUIRED] tlsv13 alert certificate required (_ssl.c:2580)\')))')
    assert cli.reason(exceptions.EtcdUnavailable(alert)) == (
        '[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate '
        'required')


# -- etcd that cannot be reached ---------------------------------------------

@pytest.mark.parametrize('api', ['v2', 'v3'])
@pytest.mark.parametrize('argv', [
    ['leader', 'x'],
    ['watch', '/p'],
    ['elect', 'x', '--', sys.executable, '-c', 'pass'],
    ['demo'],
])
def test_unreachable_etcd_is_one_line_and_status_3(capsys, argv, api):
    address = '127.0.0.1:%d' % closed_port()
    status, out, err = run_main(capsys, argv[0], '--etcd', address,
                                '--api', api, *argv[1:])
    assert status == 3
    assert out == ''
    assert err.splitlines() == [
        'etcdwatch %s: cannot reach etcd at http://%s: connection refused'
        % (argv[0], address)]


def test_unreachable_cluster_is_one_line_and_status_3(capsys):
    address = '127.0.0.1:%d,127.0.0.1:%d' % (closed_port(), closed_port())
    status, _, err = run_main(capsys, 'leader', 'x', '--etcd', address)
    assert status == 3
    assert len(err.splitlines()) == 1
    assert err.startswith('etcdwatch leader: cannot reach etcd at http://')


def test_python_m_etcdwatch_api_v3_unreachable_is_one_line():
    # In a process of its own: etcd3gw is imported there, and the
    # deprecation warning of eventlet (which it imports) must not show.
    address = '127.0.0.1:%d' % closed_port()
    env = dict(os.environ)
    env.pop('PYTHONWARNINGS', None)
    proc = subprocess.run([sys.executable, '-m', 'etcdwatch', 'leader',
                           'x', '--api', 'v3', '--etcd', address],
                          cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)
    assert (proc.returncode, proc.stdout) == (3, '')
    assert proc.stderr.splitlines() == [
        'etcdwatch leader: cannot reach etcd at http://%s: connection '
        'refused' % address]


def test_v3_etcd_that_is_not_etcd_is_status_3(capsys):
    # A web server that answers 404 to everything, as etcd would not.
    import http.server

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)
        do_POST = do_GET

        def log_message(self, *args):
            pass
    server = http.server.HTTPServer(('127.0.0.1', 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        address = '127.0.0.1:%d' % server.server_address[1]
        status, out, err = run_main(capsys, 'leader', 'x', '--api', 'v3',
                                    '--etcd', address)
    finally:
        server.shutdown()
        server.server_close()
    assert (status, out) == (3, '')
    assert len(err.splitlines()) == 1
    assert err.startswith('etcdwatch leader: etcd at http://%s does not '
                          'serve the v3 API (it needs etcd 3.4 or later): '
                          % address), err


def test_env_names_the_default_etcd(capsys, monkeypatch):
    address = '127.0.0.1:%d' % closed_port()
    monkeypatch.setenv('ETCDWATCH_ETCD', address)
    status, _, err = run_main(capsys, 'leader', 'x')
    assert status == 3
    assert address in err


# -- the demo ----------------------------------------------------------------

def test_demo_on_the_fake_shows_leaders_changes_and_failovers():
    out = io.StringIO()
    client = FakeEtcdClient()
    assert demo.run(client, out=out, pace=0) == 0
    # It leaves nothing behind.
    assert client.dump('/etcdwatch-demo') == {}
    lines = [line.split(None, 1)[1] for line in out.getvalue().splitlines()]
    leads = [line for line in lines if ' leads ' in line]
    assert len(leads) == 3
    assert len({line.split()[0] for line in leads}) == 3
    assert 'after the stop' in leads[1] and 'after the hang' in leads[2]
    first = leads[0].split()[0]
    sees = [line for line in lines if line.startswith(first + ' ')
            and ' sees ' in line]
    # The rewrite with the same value is not reported.
    assert [s.split(None, 2)[2] for s in sees] == [
        'color = blue', 'size = large', 'color = green', 'size deleted']
    # The hung leader reports its own loss.
    hung = leads[1].split()[0]
    assert any(line.startswith(hung + ' ') and ' lost ' in line
               for line in lines)
    assert lines[-1].startswith('done:')


def test_python_m_etcdwatch_demo_runs_on_the_fake():
    # The README's command, as a user runs it (no etcd anywhere).
    proc = subprocess.run([sys.executable, '-m', 'etcdwatch', 'demo'],
                          cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert 'embedded in-memory etcd' in proc.stdout
    assert proc.stdout.count(' leads ') == 3
    assert proc.stderr == ''


# -- elect's supervisor on the fake ------------------------------------------

CHILD = r'''
import os, signal, sys, time
path = sys.argv[1]
def note(text):
    with open(path, 'a') as f:
        f.write(text + '\n')
if sys.argv[2] == 'stubborn':
    signal.signal(signal.SIGTERM, lambda *a: note('ignored'))
elif sys.argv[2] == 'term':
    signal.signal(signal.SIGTERM, lambda *a: (note('term'), sys.exit(9)))
note('start %s %s' % (os.environ['ETCDWATCH_FENCING_TOKEN'],
                      os.environ['ETCDWATCH_LEADER_ID']))
if sys.argv[2] == 'exit':
    sys.exit(int(sys.argv[3]))
if sys.argv[2] == 'signal':
    os.kill(os.getpid(), int(sys.argv[3]))
while True:
    time.sleep(0.05)
'''


def notes(path):
    try:
        with open(path) as f:
            return f.read().split('\n')[:-1]
    except FileNotFoundError:
        return []


def supervisor(client, tmp_path, mode, *extra, grace=5.0):
    path = str(tmp_path / 'notes')
    command = [sys.executable, '-c', CHILD, path, mode] + list(extra)
    return cli.Supervisor(client, 'job', '/elections', command, ttl=1.0,
                          recovery_time=1.0, grace=grace), path


def in_thread(func):
    thread = threading.Thread(target=func, daemon=True)
    thread.start()
    return thread


def test_elect_exits_with_the_commands_status_and_resigns(tmp_path):
    client = FakeEtcdClient()
    sup, path = supervisor(client, tmp_path, 'exit', '7')
    assert sup.run() == 7
    token, leader_id = notes(path)[0].split()[1:]
    assert leader_id == sup.elector.thread_id
    assert int(token) > 0
    assert sup.elector.leader() is None


def test_elect_stops_the_command_when_leadership_is_lost(tmp_path):
    client = FakeEtcdClient()
    sup, path = supervisor(client, tmp_path, 'term')

    def drive():
        wait_until(lambda: notes(path), timeout=30)
        client.delete(sup.elector.master_key)
        # Lost: SIGTERM; then elected again: a second run.
        wait_until(lambda: len(notes(path)) >= 3, timeout=30)
        os.kill(os.getpid(), signal.SIGTERM)
    driver = in_thread(drive)
    status = sup.run()
    driver.join(10)
    lines = notes(path)
    assert [line.split()[0] for line in lines] == ['start', 'term', 'start',
                                                   'term']
    # Two terms, the second later than the first.
    assert int(lines[2].split()[1]) > int(lines[0].split()[1])
    # The signal was passed on; the command's status is ours.
    assert status == 9
    assert sup.elector.leader() is None


def test_elect_kills_a_command_that_ignores_sigterm(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger='etcdwatch.cli')
    client = FakeEtcdClient()
    sup, path = supervisor(client, tmp_path, 'stubborn', grace=0.5)

    def drive():
        wait_until(lambda: notes(path), timeout=30)
        client.delete(sup.elector.master_key)
        wait_until(lambda: len(notes(path)) >= 3, timeout=30)
        os.kill(os.getpid(), signal.SIGTERM)
    in_thread(drive)
    assert sup.run() == 128 + signal.SIGKILL
    assert [line.split()[0] for line in notes(path)] == [
        'start', 'ignored', 'start', 'ignored']
    assert 'was killed by SIGKILL (status 137); campaigning again' in (
        caplog.text)


def test_elect_signalled_before_it_leads_exits_0(tmp_path):
    client = FakeEtcdClient()
    client.write('/elections/master_job', 'someone-else', ttl=60)
    sup, path = supervisor(client, tmp_path, 'term')

    def drive():
        assert client.wait_for_watches(1, timeout=30)
        os.kill(os.getpid(), signal.SIGTERM)
    in_thread(drive)
    assert sup.run() == 0
    assert notes(path) == []
    assert sup.elector.leader() == 'someone-else'


def test_elect_command_not_found_is_127(tmp_path):
    client = FakeEtcdClient()
    sup = cli.Supervisor(client, 'job', '/elections',
                         [str(tmp_path / 'no-such-command')], ttl=1.0,
                         recovery_time=1.0, grace=1.0)
    assert sup.run() == 127
    assert sup.elector.leader() is None


def test_elect_keeps_the_key_until_the_command_has_exited(tmp_path):
    # The term ends on the lease deadline (renewals hang: a member cut off
    # from its cluster) while the key is still ours on the server.  The
    # command may still run for --grace: the key must not be released
    # (so that another worker starts) before it has exited.
    client = FakeEtcdClient()
    hanging = HangingRefresh(client, hanging=False)
    release = hanging.release

    path = str(tmp_path / 'notes')
    command = [sys.executable, '-c', CHILD, path, 'stubborn']
    sup = cli.Supervisor(hanging, 'job', '/elections', command, ttl=6.0,
                         recovery_time=1.0, grace=2.0)
    held_while_running = []

    def drive():
        wait_until(lambda: notes(path), timeout=30)
        hanging.hanging = True
        # The lease deadline passes: SIGTERM, which the command ignores.
        wait_until(lambda: 'ignored' in ''.join(notes(path)), timeout=30)
        try:
            held_while_running.append(
                client.read('/elections/master_job').value)
        except etcd.EtcdKeyNotFound:
            held_while_running.append(None)
        release.set()
        wait_until(lambda: len(notes(path)) >= 3, timeout=30)
        os.kill(os.getpid(), signal.SIGTERM)
    driver = in_thread(drive)
    try:
        assert sup.run() == 128 + signal.SIGKILL
    finally:
        release.set()
        driver.join(10)
    assert held_while_running == [sup.elector.thread_id]
    assert sup.elector.leader() is None


def test_a_command_killed_by_a_signal_is_reported_by_its_name(
        tmp_path, caplog):
    caplog.set_level(logging.INFO, logger='etcdwatch.cli')
    sup, path = supervisor(FakeEtcdClient(), tmp_path, 'signal',
                           str(int(signal.SIGTERM)))
    assert sup.run() == 128 + signal.SIGTERM
    assert notes(path)[0].startswith('start ')
    messages = [r.getMessage() for r in caplog.records]
    assert '%s was killed by SIGTERM (status 143); resigning' % (
        sys.executable) in messages


@pytest.mark.parametrize('returncode, text', [
    (0, 'exited with status 0'),
    (7, 'exited with status 7'),
    (-9, 'was killed by SIGKILL (status 137)'),
    (-15, 'was killed by SIGTERM (status 143)'),
    (-200, 'was killed by signal 200 (status 328)'),
])
def test_how_a_command_ended(returncode, text):
    assert cli_supervisor.how_it_ended(returncode) == text


def test_a_waiting_elect_says_who_leads(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger='etcdwatch.cli')
    client = FakeEtcdClient()
    key = '/elections/master_job'
    client.write(key, 'someone-else', ttl=60)
    sup, path = supervisor(client, tmp_path, 'term')

    def said(text):
        return lambda: any(r.getMessage() == text
                           for r in list(caplog.records))

    def drive():
        wait_until(said('waiting: someone-else leads job'), timeout=30)
        # Another takes the key over: that is told too.
        client.write(key, 'next-one', ttl=60)
        wait_until(said('waiting: next-one leads job'), timeout=30)
        os.kill(os.getpid(), signal.SIGTERM)
    driver = in_thread(drive)
    assert sup.run() == 0
    driver.join(30)
    assert notes(path) == []
    told = [r.getMessage() for r in caplog.records
            if r.getMessage().startswith('waiting: ')]
    # Each leader once, though the key is read every recovery_time.
    assert told == ['waiting: someone-else leads job',
                    'waiting: next-one leads job']


# -- errors: TLS files, tracebacks, outages ----------------------------------

@pytest.mark.parametrize('option', ['--cacert', '--cert', '--key'])
def test_a_missing_tls_file_is_a_usage_error_naming_it(capsys, tmp_path,
                                                       listener, option):
    present = tls_files(tmp_path, 'present.pem')[0]
    missing = str(tmp_path / 'missing.pem')
    files = {'--cacert': present, '--cert': present, option: missing}
    argv = ['leader', 'x', '--etcd', listener]
    for name, path in sorted(files.items()):
        argv += [name, path]
    for api in ('v2', 'v3'):
        status, out, err = run_main(capsys, *argv + ['--api', api])
        assert (status, out) == (2, '')
        assert err == ('etcdwatch leader: %s %s: no such file or '
                       'directory\n' % (option, missing))


def test_a_tls_file_that_is_a_directory_is_a_usage_error(capsys, tmp_path,
                                                         listener):
    status, out, err = run_main(capsys, 'watch', '/p', '--etcd', listener,
                                '--cacert', str(tmp_path))
    assert (status, out) == (2, '')
    assert err == 'etcdwatch watch: --cacert %s: is a directory\n' % tmp_path


def test_an_ssl_error_is_given_in_full(capsys, monkeypatch):
    class Refused(object):
        name = 'v2'

        def read_key(self, key):
            raise _python_etcd_ssl_failure()
    monkeypatch.setattr(backends, 'for_client', lambda client: Refused())
    status, out, err = run_main(capsys, 'leader', 'x', '--etcd', 'h:1')
    assert (status, out) == (3, '')
    assert err == ('etcdwatch leader: cannot reach etcd at http://h:1: %s\n'
                   % SSL_TEXT)


def test_vv_prints_the_traceback_of_an_error(capsys):
    address = '127.0.0.1:%d' % closed_port()
    line = ('etcdwatch leader: cannot reach etcd at http://%s: connection '
            'refused' % address)
    status, _, err = run_main(capsys, 'leader', 'x', '--etcd', address)
    assert (status, err) == (3, line + '\n')
    status, _, err = run_main(capsys, 'leader', 'x', '--etcd', address,
                              '-vv')
    assert status == 3
    assert line in err.splitlines()
    tail = err[err.index(line):]
    assert 'Traceback (most recent call last):' in tail
    assert 'ConnectionRefusedError' in tail


def _unreachable():
    try:
        raise ConnectionRefusedError(111, 'Connection refused')
    except ConnectionRefusedError as e:
        refused = e
    text = ("HTTPConnectionPool(host='127.0.0.1', port=1): Max retries "
            "exceeded with url: /v2/keys/p (Caused by NewConnectionError("
            "'<urllib3.connection.HTTPConnection object at 0x7f00>: Failed "
            "to establish a new connection: [Errno 111] Connection "
            "refused'))")
    try:
        raise exceptions.EtcdUnavailable('read /p: ' + text) from refused
    except exceptions.EtcdUnavailable as e:
        return e


def _outage_lines(verbose, quiet):
    """What the command prints of an outage the watcher logs."""
    stream = io.StringIO()
    restore = cli.setup_logging('etcdwatch watch', verbose, quiet, stream)
    try:
        log = outage.OutageLog(watcher.LOG, 'w: watching /p')
        for _ in range(2):
            try:
                raise _unreachable()
            except exceptions.EtcdUnavailable as e:
                log.failed(e, 2.0)
        log.succeeded()
        watcher.LOG.info('w: some other news')
    finally:
        restore()
    return stream.getvalue().splitlines()


def test_an_outage_is_one_readable_line_and_its_end_is_shown():
    start = ('etcdwatch watch: w: watching /p: etcd unavailable (connection '
             'refused); retrying every 2.0s')
    lines = _outage_lines(0, False)
    assert len(lines) == 2
    assert lines[0] == start
    assert lines[1].startswith('etcdwatch watch: w: watching /p: etcd '
                               'available again after ')
    assert lines[1].endswith('s (2 failed attempts)')
    # -q: errors and the library's warnings only.
    assert _outage_lines(0, True) == [start]
    # -v: the library's other news too.
    assert _outage_lines(1, False) == lines + [
        'etcdwatch watch: w: some other news']


def test_vv_logs_each_failure_with_its_traceback():
    lines = _outage_lines(2, False)
    assert sum('failed (attempt' in line for line in lines) == 2
    assert 'Traceback (most recent call last):' in lines


# -- version and exports -----------------------------------------------------

def test_version(capsys):
    version = importlib.metadata.version('etcdwatch')
    assert etcdwatch.__version__ == version
    status, out, err = run_main(capsys, '--version')
    assert (status, out, err) == (0, 'etcdwatch %s\n' % version, '')
    # Whatever else is on the line.
    status, out, _ = run_main(capsys, '--api', 'v3', '--version', 'watch')
    assert (status, out) == (0, 'etcdwatch %s\n' % version)


@pytest.mark.parametrize('module', ['etcdwatch', 'etcdwatch.cli'])
def test_python_m_version(module):
    proc = subprocess.run([sys.executable, '-m', module, '--version'],
                          cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        0, 'etcdwatch %s\n' % importlib.metadata.version('etcdwatch'), '')


def test_version_outside_an_installed_tree(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(importlib.metadata, 'version', not_installed)
    assert etcdwatch._version() == '0+unknown'


def test_cleanup_electors_is_exported():
    assert etcdwatch.cleanup_electors is election.cleanup_electors
    namespace = {}
    exec('from etcdwatch import *', namespace)
    assert namespace['cleanup_electors'] is election.cleanup_electors
