"""Ctrl-C in a foreground watch_forever() on a real etcd: a quiet end."""

import signal
import subprocess
import sys

from tests.functional.procs import ROOT

SCRIPT = '''
import signal
import sys
from etcdwatch import EtcdChangeWatcher
from tests import drivers


class Quiet(EtcdChangeWatcher):
    told = False

    def do_tick(self):
        # Inside watch_forever, just before each watch.
        if not self.told:
            self.told = True
            print('watching', flush=True)


# A foreground process as a terminal starts it: Ctrl-C raises
# KeyboardInterrupt even if this suite runs where SIGINT is ignored (a
# background job of a shell without job control), which children inherit.
signal.signal(signal.SIGINT, signal.default_int_handler)
api, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = (drivers.V3Driver if api == 'v3' else drivers.V2Driver).client_at(
    host, port)
w = Quiet(client, 'fg', '/fg', heartbeat=60)
w.watch_forever()
print('returned', flush=True)
'''


def test_ctrl_c_ends_a_foreground_watch_quietly(backend_client):
    d = backend_client
    proc = subprocess.Popen(
        [sys.executable, '-c', SCRIPT, d.name, d.server.host,
         str(d.server.port)], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == 'watching\n'
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out == 'returned\n'
    assert 'Traceback' not in err, err
