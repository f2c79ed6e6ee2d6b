"""A v3 watch stream read from a real socket: plain, TLS, green.

``backends.v3._Stream`` waits for each message on the socket's own
timeout.  These tests serve one
message late over a socket pair of their own and check that a read waits
for it (never spins, never gives up early), that a read whose deadline
passes takes nothing and leaves the stream usable, and that abort() wakes
a blocked read.  Under eventlet's monkey patching sockets are green (a
TLS one stays non-blocking whatever its timeout), so those cases run in a
patched interpreter of their own.
"""

import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import types

import pytest

from etcdwatch.backends import v3
from etcdwatch.testing.server import make_tls_files

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
MESSAGE = b'{"result": {"header": {"revision": "5"}}}\n'
LATE = 0.5


class _NothingBuffered(object):
    def read1(self, size):
        return b''


def stream_over(sock):
    """A _Stream reading ``sock`` as if it were a watch response."""
    raw = types.SimpleNamespace(
        connection=types.SimpleNamespace(sock=sock),
        _fp=types.SimpleNamespace(fp=_NothingBuffered()), chunked=False)
    response = types.SimpleNamespace(raw=raw, headers={},
                                     close=sock.close)
    return v3._Stream(response, 1.0)


def check_stream(sock, send_late):
    """The checks, for any socket whose peer ``send_late()`` sends late."""
    stream = stream_over(sock)
    send_late()
    started = time.monotonic()
    assert stream.next_message(time.monotonic() + 0.1) is None
    # It waited out its deadline, no more (generous: a busy machine).
    assert 0.09 <= time.monotonic() - started < 0.1 + 5
    message = stream.next_message(time.monotonic() + 30)
    waited = time.monotonic() - started
    assert message == {'result': {'header': {'revision': '5'}}}
    assert LATE * 0.9 <= waited < 30
    # A deadline already passed takes only what has arrived.
    assert stream.next_message(time.monotonic() - 1) is None
    return stream


@pytest.fixture
def tls(tmp_path):
    files = make_tls_files(tmp_path)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(files.server_cert, files.server_key)
    client = ssl.create_default_context(cafile=files.ca_cert)
    return server, client


def _pair(tls=None):
    """(client socket, server socket), TLS if ``tls`` is given."""
    listener = socket.create_server(('127.0.0.1', 0))
    box = {}

    def accept():
        conn, _ = listener.accept()
        box['server'] = tls[0].wrap_socket(
            conn, server_side=True) if tls else conn
    thread = threading.Thread(target=accept)
    thread.start()
    client = socket.create_connection(listener.getsockname())
    if tls:
        client = tls[1].wrap_socket(client, server_hostname='127.0.0.1')
    thread.join(30)
    listener.close()
    return client, box['server']


@pytest.mark.parametrize('secure', [False, True], ids=['plain', 'tls'])
def test_a_read_waits_for_a_late_message(secure, tls):
    client, server = _pair(tls if secure else None)

    def send_late():
        threading.Timer(LATE, server.sendall, (MESSAGE,)).start()
    try:
        check_stream(client, send_late)
    finally:
        client.close()
        server.close()


def test_signals_do_not_stretch_a_read_past_its_deadline():
    # A read that the kernel ends (SO_RCVTIMEO) is retried by Python with
    # its whole timeout after each signal: with a signal every 0.2 s, a
    # 1 s deadline would pass unnoticed until the signals stop (3 s).
    client, server = _pair()
    stream = stream_over(client)
    signals = []
    previous = signal.signal(signal.SIGALRM, lambda *a: signals.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2, 0.2)
        stopper = threading.Timer(3, signal.setitimer,
                                  (signal.ITIMER_REAL, 0))
        stopper.start()
        started = time.monotonic()
        assert stream.next_message(started + 1) is None
        waited = time.monotonic() - started
        stopper.join()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        client.close()
        server.close()
    assert len(signals) >= 3
    assert 0.9 <= waited < 2.5


def test_a_deadline_under_a_microsecond_away_still_ends_the_read():
    client, server = _pair()
    stream = stream_over(client)
    box = {}

    def read():
        box['message'] = stream.next_message(time.monotonic() + 1e-7)
    thread = threading.Thread(target=read, daemon=True)
    try:
        thread.start()
        thread.join(10)
        assert not thread.is_alive(), 'the read did not end'
        assert box['message'] is None
    finally:
        client.close()
        server.close()


@pytest.mark.parametrize('secure', [False, True], ids=['plain', 'tls'])
def test_abort_wakes_a_blocked_read(secure, tls):
    client, server = _pair(tls if secure else None)
    stream = stream_over(client)
    box = {}

    def read():
        try:
            box['message'] = stream.next_message(time.monotonic() + 30)
        except Exception as e:    # noqa: the stream ended: what abort does
            box['error'] = e
    thread = threading.Thread(target=read)
    started = time.monotonic()
    thread.start()
    time.sleep(0.2)
    stream.abort()
    thread.join(30)
    assert not thread.is_alive()
    assert time.monotonic() - started < 10
    assert stream.aborted
    # It ended the stream (StreamEnded), or returned nothing.
    assert box.get('message') is None
    client.close()
    server.close()


GREEN = '''
import eventlet
eventlet.monkey_patch()
import socket, ssl, sys, time
sys.path.insert(0, sys.argv[1])
from tests.unit import test_v3_stream_sockets as t
from etcdwatch.testing.server import make_tls_files
secure = sys.argv[3] == 'tls'
files = make_tls_files(sys.argv[2])
server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
server_ctx.load_cert_chain(files.server_cert, files.server_key)
client_ctx = ssl.create_default_context(cafile=files.ca_cert)
listener = socket.create_server(('127.0.0.1', 0))
accepted = eventlet.spawn(lambda: server_ctx.wrap_socket(
    listener.accept()[0], server_side=True) if secure else
    listener.accept()[0])
client = socket.create_connection(listener.getsockname())
if secure:
    client = client_ctx.wrap_socket(client, server_hostname='127.0.0.1')
server = accepted.wait()

def send_late():
    def later():
        eventlet.sleep(t.LATE)
        server.sendall(t.MESSAGE)
    eventlet.spawn(later)
t.check_stream(client, send_late)
print('ok')
'''


@pytest.mark.parametrize('secure', [False, True], ids=['plain', 'tls'])
def test_a_green_read_waits_for_a_late_message(secure, tmp_path):
    # eventlet's GreenSSLSocket ignores settimeout() once made
    # non-blocking: without a wait for readability every read would
    # return at once and a watcher would spin.  A green plain socket
    # honours its timeout.
    env = dict(os.environ, PYTHONWARNINGS='ignore')
    proc = subprocess.run(
        [sys.executable, '-c', GREEN, ROOT, str(tmp_path),
         'tls' if secure else 'plain'], cwd=ROOT,
        env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith('ok')
